"""PyTorch → .onnx through the dynamo exporter (one file), int8 through onnxruntime static QDQ quantization
with edgecnn's activation ranges (the estimator that also sets the .tflite's).

The quantization scheme follows the target: x86 without VNNI wants uint8 activations with `reduce_range`
(7-bit weights avoid the u8×s8 overflow of AVX2 kernels); Arm wants int8 activations and weights (S8S8).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.export.uint8_weights import store_weights_as_uint8
from edgecnn.native import quiet_native_output
from edgecnn.quantize.adaround import INT8, INT8_REDUCED_RANGE, WeightGrid
from edgecnn.quantize.calibrate import SEARCH, Candidate
from edgecnn.quantize.ranges import Histogram, activation_ranges
from edgecnn.quantize.target import Scheme
from edgecnn.runtime.formats.onnx import NAME_SCOPES, onnx_layer_path

INPUT_NAME = "input"
OUTPUT_NAMES = {"classify": ["logits"], "detect": ["boxes", "scores"]}  # by task: what the model returns


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


def _calibrated_tensors(model) -> list[str]:
    """The float activations onnxruntime's QDQ quantizer asks ranges for: inputs and outputs of the nodes it
    quantizes (what its own calibrators collect)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    types = set(QDQRegistry) | set(QLinearOpsRegistry)
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    value_infos = {v.name: v for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    initializers = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type not in types:
            continue
        for name in (*node.input, *node.output):
            info = value_infos.get(name)
            if (info is not None and name not in initializers and name not in names
                    and info.type.tensor_type.elem_type in float_types):
                names.append(name)
    return names


def _with_outputs(model, names: Sequence[str]):
    """A copy of `model` that also returns the named intermediate tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    value_infos = {v.name: v for v in copy.graph.value_info}
    copy.graph.output.extend(value_infos.get(n) or onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                             for n in names if n not in present)
    return copy


def _session(model, optimized: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:  # the QDQ graph as written: dequantized inputs, float compute, requantized outputs
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _tensor_values(session, samples: np.ndarray):
    """Per sample, every output of the session by name."""
    names = [o.name for o in session.get_outputs()]
    for sample in samples:
        inputs = {INPUT_NAME: sample[None]}
        yield {**inputs, **dict(zip(names, session.run(None, inputs), strict=True))}


def tensor_histograms(model, calibration: torch.Tensor) -> dict[str, Histogram]:
    """Histograms of the tensors onnxruntime will quantize, over the calibration images: what edgecnn's range
    estimators (the ones that also set the .tflite's ranges) choose from."""
    names = _calibrated_tensors(model)
    session = _session(_with_outputs(model, names))
    samples = calibration.numpy().astype(np.float32)
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    for values in _tensor_values(session, samples):
        for name in names:
            low[name] = min(low[name], float(values[name].min()))
            high[name] = max(high[name], float(values[name].max()))
    histograms = {name: Histogram.empty(low[name], high[name]) for name in names}
    for values in _tensor_values(session, samples):
        for name in names:
            histograms[name].add(values[name])
    return histograms


def _activation_output(model, tensor: str, passes: tuple[str, ...]) -> str:
    """Follow a layer's output through single consumers of the given op types (its activation, its output
    quantizer): the tensor the next layer sees."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in passes:
        tensor = consumers[tensor][0].output[0]
    return tensor


def layer_errors(float_model, int8_path: Path, samples: torch.Tensor, paths: dict[str, str]) -> list[dict]:
    """SQNR (dB) of every quantized Conv/Gemm output of the int8 QDQ graph against the float graph, after the
    layer's activation (as the next layer sees it), worst first, named by PyTorch module path (`paths`: node →
    path); "node" is the ONNX node, what the fallback keeps in float."""
    from edgecnn.quantize.pt2e import sqnr_db

    int8 = onnx.load(int8_path)
    producers = {o: n for n in int8.graph.node for o in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node}
    layers = {}
    for node in int8.graph.node:
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.name in float_nodes \
                and getattr(weight, "op_type", "") == "DequantizeLinear":
            layers[node.name] = (
                _activation_output(float_model, float_nodes[node.name].output[0], ("Relu", "Clip")),
                _activation_output(int8, node.output[0], ("Relu", "Clip", "QuantizeLinear", "DequantizeLinear")),
            )
    reference = _session(_with_outputs(float_model, [f for f, _ in layers.values()]))
    quantized = _session(_with_outputs(int8, [q for _, q in layers.values()]), optimized=False)
    signal, noise = dict.fromkeys(layers, 0.0), dict.fromkeys(layers, 0.0)
    x = samples.numpy().astype(np.float32)
    for ref, act in zip(_tensor_values(reference, x), _tensor_values(quantized, x), strict=True):
        for node, (expected, actual) in layers.items():
            r = ref[expected].astype(np.float64)
            signal[node] += float((r**2).sum())
            noise[node] += float(((r - act[actual]) ** 2).sum())
    rows = [{"layer": paths.get(n, n), "sqnr_db": round(sqnr_db(signal[n], noise[n]), 2), "node": n} for n in layers]
    return sorted(rows, key=lambda r: r["sqnr_db"])


def export_float_onnx(model: nn.Module, img_size: int, path: Path, task: str = "classify") -> None:
    example = (torch.zeros(1, 3, img_size, img_size),)
    try:
        with quiet_native_output():
            program = torch.onnx.export(
                model.eval(), example, dynamo=True, external_data=False, input_names=[INPUT_NAME],
                output_names=OUTPUT_NAMES[task], verbose=False,
            )
    except Exception as e:
        raise EdgeCNNError(f"torch.onnx.export could not export the model: {first_line(e)}") from None
    proto = program.model_proto
    _global_average_pools(proto)
    _hard_activations(proto)
    onnx.save(proto, path)


def prepare_for_quantization(float_path: Path, prepared: Path) -> None:
    """onnxruntime's pre-processing (shape inference, BatchNorm folded into the convolutions)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet_native_output():
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    except Exception as e:
        raise EdgeCNNError(f"onnxruntime could not prepare the model for quantization: {first_line(e)}") from None


def quantize_onnx(prepared: Path, path: Path, ranges: dict[str, tuple[float, float]], scheme: Scheme,
                  float_nodes: Sequence[str] = ()) -> None:
    """Write the int8 QDQ model of the prepared float model with the given activation ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        try:
            arrays = {name: (np.float32(low), np.float32(high)) for name, (low, high) in ranges.items()}
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, arrays), cache)
            with quiet_native_output():
                # The ranges come from the cache file: onnxruntime's own calibrators do not run.
                quantize_static(
                    str(prepared), str(path), None, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=scheme.reduce_range,
                    activation_type=QuantType.QUInt8 if scheme.onnx_activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=list(float_nodes), calibration_cache_path=str(cache),
                )
        except Exception as e:
            raise EdgeCNNError(f"onnxruntime could not quantize the model: {first_line(e)}") from None


def name_scopes(model) -> dict:
    """Node name → the PyTorch name-scope metadata torch's exporter gave it."""
    return {node.name: prop for node in model.graph.node for prop in node.metadata_props if prop.key == NAME_SCOPES}


def keep_name_scopes(scopes: dict, path: Path) -> None:
    """Give the nodes of the quantized model at `path` the `name_scopes` of their namesakes in the export
    (onnxruntime's pre-processing and quantizer drop node metadata): the ops a report names, float ones included,
    are then named by module path as in the .tflite."""
    model = onnx.load(path)
    for node in model.graph.node:
        if node.name in scopes and not any(prop.key == NAME_SCOPES for prop in node.metadata_props):
            node.metadata_props.append(scopes[node.name])
    onnx.save(model, path)


def _input_means(model, names: Sequence[str], calibration: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-channel mean of each named tensor (N×C×H×W or N×C) over the calibration images."""
    session = _session(_with_outputs(model, names))
    sums: dict[str, np.ndarray] = {}
    for values in _tensor_values(session, calibration.numpy().astype(np.float32)):
        for name in names:
            x = values[name].astype(np.float64)
            sums[name] = sums.get(name, 0) + x.mean(axis=tuple(d for d in range(x.ndim) if d != 1))
    return {name: total / len(calibration) for name, total in sums.items()}


def rounding_bias_shifts(prepared: Path, probe: Path, calibration: torch.Tensor) -> dict[str, np.ndarray]:
    """Conv/Gemm node → the mean output error its weights' int8 rounding causes (ΔW · E[x], bias correction as for
    the .tflite): ΔW from `probe`, a quantization of `prepared` (weight quantization depends on the weights alone,
    not on activation ranges), E[x] the input's per-channel mean on the calibration images."""
    from onnx import numpy_helper

    model, quantized = onnx.load(prepared), onnx.load(probe)
    weights = {i.name: i for i in model.graph.initializer}
    codes = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    layers = {}
    for node in quantized.graph.node:
        dequantize = producers.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in ("Conv", "Gemm") and getattr(dequantize, "op_type", "") == "DequantizeLinear":
            q, scale, zero = (codes[name].astype(np.float64) for name in dequantize.input[:3])
            axis = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)
            shape = [-1 if d == axis else 1 for d in range(q.ndim)]
            layers[node.name] = (q - zero.reshape(shape)) * scale.reshape(shape)
    nodes = [n for n in model.graph.node if n.name in layers and n.input[1] in weights]
    means = _input_means(model, [n.input[0] for n in nodes], calibration)
    shifts = {}
    for node in nodes:
        weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        error, mean = layers[node.name] - weight, means[node.input[0]]
        if node.op_type == "Gemm":
            transposed = next((a.i for a in node.attribute if a.name == "transB"), 0)
            shift = error @ mean if transposed else mean @ error
        else:
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            per_group = mean.reshape(groups, -1).repeat(len(weight) // groups, axis=0)
            shift = (error.reshape(*error.shape[:2], -1).sum(2) * per_group).sum(1)
        shifts[node.name] = shift
    return shifts


def corrected_model(prepared: Path, shifts: dict[str, np.ndarray], float_nodes: Sequence[str], path: Path) -> None:
    """Write to `path` the prepared float model with the bias of every node that will be quantized lowered by its
    rounding shift (a node kept in float keeps its bias); a layer without a bias gets one."""
    from onnx import numpy_helper

    model = onnx.load(prepared)
    weights = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        shift = shifts.get(node.name)
        if shift is None or node.name in float_nodes:
            continue
        if len(node.input) > 2 and node.input[2]:
            bias = weights[node.input[2]]
            bias.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(bias) - shift).astype(np.float32), bias.name))
        else:
            name = f"{node.name}_rounding_bias"
            model.graph.initializer.append(numpy_helper.from_array((-shift).astype(np.float32), name))
            if len(node.input) == 2:
                node.input.append(name)
            else:
                node.input[2] = name
    onnx.save(model, path)


class Builder:
    """The .onnx side of `edgecnn.export.export`: build with some nodes in float, and report layer errors."""

    runtime = "onnxruntime"  # whose int8 kernels the scheme is for

    @staticmethod
    def weight_grid(scheme: Scheme) -> WeightGrid:
        """The weight steps onnxruntime computes under `scheme`, which --adaround learns on."""
        return INT8_REDUCED_RANGE if scheme.reduce_range else INT8

    def __init__(self, source, calibration: torch.Tensor | None, scheme: Scheme, scratch: Path):
        self.source, self.calibration, self.scheme, self.scratch = source, calibration, scheme, scratch
        # After QAT no range search runs: percentile ranges, the best single method of onnxruntime's own
        # calibrators on real photos.
        self.candidate = Candidate("percentile")
        self.last_build: Path | None = None
        self._prepared: Path | None = None
        self._histograms: dict[str, Histogram] = {}
        self._outputs: set[str] = set()  # the graph's output tensors
        self._shifts: dict[str, np.ndarray] = {}  # node → bias correction for its weights' rounding
        self._nodes: dict[str, str] = {}
        self._scopes: dict = {}  # node name → its PyTorch name scopes, read once from the float export

    @property
    def _model(self) -> nn.Module:
        # After QAT, onnxruntime quantizes the QAT-tuned weights.
        return self.source.qat.tuned if self.source.qat else self.source.model

    @property
    def method(self) -> str:
        return self.candidate.name

    @property
    def _convolution_of(self) -> dict[str, str]:
        """BatchNorm module path → the convolution before it (in module order)."""
        mapping, last_conv = {}, None
        for name, module in self._model.named_modules():
            if isinstance(module, nn.Conv2d):
                last_conv = name
            elif isinstance(module, nn.BatchNorm2d) and last_conv is not None:
                mapping[name] = last_conv
        return mapping

    def build(self, path: Path, float_nodes: list[str]) -> str | None:
        """Write the artefact; return the int8 scheme (None for float)."""
        size = self.source.pre.img_size
        if self.calibration is None:
            export_float_onnx(self._model, size, path, self.source.task)
            return None
        if self._prepared is None:
            exported, self._prepared = self.scratch / "float.onnx", self.scratch / "prepared.onnx"
            export_float_onnx(self._model, size, exported, self.source.task)
            prepare_for_quantization(exported, self._prepared)
            self._scopes = name_scopes(onnx.load(exported))
            prepared = onnx.load(self._prepared)
            self._histograms = tensor_histograms(prepared, self.calibration)
            self._outputs = {output.name for output in prepared.graph.output}
            probe = self.scratch / "probe.onnx"
            quantize_onnx(self._prepared, probe, self._ranges("minmax"), self.scheme)
            self._shifts = rounding_bias_shifts(self._prepared, probe, self.calibration)
        # A corrected copy is quantized; the prepared model stays the float reference of the layer errors.
        corrected = self.scratch / "corrected.onnx"
        corrected_model(self._prepared, self._shifts, float_nodes, corrected)
        quantize_onnx(corrected, path, self._ranges(self.candidate.method), self.scheme, float_nodes)
        if self.scheme.onnx_weights == "uint8":
            store_weights_as_uint8(path)
        keep_name_scopes(self._scopes, path)
        self.last_build = path
        trained = self.source.qat.scheme_prefix if self.source.qat else ""
        weights = ("8-bit, stored as uint8 (zero point 128)," if self.scheme.onnx_weights == "uint8"
                   else "7-bit (reduce_range) int8" if self.scheme.reduce_range else "8-bit int8")
        return (f"{trained}{self.runtime} QDQ for {self.scheme.target}: {self.scheme.onnx_activations} activations, "
                f"per-channel {weights} weights, biases corrected for their rounding; activation ranges: "
                f"{self.method}")

    def _ranges(self, method: str) -> dict[str, tuple[float, float]]:
        if method == SEARCH:  # the choices made on the PT2E graph, found here by each tensor's values
            return self.source.searched.ranges_for(self._histograms, self._outputs)
        return activation_ranges(self._histograms, method, self._outputs)

    @property
    def layer_errors(self) -> list[dict]:
        """SQNR per quantized Conv/Gemm of the last int8 build, measured on its own QDQ graph."""
        if self.last_build is None:
            return []
        # Module paths from the exported graph (pre-processing may drop node metadata); the exporter folds each
        # BatchNorm into its convolution and names the result after the BatchNorm.
        paths = {n.name: self._convolution_of.get(path, path)
                 for n in onnx.load(self.scratch / "float.onnx").graph.node for path in [onnx_layer_path(n)]}
        rows = layer_errors(onnx.load(self._prepared), self.last_build, self.calibration, paths)
        self._nodes = {row["layer"]: row.pop("node") for row in rows}
        return rows

    def target(self) -> dict:
        return self.scheme.to_dict()

    def candidates(self) -> dict[str, str]:
        """Node name (what `build` takes) → the PyTorch module path shown to the user."""
        return {node: layer for layer, node in self._nodes.items()}

    def layer_id(self, layer: str) -> str:
        """What `build` takes to keep the layer of a `layer_errors` row in float: its ONNX node."""
        return self._nodes[layer]
