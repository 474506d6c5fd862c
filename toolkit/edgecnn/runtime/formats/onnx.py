"""ONNX files (.onnx): the model card in `metadata_props` "edgecnn", ops with the precision onnxruntime computes
them in, the layer table, and the engine (onnxruntime's CPU provider)."""

from __future__ import annotations

import ast
import contextlib
import json
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line, shorten
from edgecnn.runtime.backends import TensorSpec, check_input_size
from edgecnn.runtime.modelfile import CARD_KEY, ModelFile, OpInfo

# ONNX ops onnxruntime computes in int8 when they sit between DequantizeLinear and QuantizeLinear (its
# QLinearOpsRegistry). Any other op there — LayerNormalization, HardSigmoid, Erf (GELU), Div — runs in float.
ONNX_INT8_KERNELS = {
    "Add", "ArgMax", "AveragePool", "Clip", "Concat", "Conv", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul",
    "MaxPool", "Mul", "Relu", "Resize", "Sigmoid", "Softmax", "Where",
}

# Ops that only move, re-label or (de)quantize data: their dtype says nothing about where arithmetic happens.
NOT_COMPUTE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Shape", "Gather", "Concat",
               "Slice", "Pad", "Cast", "Constant", "Split", "Expand", "DepthToSpace", "SpaceToDepth", "QuantizeLinear",
               "DequantizeLinear"}


def model_files(path: Path) -> list[Path]:
    return [path]


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def read(path: Path) -> ModelFile:
    import onnx
    from onnx import shape_inference

    model = onnx.load_model_from_string(path.read_bytes())
    if not model.graph.node:
        raise EdgeCNNError(f"{path}: ONNX file has no graph nodes (not an ONNX model?)")
    with contextlib.suppress(Exception):  # an op without a shape function: some edge dtypes stay unknown
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = {t.name for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}

    def activation_dtype(node) -> str:
        # In a QDQ graph every quantized op reads DequantizeLinear outputs: that is int8 arithmetic once
        # onnxruntime fuses the pattern. A float activation not fed by DequantizeLinear is float arithmetic.
        for name in node.input:
            if not name or name in constants:
                continue
            source = produced_by.get(name)
            if source is not None and source.op_type == "Constant":
                continue
            if source is not None and source.op_type == "DequantizeLinear":
                if node.op_type not in ONNX_INT8_KERNELS:
                    return "float32"  # dequantized, computed in float, quantized again
                zp = source.input[2] if len(source.input) > 2 else ""
                return _ONNX_DTYPES.get(types.get(zp, 3), "int8")
            return _ONNX_DTYPES.get(types.get(name, 0), "unknown")
        return "unknown"

    ops = [OpInfo(n.op_type, activation_dtype(n), onnx_layer_path(n), compute=n.op_type not in NOT_COMPUTE)
           for n in graph.node]

    def io(values) -> list[dict]:
        inits = {t.name for t in graph.initializer}
        return [
            {"name": v.name, "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "unknown"),
             "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1)
                       for d in v.type.tensor_type.shape.dim]}
            for v in values if v.name not in inits
        ]

    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY]) if CARD_KEY in props else None
    return ModelFile(path, "onnx", ops, io(graph.input), io(graph.output), card)


NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # node metadata torch's ONNX exporter writes


def onnx_layer_path(node) -> str:
    """The PyTorch module a node came from (torch's exporter records name scopes), else the node's name."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2 and scopes[-2]:
                return scopes[-2]
    return node.name or (node.output[0] if node.output else "")


def embed_card(path: Path, card: dict) -> None:
    import onnx

    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CARD_KEY, value=json.dumps(card))
    onnx.save(model, path)



def layers(path: Path) -> list:
    """The layer table (`edgecnn.runtime.layers.LayerRow`s) of a file `read_model_file` accepted."""
    import onnx
    from onnx import numpy_helper, shape_inference

    from edgecnn.runtime.layers import LayerRow, conv_macs, per_image  # not needed on a device: no rich there

    info = read(path)
    try:  # weights in external data files are read here: one may be missing or unreadable
        model = onnx.load(path)
    except Exception as e:
        raise EdgeCNNError(f"{path}: cannot read its weights: {first_line(e)}") from None
    with contextlib.suppress(Exception):
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes.update({name: list(a.shape) for name, a in initializers.items()})
    produced_by = {out: node for node in graph.node for out in node.output}

    def constant(name: str):
        """The initializer behind `name`, following DequantizeLinear (QDQ weights)."""
        if name in initializers:
            return initializers[name]
        node = produced_by.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            return initializers[node.input[0]]
        return None

    rows = []
    for node, op in zip(graph.node, info.ops, strict=True):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        activation = next((i for i in node.input if i and constant(i) is None), "")
        row = LayerRow(onnx_layer_path(node), node.op_type, shapes.get(activation, []),
                       shapes.get(node.output[0], []) if node.output else [], dtype=op.dtype)
        consts = [c for c in (constant(i) for i in node.input if i) if c is not None]
        row.params = sum(int(c.size) for c in consts if c.ndim > 0)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = constant(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is not None and row.output:
            row.kernel, row.groups = list(weight.shape[2:]), int(attrs.get("group", 1))
            row.stride, row.padding = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
            row.macs = conv_macs(row.output, weight.shape[1] * row.groups, row.groups, row.kernel)
        elif node.op_type in ("Gemm", "MatMul") and row.output and consts:
            w = consts[0]
            if w.ndim == 2:
                row.macs = per_image(row.output[:-1]) * w.shape[0] * w.shape[1]
        rows.append(row)
    return rows



class Engine:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None, input_shape: tuple[int, ...] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgeCNNError(f"{path}: onnxruntime cannot load it: {shorten(str(e), 200)}") from None
        self.input = self._spec(self._session.get_inputs()[0], input_shape)
        self.outputs = [self._spec(arg) for arg in self._session.get_outputs()]
        check_input_size(path, self.input)

    @staticmethod
    def _spec(arg, shape: tuple[int, ...] | None = None) -> TensorSpec:
        dtypes = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                  "tensor(float16)": np.float16}
        if arg.type not in dtypes:
            raise EdgeCNNError(f"unsupported tensor type {arg.type} for '{arg.name}'")
        shape = shape or tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, tuple(shape), np.dtype(dtypes[arg.type]))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return self._session.run(None, {self.input.name: x})
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidArgument, ...): a damaged graph
            raise EdgeCNNError(f"{self.path}: onnxruntime cannot run it: {first_line(e)}") from None


