"""Which registry models export to fully-int8 .tflite and .onnx: `python benchmarks/int8_status.py [MODEL...]`
(~15 min for all; named models are re-measured and merged into the results).

Each model is built with random weights (what is int8 depends on the layers, not the weights), 10 classes, at
32 px (64 px for the ImageNet-sized backbones, whose stems would otherwise leave 1×1 maps early), calibrated on
digits, exported with `--int8`, and its ops listed: the table says "int8" when every compute op is int8, else which
op types stay float. Writes benchmarks/results/int8_status.json and prints the Markdown table.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.export import ExportOptions, export  # noqa: E402
from edgecnn.export.sources import ExportSource, dataset_images  # noqa: E402
from edgecnn.models import MODELS  # noqa: E402
from edgecnn.models.build import build_model  # noqa: E402
from edgecnn.preprocess import Preprocess  # noqa: E402
from rich.console import Console  # noqa: E402

LARGE = {"resnet18", "resnet34", "resnet50", "convnext_tiny", "efficientnet_b0", "shufflenet_v2_x0_5",
         "mobilenet_v3_large", "mobilenet_v3_large_edge"}


def status(artefact) -> str:
    if artefact.status == "export failed":
        return f"export failed: {artefact.error}"
    if not artefact.float_ops:
        return "int8"
    kinds = Counter(op.split(" ")[0] for op in artefact.float_ops)
    return "float: " + ", ".join(f"{k}×{n}" for k, n in sorted(kinds.items()))


def main() -> None:
    path = ROOT / "benchmarks/results/int8_status.json"
    wanted = sys.argv[1:] or list(MODELS)
    results = json.loads(path.read_text()) if sys.argv[1:] and path.exists() else {}
    with tempfile.TemporaryDirectory() as folder:
        for name in wanted:
            size = 64 if name in LARGE else 32
            pre = Preprocess(size, mean=(0.304,) * 3, std=(0.376,) * 3)
            source = ExportSource(build_model(name, 10).eval(), pre, [str(i) for i in range(10)], name)
            calibration = dataset_images("digits", "train", pre, 64)
            started = time.perf_counter()
            artefacts = export(source, ExportOptions(("tflite", "onnx"), int8=True), folder, calibration,
                               calibration.head(32), Console(file=io.StringIO()))
            results[name] = {a.format: status(a) for a in artefacts} | {"img_size": size,
                                                                      "seconds": round(time.perf_counter() - started)}
            print(name, results[name], flush=True)
    results = {name: results[name] for name in MODELS if name in results}
    path.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | TFLite int8 | ONNX int8 |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tflite']} | {r['onnx']} |")


if __name__ == "__main__":
    main()
