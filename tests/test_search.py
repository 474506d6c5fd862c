"""`--calibration search`: each activation's range rule (a method, or min/max cut deeper) chosen by the output
error it causes, and the same choices in the .onnx as in the PT2E graph they were made on."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import edgecnn_in_process
from edgecnn.export.onnx import Builder
from edgecnn.export.sources import ExportSource
from edgecnn.preprocess import Preprocess
from edgecnn.quantize import pt2e
from edgecnn.quantize.ranges import activation_range
from edgecnn.quantize.search import SAME_VALUES, START, fingerprint, search_ranges
from edgecnn.quantize.target import scheme_for
from onnx import numpy_helper

SPIKE = 3.0  # what the rare feature reaches after its ReLU; every other value there stays under ~1


@pytest.fixture(scope="module")
def spiky():
    """A small CNN whose logits hang on a feature that fires at one pixel of one calibration image: percentile
    clips that pixel away, and with it what the logits depend on."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    model[0].weight.data[0], model[0].bias.data[0] = 100.0, -147.0  # fires where all three inputs are ~0.5
    model[-1].weight.data[:, 0] = 50.0
    calibration = torch.rand(32, 3, 16, 16) * 0.5
    calibration[0, :, 3, 3] = 0.5  # 100 × 1.5 − 147 = SPIKE
    observed = pt2e.observe(model, calibration, "NCHW")
    return model, calibration, observed, search_ranges(observed)


def _spiky_histogram(observed):
    return next(h for h in observed.histograms.values() if h.high == pytest.approx(SPIKE))


def test_search_keeps_the_range_a_rare_large_value_needs(spiky):
    _, _, observed, searched = spiky
    hist = _spiky_histogram(observed)
    assert activation_range(hist, START)[1] < SPIKE / 2  # percentile clips the spike
    assert searched.rule_for(hist) == "minmax"
    assert searched.report["output_error_vs_start"] < 0.1
    assert searched.report["tensors"] == len(observed.histograms)
    assert sum(searched.report["rules"].values()) == len(observed.histograms)


def test_the_onnx_takes_the_ranges_chosen_on_the_pt2e_graph(spiky, tmp_path):
    """onnxruntime quantizes the same activations under other names: each finds its choice by its values. The
    spiky feature's scale in the .onnx spans the spike, as in the searched PT2E graph, not percentile's range."""
    model, calibration, observed, searched = spiky
    source = ExportSource(model, Preprocess(img_size=16), list("abcd"), "custom", searched=searched)
    builder = Builder(source, calibration, scheme_for("x86-vnni"), tmp_path)
    builder.candidate.method = "search"
    assert "activation ranges: search" in builder.build(tmp_path / "int8.onnx", [])
    graph = onnx.load(tmp_path / "int8.onnx").graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = [float(constants[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"]
    low, high = activation_range(_spiky_histogram(observed), "minmax")
    assert any(s == pytest.approx((high - low) / 255, rel=1e-3) for s in scales), scales
    # Every tensor the PT2E graph quantizes has its twin among the .onnx's, so every choice reaches the .onnx.
    onnx_prints = [fingerprint(h) for h in builder._histograms.values()]
    missing = [name for name, h in observed.histograms.items() if name not in observed.outputs and not any(
        np.abs(p[:4] - fingerprint(h)[:4]).max() <= SAME_VALUES * max(abs(h.low), abs(h.high)) for p in onnx_prints)]
    assert not missing


def test_export_with_search_reports_the_search(digits_checkpoint, tmp_path):
    result = edgecnn_in_process("export", digits_checkpoint, "--int8", "--calibration", "search", "--out", tmp_path,
                                "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    assert "choosing each activation's range" in result.stdout
    artefacts = json.loads((tmp_path / "report.json").read_text())["artifacts"]
    assert [a["format"] for a in artefacts] == ["tflite", "onnx"]
    for artefact in artefacts:
        assert artefact["status"] == "ok" and artefact["float_ops"] == []
        search = artefact["calibration"]["search"]
        assert artefact["calibration"]["method"] == "search" and search["start"] == START
        assert search["tensors"] > 0 and 0 < search["output_error_vs_start"] < 1.0  # some range did better
    assert artefacts[0]["calibration"]["search"] == artefacts[1]["calibration"]["search"]  # searched once


def test_search_is_a_calibration_choice():
    from edgecnn.errors import EdgeCNNError
    from edgecnn.quantize.calibrate import parse_calibration

    assert parse_calibration("Search") == "search"
    with pytest.raises(EdgeCNNError, match="choose from .*, search"):
        parse_calibration("searching")


class _Tangled(torch.nn.Module):
    """What a chain does not have: a concatenation (one observer shared by its inputs, called under two names),
    residual sums done in place (`x += out` writes into a value computed before the quantizers it follows, which a
    re-run from them reads from the kept values) and a sigmoid (fixed range)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.mix = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)
        self.a, self.b, self.head = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 4, 1), torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = self.mix(torch.cat([self.a(x), self.b(x)], 1))
        out += x
        x += out
        out = x * torch.sigmoid(x)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def test_a_rerun_from_any_tensor_equals_a_whole_run():
    from edgecnn.quantize.search import _Replay, _simulated, rule_range

    calibration = torch.randn(8, 3, 16, 16)
    observed = pt2e.observe(_Tangled().eval(), calibration, "NCHW")
    graph, quantizers, aliases = _simulated(observed)
    assert any(len(names) > 1 for names in aliases.values())  # the concatenation's shared observer
    for name, q in quantizers.items():
        q.set_range(*rule_range(observed.histograms[name], START))
    targets = {name: aliases[name] for name in quantizers if name not in observed.outputs}
    replay = _Replay(graph, calibration, targets)
    for name in targets:  # as the search goes: each in turn, a try rejected, then the same one kept
        quantizers[name].set_range(*rule_range(observed.histograms[name], "minmax*0.4"))
        replay.rerun(name)
        replay.values = replay.rerun(name)
        whole = _Replay(graph, calibration, targets)
        for got, expected in zip(replay.outputs(replay.values), whole.outputs(whole.values), strict=True):
            assert torch.allclose(got, expected, atol=1e-6), name
    assert search_ranges(observed).report["tensors"] == len(quantizers)


@pytest.mark.parametrize("low, high", [(-128, 127), (0, 255), (-127, 127)])
def test_the_fast_fake_quantizer_computes_what_pytorchs_does(low, high):
    """The search's stand-ins quantize through quantized tensors (faster); the values must be PyTorch's
    fake_quantize_per_tensor_affine's to the bit, ties and values beyond the range included."""
    from edgecnn.quantize.search import _fake_quantize

    scale, zero = 0.05, (low + high + 1) // 2 - 3
    x = torch.cat([torch.randn(10_000) * 10, (torch.arange(-300, 300) + 0.5) * scale])  # many exact .5 ties
    expected = torch.fake_quantize_per_tensor_affine(x, scale, zero, low, high)
    assert torch.equal(_fake_quantize(x, scale, zero, low, high), expected)
