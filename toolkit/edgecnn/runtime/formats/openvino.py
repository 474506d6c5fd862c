"""OpenVINO IR (.xml with its .bin): the model card in the IR's `rt_info` "edgecnn", ops with the precision the
CPU plugin really executes them in (from the compiled model), the layer table, and the engine.

The plugin is always asked for f32 inference: by default it runs float layers in bf16 on CPUs that have it,
which would make a "float" file answer differently from one machine to the next.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.runtime.backends import TensorSpec, check_input_size
from edgecnn.runtime.modelfile import CARD_KEY, ModelFile, OpInfo

CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
# The plugin's precision names → numpy's.
PRECISIONS = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "u8": "uint8", "i8": "int8", "i32": "int32",
              "i64": "int64", "u1": "bool", "boolean": "bool"}

# Layers of the compiled model that compute nothing: constants, graph ends, layout and precision changes, and the
# quantize the plugin fuses into the first layer.
NOT_COMPUTE = {"Input", "Output", "Const", "Reorder", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concatenation",
               "Split", "Gather", "StridedSlice", "Convert", "Pad", "ShapeOf", "Broadcast", "Quantize", "FakeQuantize"}


def model_files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")]


@functools.cache
def core():
    import openvino as ov

    return ov.Core()


def _read(path: Path):
    """The model of an IR (or of an .onnx file: OpenVINO reads those too)."""
    weights = path.with_suffix(".bin")
    if path.suffix.lower() == ".xml" and not weights.is_file():
        raise EdgeCNNError(f"{path}: its weights file {weights.name} is missing (an OpenVINO IR is the .xml and "
                           "the .bin beside it)")
    try:
        return core().read_model(str(path))
    except RuntimeError as e:
        raise EdgeCNNError(f"{path}: OpenVINO cannot read it: {first_line(e)}") from None


def _compile(model, threads: int | None, path: Path):
    config = {**CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    try:
        return core().compile_model(model, "CPU", config)
    except RuntimeError as e:
        raise EdgeCNNError(f"{path}: OpenVINO cannot compile it for the CPU: {first_line(e)}") from None


def _shape(partial) -> list:
    return [d.get_length() if d.is_static else -1 for d in partial]


def _io(ports) -> list[dict]:
    return [{"name": p.get_any_name(), "shape": _shape(p.get_partial_shape()),
             "dtype": np.dtype(p.get_element_type().to_dtype()).name} for p in ports]


def _runtime_ops(compiled) -> list[OpInfo]:
    ops = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = {k: v.astype(str) for k, v in op.get_rt_info().items()}
        kind, precision = info.get("layerType", "?"), info.get("runtimePrecision", "?")
        outputs = [p for p in info.get("outputPrecisions", "").split(",") if p]
        # The plugin fuses the first FakeQuantize into a float subgraph that writes u8/i8: a quantize, not math.
        if PRECISIONS.get(precision, "").startswith("float") and outputs and all(p in ("u8", "i8") for p in outputs):
            kind = "Quantize"
        where = info.get("originalLayersNames", "").split(",")[0]
        ops.append(OpInfo(kind, PRECISIONS.get(precision, precision), where, compute=kind not in NOT_COMPUTE))
    return ops


def read(path: Path) -> ModelFile:
    model = _read(path)
    card = json.loads(model.get_rt_info([CARD_KEY]).astype(str)) if model.has_rt_info([CARD_KEY]) else None
    compiled = _compile(model, 1, path)
    return ModelFile(path, "openvino", _runtime_ops(compiled), _io(model.inputs), _io(model.outputs), card)


def embed_card(path: Path, card: dict) -> None:
    import openvino as ov

    model = _read(path)
    model.set_rt_info(json.dumps(card), [CARD_KEY])
    # save_model cannot overwrite the weights it reads from: write beside, then rename both.
    staged = path.with_name(f"{path.stem}.card.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)
    del model
    for new, old in zip(model_files(staged), model_files(path), strict=True):
        new.replace(old)


def _constant_ops(model) -> set[int]:
    """Ids of the ops that compute from constants only (weights and their dequantization)."""
    constant: set[int] = set()
    for op in model.get_ordered_ops():
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if op.get_type_name() == "Constant" or (sources and all(id(s) in constant for s in sources)):
            constant.add(id(op))
    return constant


def layers(path: Path) -> list:
    """The layer table (`edgecnn.runtime.layers.LayerRow`s) of a file `read_model_file` accepted."""
    from edgecnn.runtime.layers import LayerRow, conv_macs, per_image  # not needed on a device: no rich there

    model = _read(path)
    precision = {}
    for op in _compile(model, 1, path).get_runtime_model().get_ordered_ops():
        info = {k: v.astype(str) for k, v in op.get_rt_info().items()}
        for name in info.get("originalLayersNames", "").split(","):
            precision.setdefault(name, PRECISIONS.get(info.get("runtimePrecision", ""), ""))
    ops = model.get_ordered_ops()
    constant = _constant_ops(model)
    rows = []
    for op in ops:
        kind = op.get_type_name()
        if id(op) in constant or kind in ("Parameter", "Result", "FakeQuantize", "Convert"):
            continue
        inputs = [(i.get_source_output().get_node(), _shape(i.get_partial_shape())) for i in op.inputs()]
        activation = next((shape for node, shape in inputs if id(node) not in constant), [])
        row = LayerRow(op.get_friendly_name().removesuffix("/WithoutBiases"), kind, activation,
                       _shape(op.get_output_partial_shape(0)), dtype=precision.get(op.get_friendly_name(), ""))
        row.params = sum(int(np.prod(shape)) for node, shape in inputs if id(node) in constant and shape)
        attrs = op.get_attributes()
        if kind in ("Convolution", "GroupConvolution") and len(inputs) > 1:
            weight = inputs[1][1]  # O, I, kh, kw; grouped: G, O/G, I/G, kh, kw
            row.groups = weight[0] if kind == "GroupConvolution" else 1
            row.kernel = weight[-2:]
            row.stride, row.padding = list(attrs.get("strides", [])), [*attrs.get("pads_begin", []),
                                                                         *attrs.get("pads_end", [])]
            in_channels = activation[1] if len(activation) > 1 else 0
            row.macs = conv_macs(row.output, in_channels, row.groups, row.kernel)
        elif kind == "MatMul" and len(inputs) > 1 and id(inputs[1][0]) in constant and len(inputs[1][1]) == 2:
            row.macs = per_image(row.output[:-1]) * int(np.prod(inputs[1][1]))
        rows.append(row)
    return rows


class Engine:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None, input_shape: tuple[int, ...] | None = None):
        self.path = path
        model = _read(path)
        port = model.inputs[0]
        self.input = TensorSpec(port.get_any_name(), tuple(_shape(port.get_partial_shape())),
                                np.dtype(port.get_element_type().to_dtype()))
        check_input_size(path, self.input, input_shape)  # before the plugin allocates it
        if input_shape is not None and tuple(input_shape) != self.input.shape:
            model.reshape({port.get_any_name(): list(input_shape)})
            self.input = TensorSpec(self.input.name, tuple(input_shape), self.input.dtype)
        self._compiled = _compile(model, threads, path)
        self._request = self._compiled.create_infer_request()
        self.outputs = [TensorSpec(out.get_any_name() if out.get_names() else f"output{i}",
                                   tuple(_shape(out.get_partial_shape())), np.dtype(out.get_element_type().to_dtype()))
                        for i, out in enumerate(self._compiled.outputs)]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            self._request.infer({0: x})
        except (RuntimeError, ValueError) as e:
            raise EdgeCNNError(f"{self.path}: OpenVINO cannot run it: {first_line(e)}") from None
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
