"""PyTorch → .onnx through the dynamo exporter (one file), int8 through onnxruntime static QDQ quantization.

The quantization scheme follows the target: x86 without VNNI wants uint8 activations with `reduce_range`
(7-bit weights avoid the u8×s8 overflow of AVX2 kernels); Arm wants int8 activations and weights (S8S8).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output

INPUT_NAME, OUTPUT_NAME = "input", "logits"
TARGETS = ("x86", "arm")


def scheme(target: str) -> str:
    if target == "x86":
        return "onnxruntime QDQ: uint8 activations, per-channel int8 weights, reduce_range (x86)"
    return "onnxruntime QDQ: int8 activations, per-channel int8 weights (arm)"


def _global_average_pools(model) -> None:
    """ReduceMean over H and W → GlobalAveragePool, which onnxruntime quantizes (ReduceMean it leaves in float)."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or len(node.input) < 2:
            continue
        axes = constants.get(node.input[1])
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if axes is None or sorted(int(a) % 4 for a in axes.ravel()) != [2, 3] or keepdims != 1:
            continue
        replacement = helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name)
        node.CopyFrom(replacement)


def _hard_activations(model) -> None:
    """HardSigmoid(x) → Clip(x·alpha + beta, 0, 1) and HardSwish(x) → x · Clip(x/6 + 1/2, 0, 1): onnxruntime has no
    int8 kernel for either and would run them in float between Dequantize/Quantize (MobileNetV3 has 19 of them);
    Mul, Add and Clip it runs in int8."""
    from onnx import helper, numpy_helper

    nodes = []
    for node in model.graph.node:
        if node.op_type not in ("HardSigmoid", "HardSwish"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        hard_sigmoid = node.op_type == "HardSigmoid"
        alpha, beta = (attrs.get("alpha", 0.2), attrs.get("beta", 0.5)) if hard_sigmoid else (1 / 6, 0.5)
        stem = node.name or node.output[0]
        name = {k: f"{stem}_{k}" for k in ("alpha", "beta", "zero", "one", "scaled", "shifted", "gate")}
        for key, value in (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name[key]))
        gate = list(node.output) if hard_sigmoid else [name["gate"]]
        replacement = [
            helper.make_node("Mul", [node.input[0], name["alpha"]], [name["scaled"]], name=name["scaled"]),
            helper.make_node("Add", [name["scaled"], name["beta"]], [name["shifted"]], name=name["shifted"]),
            helper.make_node("Clip", [name["shifted"], name["zero"], name["one"]], gate, name=f"{stem}_clip"),
        ]
        if not hard_sigmoid:
            replacement.append(helper.make_node("Mul", [node.input[0], name["gate"]], list(node.output), name=stem))
        for new in replacement:  # keep the PyTorch module path the exporter recorded (layer names in reports)
            new.metadata_props.extend(node.metadata_props)
        nodes += replacement
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def quantizable_nodes(path: Path) -> dict[str, str]:
    """Nodes onnxruntime would quantize, the candidates to keep in float: node name → PyTorch module path.

    Not only Conv/Gemm: residual Adds and pools carry quantization error too."""
    import onnx
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgecnn.runtime.modelfile import DATA_MOVEMENT, onnx_layer_path

    types = (set(QDQRegistry) | set(QLinearOpsRegistry)) - DATA_MOVEMENT
    nodes = onnx.load(path).graph.node
    return {n.name: f"{onnx_layer_path(n)} ({n.op_type})" for n in nodes if n.op_type in types}


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over normalised N×3×H×W samples."""

    def __init__(self, samples: torch.Tensor):
        self._samples = iter(samples.numpy().astype(np.float32))

    def get_next(self):
        sample = next(self._samples, None)
        return None if sample is None else {INPUT_NAME: sample[None]}


def export_float_onnx(model: nn.Module, img_size: int, path: Path) -> None:
    import onnx

    example = (torch.zeros(1, 3, img_size, img_size),)
    try:
        with quiet_native_output():
            program = torch.onnx.export(
                model.eval(), example, dynamo=True, external_data=False, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], verbose=False,
            )
    except Exception as e:
        raise EdgeCNNError(f"torch.onnx.export could not export the model: {first_line(e)}") from None
    proto = program.model_proto
    _global_average_pools(proto)
    _hard_activations(proto)
    onnx.save(proto, path)


def quantize_onnx(
    float_path: Path, path: Path, calibration: torch.Tensor, target: str, float_nodes: Sequence[str] = ()
) -> str:
    """Write the int8 QDQ model; return the calibration method used.

    Percentile ranges (99.999 %) keep real photos' top-1 far better than min/max, but onnxruntime's histogram
    cannot bin a tensor whose range is (almost) zero; then min/max is used for the whole model."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if target not in TARGETS:
        raise EdgeCNNError(f"unknown target '{target}': choose {' or '.join(TARGETS)}")
    x86 = target == "x86"
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"

        def quantize(method) -> None:
            with quiet_native_output():
                quantize_static(
                    str(prepared), str(path), _Calibration(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=x86,
                    activation_type=QuantType.QUInt8 if x86 else QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=list(float_nodes),
                    extra_options={"CalibPercentile": 99.999},
                )

        try:
            with quiet_native_output():
                quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            try:
                quantize(CalibrationMethod.Percentile)
                return "percentile 99.999"
            except ValueError as e:
                if "bins" not in str(e):
                    raise
                quantize(CalibrationMethod.MinMax)
                return "minmax (a tensor's range was too narrow to histogram)"
        except Exception as e:
            raise EdgeCNNError(f"onnxruntime could not quantize the model: {first_line(e)}") from None


class OnnxBuilder:
    """The .onnx side of `edgecnn.export.export`: build with some nodes in float, and rank nodes."""

    def __init__(self, source, calibration: torch.Tensor | None, target: str, scratch: Path):
        self.source, self.calibration, self.target, self.scratch = source, calibration, target, scratch
        self._float_onnx: Path | None = None

    @property
    def _model(self) -> nn.Module:
        # After QAT, onnxruntime quantizes the QAT-tuned weights.
        return self.source.qat.tuned if self.source.qat else self.source.model

    def build(self, path: Path, float_nodes: list[str]) -> str | None:
        """Write the artefact; return the int8 scheme (None for float)."""
        size = self.source.pre.img_size
        if self.calibration is None:
            export_float_onnx(self._model, size, path)
            return None
        if self._float_onnx is None:
            self._float_onnx = self.scratch / "float.onnx"
            export_float_onnx(self._model, size, self._float_onnx)
        method = quantize_onnx(self._float_onnx, path, self.calibration, self.target, float_nodes)
        trained = self.source.qat.scheme_prefix if self.source.qat else ""
        return f"{trained}{scheme(self.target)}, {method} calibration"

    def candidates(self) -> dict[str, str]:
        """Node name (what `build` takes) → the PyTorch module path shown to the user."""
        return quantizable_nodes(self._float_onnx)

    def logits_with_float(self, node: str, images) -> np.ndarray:
        from edgecnn.export.verify import artefact_logits

        path = self.scratch / "rank.onnx"
        self.build(path, [node])
        return artefact_logits(path, images)
