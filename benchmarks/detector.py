"""A detector's numbers, from the vtest_person recipe's student (`make vtest-person`):
`python benchmarks/detector.py [runs/vtest_person/train/best.pt]` (~15 min on 2 cores).

1. Float and int8 .tflite and .onnx exports of the checkpoint (`edgecnn export`), verified on the recipe's held-out
   frames 600–794 of vtest.avi: mAP@0.5 against the teacher's boxes, the float model's, and box agreement.
2. `edgecnn bench` of the four files on the same held-out frames: 1 thread, 320 px, latency with decoding + NMS,
   mAP@0.5 and box agreement, with Raspberry Pi 4 / Pi 5 estimates from the device profiles (estimates, not
   measurements).
3. What decoding and NMS add: `Detector.detect` on a 768×576 vtest frame against the bare engine call on a
   prepared input, interleaved rounds, medians.
4. Counting: `edgecnn watch vtest.avi --line` with the int8 files and the float file, the same tracker: crossings
   per direction over the whole video.
Writes benchmarks/results/detector.json and .md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.bench.machine import machine_info  # noqa: E402
from edgecnn.runtime import load  # noqa: E402

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
GATE = "gate:450,140,450,460"  # top to bottom across the square: "in" is walking to the left
RESULTS = ROOT / "benchmarks" / "results"


def edgecnn(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edgecnn", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"edgecnn {' '.join(map(str, args[:2]))} failed: {result.stderr.strip()}")
    return result


def exports(checkpoint: Path, out: Path) -> dict[str, dict]:
    rows = {}
    for flags, folder in (([], "float"), (["--int8"], "int8")):
        report = out / f"{folder}.json"
        edgecnn("export", checkpoint, "--format", "tflite,onnx", *flags, "--out", out / folder, "--json", report)
        for a in json.loads(report.read_text())["artifacts"]:
            rows[Path(a["path"]).name] = {k: a[k] for k in ("path", "format", "int8", "size_bytes", "map50",
                                                              "float_map50", "box_agreement", "float_ops", "ops")}
    return rows


def decode_overhead(paths: list[Path], rounds: int = 5, runs: int = 20) -> dict[str, dict]:
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 700)
    frame = capture.read()[1]
    detectors = {p.name: load(p, threads=1) for p in paths}
    samples = {name: d.prepare(frame)[None] for name, d in detectors.items()}
    calls = {name: {"engine": (lambda d=d, x=samples[name]: d.backend.run(x)), "detect": (lambda d=d: d.detect(frame))}
             for name, d in detectors.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"engine": [], "detect": []} for n in detectors}
    for _ in range(rounds):
        for name, steps in calls.items():
            for step, call in steps.items():
                call()
                for _ in range(runs):
                    start = time.perf_counter()
                    call()
                    times[name][step].append((time.perf_counter() - start) * 1000)
    return {name: {step: round(float(np.median(t)), 3) for step, t in steps.items()} for name, steps in times.items()}


def counts(path: Path, out: Path) -> dict:
    stats = out / f"watch_{path.name}.json"
    edgecnn("watch", path, VTEST, "--line", GATE, "--threads", 2, "--stats-json", stats)
    summary = json.loads(stats.read_text())
    return {"lines": summary["lines"], "tracks": summary["tracks"], "detections": summary["detections"]}


def main() -> None:
    checkpoint = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "runs/vtest_person/train/best.pt")
    out = ROOT / "runs" / "detector_benchmark"
    artefacts = exports(checkpoint, out)
    files = [Path(a["path"]) for a in artefacts.values()]
    bench = out / "bench.json"
    from edgecnn.checkpoint import load_checkpoint

    held_out = load_checkpoint(checkpoint).val_dataset
    edgecnn("bench", *files, "--threads", 1, "--estimate", "pi4,pi5", "--dataset", held_out, "--json", bench)
    report = {
        "machine": machine_info(), "checkpoint": str(checkpoint), "artefacts": artefacts,
        "bench": [{k: row.get(k) for k in ("model", "format", "precision", "backend", "device", "median_ms", "p90_ms",
                                           "estimated_ms", "decode_ms", "map50", "box_agreement")}
                  for row in json.loads(bench.read_text())["results"]],
        "decode_ms": decode_overhead(files),
        "counts": {p.name: counts(p, out) for p in files},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detector.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "detector.md").write_text(markdown(report))
    print(markdown(report))


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    lines = ["| file | size | mAP@0.5 | float mAP@0.5 | kept | box agreement | float ops |",
             "|---|---|---|---|---|---|---|"]
    for name, a in report["artefacts"].items():
        kept = a["map50"] / a["float_map50"] if a["float_map50"] else float("nan")
        lines.append(f"| {name} | {a['size_bytes'] / 2**20:.2f} MiB | {a['map50']:.3f} | {a['float_map50']:.3f} | "
                     f"{kept:.1%} | {a['box_agreement']:.3f} | {len(a['float_ops'])} |")
    lines += ["", "| file | where | median ms (decoding + NMS in it) | p90 ms | decode + NMS ms | mAP@0.5 | "
              "box agreement |", "|---|---|---|---|---|---|---|"]
    for row in report["bench"]:
        if row["estimated_ms"] is not None:
            lines.append(f"| {Path(row['model']).name} | {row['device']} (estimate, network) | "
                         f"≈{row['estimated_ms']:.3g} | — | — | — | — |")
        else:
            lines.append(f"| {Path(row['model']).name} | {row['backend']} here | {row['median_ms']:.2f} | "
                         f"{row['p90_ms']:.2f} | {_num(row.get('decode_ms'), 2)} | {_num(row.get('map50'), 3)} | "
                         f"{_num(row.get('box_agreement'), 3)} |")
    lines += ["", "| file | engine ms | detect ms (resize, decode, NMS included) |", "|---|---|---|"]
    for name, t in report["decode_ms"].items():
        lines.append(f"| {name} | {t['engine']:.2f} | {t['detect']:.2f} |")
    lines += ["", f"| file | {GATE} in | out | tracks |", "|---|---|---|---|"]
    for name, c in report["counts"].items():
        gate = c["lines"]["gate"]
        lines.append(f"| {name} | {gate['in']} | {gate['out']} | {c['tracks']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
