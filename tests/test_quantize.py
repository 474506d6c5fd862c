"""The int8 machinery below the export: range estimators, the target's scheme, the calibration doctor, and the
per-layer error report on a real PT2E graph."""

import math

import numpy as np
import pytest
import torch
from edgecnn.errors import EdgeCNNError
from edgecnn.quantize.doctor import examine
from edgecnn.quantize.ranges import METHODS, MIN_SPAN, Histogram, activation_range, activation_ranges, quantization_mse
from edgecnn.quantize.target import host_target, scheme_for


def histogram(values: np.ndarray) -> Histogram:
    h = Histogram.empty(values.min(), values.max())
    h.add(values)
    return h


@pytest.fixture(scope="module")
def heavy_tailed():
    return histogram(np.random.default_rng(0).laplace(size=200_000))


def test_minmax_is_the_observed_range(heavy_tailed):
    assert activation_range(heavy_tailed, "minmax") == pytest.approx((heavy_tailed.low, heavy_tailed.high))


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_clipping_methods_clip_a_heavy_tail(heavy_tailed, method):
    low, high = activation_range(heavy_tailed, method)
    assert heavy_tailed.low < low < 0 < high < heavy_tailed.high


def test_mse_range_has_the_least_expected_error(heavy_tailed):
    errors = {m: quantization_mse(heavy_tailed, *activation_range(heavy_tailed, m)) for m in METHODS}
    assert errors["mse"] == min(errors.values())
    assert errors["mse"] < 0.8 * errors["minmax"]


def test_non_negative_tensors_keep_zero_as_the_low_end():
    relu = histogram(np.maximum(np.random.default_rng(1).standard_normal(100_000), 0))
    for method in METHODS:
        low, high = activation_range(relu, method)
        assert low == 0.0 and 1.0 < high <= relu.high


@pytest.mark.parametrize("method", METHODS)
def test_a_constant_tensor_still_gets_a_usable_range(method):
    """A dead channel or a collapsed model gives a tensor of one value: a zero-width range would make a zero
    scale, which XNNPACK refuses to prepare."""
    for value in (0.0, 3.0, -2.0):
        low, high = activation_range(histogram(np.full(1000, value, np.float32)), method)
        assert high - low >= MIN_SPAN and low <= min(value, 0) and high >= max(value, 0)


@pytest.mark.parametrize("flags, machine, expected", [
    ("fpu sse2 avx avx2 fma", "x86_64", "x86-avx2"),
    ("fpu avx2 avx512f avx512_vnni", "x86_64", "x86-vnni"),
    ("fpu avx2 avx_vnni", "x86_64", "x86-vnni"),
    ("fp asimd asimddp", "aarch64", "arm"),
])
def test_the_host_target_follows_the_isa(flags, machine, expected):
    assert host_target(f"processor\t: 0\nflags\t\t: {flags}\n", machine) == expected


def test_schemes_by_name():
    assert scheme_for("x86").reduce_range is True and scheme_for("x86-vnni").reduce_range is False
    u8u8 = scheme_for("x86-avx2-u8u8")
    assert u8u8.reduce_range is False and u8u8.onnx_weights == "uint8" and scheme_for("x86").onnx_weights == "int8"
    assert scheme_for("pi5").onnx_activations == "int8"
    assert "this machine" in scheme_for("host").reason
    with pytest.raises(EdgeCNNError, match="unknown target 'x68'.*did you mean"):
        scheme_for("x68")


def test_the_doctor_refuses_shared_images_and_names_problems():
    rng = np.random.default_rng(0)
    verification = rng.integers(0, 255, (40, 8, 8, 3), np.uint8)
    with pytest.raises(EdgeCNNError, match="2 of the 10 calibration images are also verification images"):
        examine(np.concatenate([verification[:2], rng.integers(0, 255, (8, 8, 8, 3), np.uint8)]), verification)
    dark = rng.integers(0, 60, (10, 8, 8, 3), np.uint8)
    report = examine(np.concatenate([dark, dark[:2]]), verification)
    assert report["duplicates"] == 2 and report["samples"] == 12
    text = " ".join(report["warnings"])
    assert "only 10 distinct calibration images" in text and "darker than the verification" in text
    good = examine(rng.integers(0, 255, (64, 8, 8, 3), np.uint8), verification)
    assert good["warnings"] == []
    shared = examine(verification[:40], verification, refuse_overlap=False)
    assert shared["overlap_with_verification"] == 40


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])  # .tflite's graphs, and .pte's (no channels-last wrapper)
def test_layer_errors_name_every_quantized_layer_by_module_path(layout):
    from edgecnn.models.build import build_model
    from edgecnn.quantize import pt2e

    torch.manual_seed(0)
    model = build_model("tinycnn", 10).eval()
    calibration = torch.randn(16, 3, 32, 32)
    observed = pt2e.observe(model, calibration, layout)
    rows = pt2e.layer_errors(observed, observed.convert("minmax"), calibration)
    layers = {name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert {r["layer"] for r in rows} == layers
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert all(5 < r["sqnr_db"] < math.inf for r in rows)
    # Kept in float, a layer is not reported as quantized.
    first = next(iter(layers))
    kept = pt2e.observe(model, calibration, layout, [first])
    assert first not in {r["layer"] for r in pt2e.layer_errors(kept, kept.convert("minmax"), calibration)}



class EveryAnnotatedPattern(torch.nn.Module):
    """What litert-torch's annotators find by each op's source: chained residual sums (+ and +=), a ReLU module
    called twice, a product, a sum under functional ReLU (fused) and under torch.relu (not), a concatenation and
    functional pools."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))
        self.stem, self.relu = torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = x + self.convs[0](x)
        x = x + self.convs[1](x)
        y = self.convs[2](x)
        y += x
        y = self.relu(y) * torch.sigmoid(self.convs[3](x))
        y = torch.nn.functional.relu(y + x) + torch.relu(x)
        y = torch.nn.functional.max_pool2d(torch.cat([x, y], 1), 2)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_the_fast_export_is_quantized_as_strict_export_would_be():
    from edgecnn.quantize import pt2e
    from edgecnn.quantize.graph_capture import export_graph
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    pt2e.litert_torch()
    model, example = pt2e.channels_last(EveryAnnotatedPattern()), torch.randn(2, 16, 16, 3)
    strict = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},),
                                 strict=True).module()
    prepared = [prepare_pt2e(graph, pt2e.quantizer()) for graph in (strict, export_graph(model, example))]
    # The same observers in the same places: the same lines of code (strict export reads the weights in another
    # order).
    assert sorted(prepared[0].code.splitlines()) == sorted(prepared[1].code.splitlines())
    # Every sum reads observed (quantized) inputs, also the one that follows another sum.
    sums = [n for n in prepared[1].graph.nodes if n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)]
    assert len(sums) == 5
    assert all(arg.op == "call_module" for node in sums for arg in node.args)


def test_a_tensor_of_almost_one_value_is_histogrammed():
    """A range narrower than float32 can split into 2048 bins (a nearly dead channel) is one value, not an error."""
    values = np.full(1000, 0.3, np.float32) + np.float32(1e-8) * np.arange(1000, dtype=np.float32) / 1000
    h = histogram(values)
    assert h.counts.sum() == 1000
    low, high = activation_range(h, "mse")
    assert low == 0.0 and high >= 0.3


def _dc_heavy_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """Few weights per output channel reading inputs far from zero: int8 rounding of the weights shifts every
    output's mean by ΔW · E[x], what bias correction removes (one layer without a bias, one depthwise)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 4))
    return model.eval(), torch.rand(32, 3, 16, 16) * 0.5 + 2.0


def _mean_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs((outputs - reference).mean(0)).mean())


def test_bias_correction_removes_the_mean_error_of_weight_rounding():
    from edgecnn.quantize import pt2e

    model, calibration = _dc_heavy_model()
    observed = pt2e.observe(model, calibration, "NCHW")
    with torch.no_grad():
        reference = model(calibration).numpy()
        plain = observed.convert("minmax", correct_bias=False)(calibration).numpy()
        corrected = observed.convert("minmax")(calibration).numpy()
    assert _mean_error(corrected, reference) < 0.5 * _mean_error(plain, reference)
    assert np.abs(corrected - reference).mean() < np.abs(plain - reference).mean()


def test_onnx_bias_correction_removes_the_mean_error_of_weight_rounding(tmp_path):
    import onnxruntime as ort
    from edgecnn.export.onnx import Builder
    from edgecnn.export.sources import ExportSource
    from edgecnn.preprocess import Preprocess

    model, calibration = _dc_heavy_model()
    source = ExportSource(model, Preprocess(img_size=16), ["a", "b", "c", "d"], "custom")
    builder = Builder(source, calibration, scheme_for("x86-avx2"), tmp_path)
    builder.candidate.method = "minmax"
    scheme = builder.build(tmp_path / "int8.onnx", [])
    assert "biases corrected" in scheme

    def outputs(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": x[None].numpy()})[0] for x in calibration])

    with torch.no_grad():
        reference = model(calibration).numpy()
    plain = outputs(tmp_path / "probe.onnx")  # the same weights and minmax ranges, biases as trained
    corrected = outputs(tmp_path / "int8.onnx")
    assert _mean_error(corrected, reference) < 0.5 * _mean_error(plain, reference)


def _ort_session(path, optimized=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_the_u8u8_scheme_stores_the_same_weights_as_uint8(tmp_path):
    """x86-avx2-u8u8's .onnx holds x86-vnni's 8-bit weights shifted into uint8 (zero point 128): every weight
    dequantizes to the same value, onnxruntime still fuses every layer into an int8 kernel, and where the u8×s8
    kernels do not saturate (VNNI, Arm) both files compute the same; the emulated AVX2-only check is test_export's."""
    import onnx
    from edgecnn.export.onnx import Builder
    from edgecnn.export.sources import ExportSource
    from edgecnn.preprocess import Preprocess
    from onnx import numpy_helper

    model, calibration = _dc_heavy_model()
    source = ExportSource(model, Preprocess(img_size=16), ["a", "b", "c", "d"], "custom")
    files = {}
    for target in ("x86-vnni", "x86-avx2-u8u8"):
        builder = Builder(source, calibration, scheme_for(target), tmp_path / target)
        (tmp_path / target).mkdir()
        builder.candidate.method = "minmax"
        files[target] = tmp_path / f"{target}.onnx"
        assert ("stored as uint8" in builder.build(files[target], [])) is (target == "x86-avx2-u8u8")

    def weights(path):
        graph = onnx.load(path).graph
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        return {node.name: (constants[node.input[0]], constants[node.input[2]]) for node in graph.node
                if node.op_type == "DequantizeLinear" and node.input[0] in constants
                and constants[node.input[0]].ndim >= 2}

    signed, unsigned = weights(files["x86-vnni"]), weights(files["x86-avx2-u8u8"])
    assert signed.keys() == unsigned.keys() and len(signed) >= 3
    for name, (values, zero) in unsigned.items():
        assert values.dtype == zero.dtype == np.uint8 and (zero == 128).all(), name
        assert np.array_equal(values.astype(int) - zero.reshape(-1, *[1] * (values.ndim - 1)),
                              signed[name][0].astype(int) - signed[name][1].reshape(-1, *[1] * (values.ndim - 1)))

    def int8_kernels(target):
        optimized = tmp_path / f"{target}.optimized.onnx"
        _ort_session(files[target], optimized)
        return sorted(n.op_type for n in onnx.load(optimized).graph.node if n.op_type in ("QLinearConv", "QGemm"))

    assert int8_kernels("x86-avx2-u8u8") == int8_kernels("x86-vnni") and int8_kernels("x86-vnni")
    if host_target() != "x86-avx2":
        def outputs(target):
            session = _ort_session(files[target])
            return np.concatenate([session.run(None, {"input": x[None].numpy()})[0] for x in calibration])

        np.testing.assert_array_equal(outputs("x86-avx2-u8u8"), outputs("x86-vnni"))


def test_uint8_weights_handle_a_constant_read_twice_and_no_zero_point(tmp_path):
    """A weight two DequantizeLinear nodes read, without zero points: shifted once, both readers given zero point
    128, the same values out."""
    import onnx
    from edgecnn.export.uint8_weights import store_weights_as_uint8
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([[-127, -1, 0], [5, 64, 127]], np.int8)
    scale = np.array([0.5, 0.25], np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["w", "scale"], [out], axis=0) for out in ("a", "b")]
    graph = helper.make_graph(nodes, "twice", [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 3])
                                                    for o in ("a", "b")],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "scale")])
    path = tmp_path / "twice.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    before = _ort_session(path).run(None, {})
    assert store_weights_as_uint8(path) == 2
    rewritten = onnx.load(path)
    constants = {t.name: numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    assert constants["w"].dtype == np.uint8 and np.array_equal(constants["w"].astype(int), weight.astype(int) + 128)
    assert [n.input[2] for n in rewritten.graph.node] == ["w_zero_point"] * 2
    assert (constants["w_zero_point"] == 128).all()
    for a, b in zip(before, _ort_session(path).run(None, {}), strict=True):
        np.testing.assert_array_equal(a, b)


def test_openvino_keeps_int8_weights_under_the_u8u8_scheme(tmp_path):
    """OpenVINO runs uint8-weight convolutions in float, so its IR takes x86-avx2's 7-bit int8 weights (and
    --adaround learns that grid for it) where the .onnx stores 8-bit ones as uint8."""
    from edgecnn.export import onnx as onnx_export
    from edgecnn.export import openvino
    from edgecnn.quantize.adaround import INT8, INT8_REDUCED_RANGE

    u8u8 = scheme_for("x86-avx2-u8u8")
    assert onnx_export.Builder.weight_grid(u8u8) is INT8
    assert openvino.Builder.weight_grid(u8u8) is INT8_REDUCED_RANGE
    scheme = openvino.Builder(None, None, u8u8, tmp_path).scheme
    assert scheme.target == "x86-avx2" and scheme.reduce_range and scheme.onnx_weights == "int8"
    assert "x86-avx2-u8u8" in scheme.reason
    assert openvino.Builder(None, None, scheme_for("x86-vnni"), tmp_path).scheme == scheme_for("x86-vnni")


class _InvertedResidual(torch.nn.Module):
    """A stem, one MobileNetV2 block with its residual sum, a head: every kind of channel group equalize() scales.
    Channels span four decades (BatchNorm scales); one expansion channel saturates ReLU6, one is dead."""

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)  # the convolutions' initial weights too, or each run compares another model

        def conv_bn(cin, cout, k=1, groups=1, act=True):
            layers = [torch.nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                      torch.nn.BatchNorm2d(cout)]
            return torch.nn.Sequential(*layers, torch.nn.ReLU6()) if act else torch.nn.Sequential(*layers)

        self.stem = conv_bn(3, 8, 3, act=False)
        self.expand, self.depthwise = conv_bn(8, 32), conv_bn(32, 32, 3, groups=32)
        self.project, self.head = conv_bn(32, 8, act=False), conv_bn(8, 16)
        self.classifier = torch.nn.Linear(16, 4)
        for norm in (m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            norm.weight.data = torch.logspace(-2, 1, len(norm.weight))[torch.randperm(len(norm.weight))]
            norm.bias.data = 0.1 * norm.weight.data
        self.expand[1].bias.data[0] = 50.0  # saturates at 6
        self.expand[1].bias.data[1] = -1e3  # never above 0

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.depthwise(self.expand(x)))
        return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.head(x), 1), 1))


def _channel_peaks(model, module, images):
    peaks = []
    handle = module.register_forward_hook(lambda m, i, o: peaks.append(o.abs().amax(dim=(0, 2, 3))))
    with torch.no_grad():
        model(images)
    handle.remove()
    return peaks[0]


def test_model_outputs_keep_their_whole_range(tmp_path):
    """Whatever the range method, a model's outputs are not clipped (clipped logits saturate and tie: the real
    MobileNetV2 lost the top-1 of a photo it was 95 % sure of): in either format's int8 graph the output's scale
    spans the float model's outputs, which a percentile range would cut."""
    import onnx
    from edgecnn.export.onnx import Builder
    from edgecnn.export.sources import ExportSource
    from edgecnn.preprocess import Preprocess
    from edgecnn.quantize import pt2e
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 1000)).eval()
    calibration = torch.randn(64, 3, 16, 16)
    calibration[0] *= 40  # one image with outputs far beyond the others'
    with torch.no_grad():
        reference = model(calibration).numpy()
    whole = (reference.max() - min(reference.min(), 0)) / 255  # the scale of the outputs' min/max range

    observed = pt2e.observe(model, calibration, "NCHW")
    [output] = observed.outputs
    low, high = activation_range(observed.histograms[output], "percentile")
    assert (high - low) / 255 < 0.9 * whole  # what the rule prevents
    graph = observed.convert("percentile")
    [result] = next(n for n in graph.graph.nodes if n.op == "output").args[0]
    quantize = result.args[0]  # dequantize(quantize(logits)): the output's own quantizer
    assert "quantize_per_tensor" in str(quantize.target) and quantize.args[1] == pytest.approx(whole, rel=1e-3)

    source = ExportSource(model, Preprocess(img_size=16), [str(i) for i in range(1000)], "custom")
    builder = Builder(source, calibration, scheme_for("x86-vnni"), tmp_path)
    builder.candidate.method = "percentile"
    builder.build(tmp_path / "int8.onnx", [])
    int8 = onnx.load(tmp_path / "int8.onnx").graph
    [dequantize] = [n for n in int8.node if n.output[0] == int8.output[0].name]
    scales = {i.name: numpy_helper.to_array(i) for i in int8.initializer}
    assert dequantize.op_type == "DequantizeLinear" and float(scales[dequantize.input[1]]) == pytest.approx(whole,
                                                                                                            rel=1e-3)


def test_equalization_keeps_the_outputs_and_evens_the_channels():
    from edgecnn.quantize.equalize import MAX_GROWTH, equalize

    model = _InvertedResidual().eval()
    calibration = torch.randn(16, 3, 16, 16)
    equalized, report = equalize(model, calibration)
    # stem + residual sum → expand/head (dense), expand → depthwise (free), depthwise → project (dense)
    assert report == {"groups": 3, "channels": report["channels"]} and report["channels"] > 40
    with torch.no_grad():
        torch.testing.assert_close(equalized(calibration), model(calibration), rtol=1e-4, atol=1e-4)
    before, after = _channel_peaks(model, model.expand, calibration), _channel_peaks(equalized, equalized.expand,
                                                                                        calibration)
    assert before[0] == after[0] == 6.0 and before[1] == after[1] == 0.0  # saturated and dead channels as they were
    # Read by a depthwise conv: raised to the widest channel (at most MAX_GROWTH times).
    assert before[2:].min() < 0.01 * before.max()
    torch.testing.assert_close(after[2:], (before[2:] * MAX_GROWTH).clamp(max=6.0), rtol=1e-4, atol=1e-4)
    spread = [(p.min() / p.max()).item() for p in (_channel_peaks(m, m.depthwise, calibration) for m in
                                                   (model, equalized))]
    assert spread[1] > 3 * spread[0]  # read by a dense conv: balanced against its weight columns
    assert all(torch.isfinite(p).all() for p in equalized.parameters())


def test_equalization_lowers_int8_noise():
    from edgecnn.quantize import pt2e
    from edgecnn.quantize.equalize import equalize

    def noise(m, calibration, reference):
        observed = pt2e.observe(m, calibration, "NCHW")
        with torch.no_grad():
            return float(((observed.convert("minmax")(calibration) - reference) ** 2).mean())

    # How much equalization gains depends on the weights (measured 0.08× to 0.82× over seeds 0-5): five models.
    ratios = []
    for seed in range(5):
        model = _InvertedResidual(seed).eval()
        calibration = torch.randn(32, 3, 16, 16)
        with torch.no_grad():
            reference = model(calibration)
        ratios.append(noise(equalize(model, calibration)[0], calibration, reference)
                      / noise(model, calibration, reference))
    assert max(ratios) < 1.0 and sum(ratios) / len(ratios) < 0.8, ratios


def test_equalization_does_not_raise_a_channel_past_what_xnnpack_takes(monkeypatch):
    """A channel whose folded weights are huge while ReLU6 keeps almost nothing of it (an under-trained
    BatchNorm) is raised only while its requantization scale stays moderate: raised to the widest channel, its
    weights would put input scale × weight scale / output scale past XNNPACK's limit."""
    from edgecnn.quantize import equalize as eq
    from edgecnn.quantize import pt2e

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                                torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(4)).eval()
    calibration = torch.randn(16, 3, 12, 12)
    norm = model[1]
    with torch.no_grad():
        model(calibration)  # materialises the linear layer
        norm.running_var[0] = 1e-6
        norm.bias[0] = 0.0
        norm.bias[0] = 0.01 - model[:2](calibration)[:, 0].max()  # channel 0 peaks at 0.01: ReLU6 cuts the rest

    def widened(limit: float) -> bool:
        monkeypatch.setattr(eq, "MAX_REQUANTIZATION", limit)
        observed = pt2e.observe(eq.equalize(model, calibration)[0], calibration, "NCHW")
        graph = observed.with_ranges("minmax")
        pt2e.keep_requantizable(graph)
        minmax = activation_ranges(observed.histograms, "minmax")
        return any((float(m.min_val), float(m.max_val)) != pytest.approx(minmax[name])
                   for name, m in graph.named_modules() if name in minmax)

    assert not widened(eq.MAX_REQUANTIZATION)
    assert widened(float("inf"))  # unbounded, the channel is raised 256 times and the floor has to step in


def test_keep_requantizable_widens_even_a_range_below_the_observers_least_scale():
    """Output ranges narrower than 255 × the observer's least scale (eps) already sit at that scale: the range is
    stretched from its true width, and every layer ends below the limit."""
    from edgecnn.quantize import pt2e

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 4)).eval()
    calibration = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        model[2].weight[0] *= 5000
        model[2].bias.fill_(-1e3)
        model[2].bias[0] = 0.0
        model[2].bias[0] = 0.01 - model[:3](calibration)[:, 0].max()  # the output peaks at 0.01
    graph = pt2e.observe(model, calibration, "NCHW").with_ranges("minmax")
    modules = dict(graph.named_modules(remove_duplicate=False))  # a shared observer has several names
    layers = [n for n in graph.graph.nodes if n.target in pt2e.WEIGHTED]

    def ratios():
        return [product / scale for _, product, scale in (pt2e._requantization(n, modules) for n in layers)]

    assert max(ratios()) > pt2e.XNNPACK_LIMIT
    pt2e.keep_requantizable(graph)
    assert max(ratios()) <= pt2e.REQUANTIZATION_LIMIT * 1.001


def test_keep_requantizable_refuses_what_no_widening_fixes():
    """A concatenation shares one observer between its inputs: widening one layer's output raises another's
    input scale. When the two layers' weights together exceed the limit, the export names the layer."""
    from edgecnn.quantize import pt2e

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q, self.r = (torch.nn.Conv2d(c, 8, 1) for c in (3, 8, 8))
            self.s = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = torch.relu(self.p(x))
            return self.s(torch.cat([a, torch.relu(self.r(torch.relu(self.q(a))))], 1))

    torch.manual_seed(0)
    graph = pt2e.observe(Loop().eval(), torch.randn(8, 3, 8, 8), "NCHW").with_ranges("minmax")
    modules = dict(graph.named_modules(remove_duplicate=False))
    for node in (n for n in graph.graph.nodes if n.target in pt2e.WEIGHTED):
        if pt2e.module_path(node) in ("q", "r"):  # weights 100 and 1000 times their inputs' and outputs' steps
            weight = modules[node.args[1].target]
            scale = 100.0 if pt2e.module_path(node) == "q" else 1000.0
            weight.min_val.fill_(-127 * scale)
            weight.max_val.fill_(127 * scale)
    with pytest.raises(EdgeCNNError, match=r"^[qr]: its weights are too large .* XNNPACK's limit"):
        pt2e.keep_requantizable(graph)


def test_a_model_torch_fx_cannot_trace_is_quantized_as_it_is():
    from edgecnn.quantize.equalize import equalize

    class Branching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    model = Branching().eval()
    equalized, report = equalize(model, torch.rand(2, 3, 8, 8))
    assert "cannot copy or trace the model (torch.fx)" in report["skipped"]
    assert torch.equal(equalized.conv.weight, model.conv.weight)


def test_a_shared_convolution_is_not_equalized():
    """One module called twice holds one set of weights: it cannot take two groups' scales."""
    from edgecnn.quantize.equalize import equalize

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.shared = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)
            self.a.weight.data[0] *= 100

        def forward(self, x):
            return self.shared(torch.relu(self.shared(torch.relu(self.a(x)))))

    model, calibration = Shared().eval(), torch.rand(4, 3, 8, 8)
    equalized, report = equalize(model, calibration)
    assert report == {"groups": 0, "channels": 0}
    with torch.no_grad():
        assert torch.equal(equalized(calibration), model(calibration))


@pytest.mark.parametrize("name", ["tinycnn", "resnet8", "mobilenet_v2", "mobilenet_v3_small_edge", "resnet18",
                                  "shufflenet_v2_x0_5", "efficientnet_b0", "convnext_edge"])
def test_equalization_keeps_registry_models_outputs(name):
    from edgecnn.models.build import build_model
    from edgecnn.quantize.equalize import equalize

    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.weight.data.uniform_(0.01, 3.0)  # channels of unequal range, as trained ones are
        norm.bias.data.uniform_(-1.0, 1.0)
    calibration = torch.randn(8, 3, 64, 64)
    equalized, report = equalize(model, calibration)
    assert "skipped" not in report
    assert (report["groups"] > 0) == (name != "convnext_edge")  # LayerNorm and GELU do not commute with scales
    with torch.no_grad():
        torch.testing.assert_close(equalized(calibration), model(calibration), rtol=1e-4, atol=1e-4)


class _Unusual(torch.nn.Module):
    """Graphs where a careless rescale changes the model or crashes: a convolution reading and writing one
    residual stream, ReLU6 beside an unclipped reader, a one-channel sum broadcast over four, tied weights, a
    module called with keywords."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 1)
        self.one, self.dw = torch.nn.Conv2d(3, 1, 1), torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        with torch.no_grad():
            self.a.weight[0] *= 50  # one wide channel: every group wants rescaling
            self.a.weight[1] *= -40  # one channel far below zero: ReLU6 zeroes it at any scale
        self.tied = torch.nn.Conv2d(3, 4, 1)
        self.b_twin = torch.nn.Conv2d(4, 4, 1)
        self.b_twin.weight = self.b.weight  # two modules, one weight: two groups would scale it twice

    def forward(self, x):
        y = self.a(x)
        if self.kind == "self-reading":
            y = torch.relu(y)
            return self.dw(y + self.b(y))
        if self.kind == "relu6 beside":
            return self.dw(torch.nn.functional.relu6(y)) + self.b(y)
        if self.kind == "broadcast":
            return self.b(y + self.one(x))
        if self.kind == "tied":
            return self.b(torch.relu(y)) + self.b_twin(torch.relu(self.tied(x)))
        return self.b(input=torch.relu(y))


@pytest.mark.parametrize("kind", ["self-reading", "relu6 beside", "broadcast", "tied", "keywords"])
def test_equalization_of_unusual_graphs_keeps_the_outputs(kind):
    from edgecnn.quantize.equalize import equalize

    torch.manual_seed(0)
    model, calibration = _Unusual(kind).eval(), torch.randn(8, 3, 8, 8)
    equalized, report = equalize(model, calibration)
    assert "skipped" not in report
    with torch.no_grad():
        torch.testing.assert_close(equalized(calibration), model(calibration), rtol=1e-4, atol=1e-4)


def test_batchnorm_folding_keeps_the_outputs():
    from edgecnn.quantize.adaround import fold_batchnorm

    model = _InvertedResidual().eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    images = torch.randn(4, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is left as it was
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)


def test_batchnorm_folding_leaves_what_it_cannot_fold_exactly():
    """A convolution called twice (each call read by another BatchNorm), a BatchNorm without learned affine
    parameters after a biased convolution: the first stays as it is, the second folds."""
    from edgecnn.quantize.adaround import fold_batchnorm

    class Unusual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.a, self.b = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3), \
                torch.nn.BatchNorm2d(3)
            self.biased, self.plain = torch.nn.Conv2d(3, 4, 1, bias=True), torch.nn.BatchNorm2d(4, affine=False)

        def forward(self, x):
            x = self.a(self.shared(x)) + self.b(self.shared(x))
            return self.plain(self.biased(x))

    model = Unusual().eval()
    for norm in (model.a, model.b, model.plain):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(model)
    assert isinstance(folded.a, torch.nn.BatchNorm2d) and isinstance(folded.b, torch.nn.BatchNorm2d)
    assert isinstance(folded.plain, torch.nn.Identity)
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), rtol=1e-4, atol=1e-4)


def test_adaround_puts_weights_on_the_grid_the_converters_compute():
    """Every converter derives each channel's scale from the weights it is given (largest |weight| / 127) and rounds
    to it: the learned steps survive only if the weights already sit on that grid with the same largest weight."""
    import onnx
    from edgecnn.quantize.adaround import adaround
    from onnxruntime.quantization.quant_utils import quantize_data

    model = _InvertedResidual().eval()
    # Smooth images, as photos are: neighbouring inputs correlate, so rounding errors can cancel (on white noise
    # rounding to nearest is already the best there is).
    calibration = torch.nn.functional.interpolate(torch.randn(24, 3, 4, 4), size=16, mode="bilinear")
    rounded, report = adaround(model, calibration)
    # Less output error than rounding to nearest on held-out patches, in most layers (rounding to nearest, or any
    # worse rounding, would count as none); a layer where learning did not pay keeps nearest. The classifier reads
    # 24 vectors (one per image) for 16 weights a row: too few to learn from.
    assert report["layers"] == 6 and 3 <= report["learned"] <= 5, report
    assert report["error_vs_nearest"]["median"] < 1.0 and report["error_vs_nearest"]["worst"] <= 1.0, report
    assert report["weights_rounded_the_other_way"] > 0.01, report
    layers = [m for m in rounded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    checked_exactly = 0
    for layer in layers:
        weight = layer.weight.detach()
        assert_on_pt2e_grid(weight)
        for row in weight.reshape(len(weight), -1).numpy():
            zero, row_scale, codes = quantize_data(row, onnx.TensorProto.INT8, symmetric=True)
            # onnxruntime has no least step: below PT2E's (2^-12) it rounds again, within half its own step.
            exact = np.abs(row).max() >= 127 * 2**-12
            np.testing.assert_allclose((codes.astype(np.float32) - zero) * row_scale, row, rtol=0,
                                       atol=1e-7 if exact else row_scale / 2 + 1e-7)
            checked_exactly += exact
    assert checked_exactly > 50  # most channels: the same steps in both converters
    with torch.no_grad():  # still the same model, to within int8 weights
        reference = model(calibration)
        error = float(((rounded(calibration) - reference) ** 2).mean() / (reference**2).mean())
    assert error < 1e-3, error


def test_adaround_on_onnxruntimes_7_bit_grid():
    """For an .onnx built for x86 without VNNI, onnxruntime quantizes weights to ±64 steps (reduce_range): AdaRound
    learns on that grid, and onnxruntime's own quantizer keeps every learned step."""
    import onnx
    from edgecnn.quantize.adaround import INT8_REDUCED_RANGE, adaround
    from onnxruntime.quantization.quant_utils import quantize_data

    model = _InvertedResidual().eval()
    with torch.no_grad():  # a dead channel: all its weights zero
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight[0] = 0
    calibration = torch.nn.functional.interpolate(torch.randn(24, 3, 4, 4), size=16, mode="bilinear")
    rounded, report = adaround(model, calibration, grid=INT8_REDUCED_RANGE)
    assert all(torch.isfinite(p).all() for p in rounded.parameters())
    assert report["weight_grid"] == "7-bit (reduce_range)" and report["learned"] >= 3, report
    assert report["weights_rounded_the_other_way"] > 0.01, report
    for layer in [m for m in rounded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]:
        for row in layer.weight.detach().reshape(len(layer.weight), -1).numpy():
            zero, row_scale, codes = quantize_data(row, onnx.TensorProto.INT8, symmetric=True, reduce_range=True)
            assert np.abs(codes.astype(int)).max() == (64 if row.any() else 0)
            np.testing.assert_allclose((codes.astype(np.float32) - zero) * row_scale, row, rtol=0, atol=1e-7)
    with torch.no_grad():  # still the same model, to within 7-bit weights
        reference = model(calibration)
        error = float(((rounded(calibration) - reference) ** 2).mean() / (reference**2).mean())
    assert error < 4e-3, error


def assert_on_pt2e_grid(weight: torch.Tensor) -> None:
    """The weight is unchanged by the per-channel int8 rounding litert-torch applies (its PT2E weight observer)."""
    from edgecnn.quantize.pt2e import quantizer

    spec = quantizer().global_config.weight
    observer = spec.observer_or_fake_quant_ctr(dtype=spec.dtype, quant_min=spec.quant_min, quant_max=spec.quant_max,
                                               qscheme=spec.qscheme, ch_axis=spec.ch_axis)
    observer(weight)
    scale = observer.calculate_qparams()[0].reshape(-1, *[1] * (weight.dim() - 1))
    torch.testing.assert_close(torch.round(weight / scale).clamp(-127, 127) * scale, weight, rtol=0, atol=1e-7)


def test_adaround_rounds_a_detector(monkeypatch):
    """An SSDLite detector (two heads, ~90 convolutions, BatchNorm everywhere) folds and rounds like a classifier:
    every layer on the int8 grid, both outputs (boxes, class scores) within int8 weight error of the original,
    and still the detector the export's card reads. Few steps per layer: this checks the machinery, not the
    learning (test_adaround_puts_weights_on_the_grid_the_converters_compute does)."""
    import edgecnn.quantize.adaround as learned_rounding
    from edgecnn.models.ssdlite import build_detector

    monkeypatch.setattr(learned_rounding, "ITERATIONS", 20)
    torch.manual_seed(0)
    model = build_detector("ssdlite_mobilenet_v2", 1)[0].eval()
    calibration = torch.nn.functional.interpolate(torch.randn(8, 3, 8, 8), size=96, mode="bilinear")
    rounded, report = learned_rounding.adaround(model, calibration)
    layers = [m for m in rounded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert report["layers"] == len(layers) > 80 and report["iterations"] == 20, report
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in rounded.modules())
    for layer in layers:
        assert_on_pt2e_grid(layer.weight.detach())
    assert type(rounded) is type(model) and rounded.card_section("boxes", "scores")["background"]
    with torch.no_grad():
        for before, after in zip(model(calibration), rounded(calibration), strict=True):
            assert after.shape == before.shape
            assert float(((after - before) ** 2).mean() / (before**2).mean()) < 1e-2


def test_adaround_refuses_what_it_cannot_fold():
    from edgecnn.quantize.adaround import adaround

    class Branching(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.norm(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(EdgeCNNError, match="--adaround cannot trace the model to fold its BatchNorm"):
        adaround(Branching().eval(), torch.rand(2, 3, 8, 8))
