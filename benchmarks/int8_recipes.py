"""Does int8 keep edgecnn's own models' accuracy? `python benchmarks/int8_recipes.py [NAME...]` (~12 min for all
on 2 cores; named rows are re-measured and merged into the results).

Each row trains a model from scratch with the CLI (`edgecnn train`, or `edgecnn run` for a recipe file) and exports
its best checkpoint with `edgecnn export --int8` and nothing else: both formats, `--calibration auto`, channel
equalization and bias correction on, scored on the dataset's held-out split. The target (issue 14): int8 top-1
within 0.3 points of float. Writes benchmarks/results/int8_recipes.{json,md}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
TARGET_POINTS = 0.3

DIGITS = ["--dataset", "digits", "--epochs", "6", "--img-size", "32"]
RUNS = {  # name → (training command after `edgecnn`, where it leaves best.pt relative to OUT)
    "tinycnn / digits": (["train", "--model", "tinycnn", *DIGITS], "best.pt"),
    "resnet8 / digits": (["train", "--model", "resnet8", *DIGITS], "best.pt"),
    "mobilenet_v2 w0.5 / digits": (["train", "--model", "mobilenet_v2", "--width", "0.5", *DIGITS], "best.pt"),
    "mobilenet_v3_small_edge w0.5 / digits": (["train", "--model", "mobilenet_v3_small_edge", "--width", "0.5",
                                               *DIGITS], "best.pt"),
    "resnet8 / Fashion-MNIST (recipes/fashion_mnist.yaml)": (["run", str(ROOT / "recipes/fashion_mnist.yaml")],
                                                             "train/best.pt"),
}


def edgecnn(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"edgecnn {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def measure(name: str, folder: Path) -> dict:
    command, best = RUNS[name]
    started = time.perf_counter()
    edgecnn(*command, "--out", str(folder / "run"))
    trained = time.perf_counter() - started
    report = folder / "export.json"
    edgecnn("export", str(folder / "run" / best), "--int8", "--out", str(folder / "int8"), "--json", str(report))
    artefacts = json.loads(report.read_text())["artifacts"]
    row = {"command": "edgecnn " + " ".join(Path(c).name if c.endswith(".yaml") else c for c in command),
           "train_seconds": round(trained, 1), "float_top1": artefacts[0]["float_accuracy"],
           "samples": artefacts[0]["samples"]}
    for a in artefacts:
        row[a["format"]] = {"top1": a["accuracy"], "agreement": a["agreement"], "logit_sqnr_db": a["logit_sqnr_db"],
                            "calibration": a["calibration"]["method"], "status": a["status"],
                            "fully_int8": not a["float_ops"], "export_seconds": a["export_seconds"]}
    print(name, row, flush=True)
    return row


def markdown(report: dict) -> str:
    lines = [f"# int8 on edgecnn's own models ({report['date']})", "",
             f"{report['machine']}. `edgecnn export BEST.pt --int8` (auto ranges, equalization, bias correction); "
             f"top-1 on the held-out split; the target is int8 within {TARGET_POINTS} points of float.", "",
             "| model / data | held-out | float top-1 | .tflite int8 (agreement, logit SQNR) | "
             ".onnx int8 (agreement, logit SQNR) | within 0.3 points |", "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        cells = [f"{r[f]['top1']:.2%} ({r[f]['agreement']:.1%}, {r[f]['logit_sqnr_db']:.1f} dB)"
                 for f in ("tflite", "onnx")]
        within = all(r[f]["top1"] >= r["float_top1"] - TARGET_POINTS / 100 for f in ("tflite", "onnx"))
        lines.append(f"| {name} | {r['samples']} | {r['float_top1']:.2%} | {cells[0]} | {cells[1]} | "
                     f"{'yes' if within else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.path.insert(0, str(ROOT / "toolkit"))
    from edgecnn.bench.machine import machine_info

    names = sys.argv[1:] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(RUNS)}")
    path = RESULTS / "int8_recipes.json"
    report = json.loads(path.read_text()) if path.exists() else {"results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            report["results"][name] = measure(name, Path(tmp) / str(i))
    machine = machine_info()
    report.update(date=str(date.today()),
                  machine=f"{machine['cpu']} ({', '.join(machine['isa'])}), {machine['cores']} cores")
    report["results"] = {n: report["results"][n] for n in RUNS if n in report["results"]}
    path.write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "int8_recipes.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
