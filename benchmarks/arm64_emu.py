"""Arm functional runs and device profiles: `python benchmarks/arm64_emu.py` (about 10 min on 2 cores).

Builds (or reuses) the emulated Pi userland, then runs edgecnn's int8 artefacts on emulated Pi 4 (cortex-a72) and
Pi 5 (cortex-a76) against x86: tinycnn on the digits test split, resnet8 on 1,000 Fashion-MNIST test images (both
from `python benchmarks/suite.py`'s exports under runs/bench/) and the real ImageNet MobileNetV2 on 40 of
opencv-doc's photos. Writes benchmarks/results/arm64_emu.{json,md}, the profiles table
(benchmarks/results/device_profiles.json) and both README sections (`arm64-emu`, `device-profiles`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from readme_sections import replace_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH = ROOT / "runs" / "bench"
PHOTOS = "/usr/share/doc/opencv-doc/examples/data"
CASES = {  # name: (files under runs/bench/, held-out data options)
    "tinycnn digits": (["tinycnn_digits/tinycnn_int8.tflite", "tinycnn_digits/tinycnn_int8.onnx"],
                       ["--dataset", "digits"]),
    "resnet8 Fashion-MNIST": (["resnet8_fashion_mnist/resnet8_int8.tflite", "resnet8_fashion_mnist/resnet8_int8.onnx"],
                              ["--dataset", "fashion-mnist", "--eval-samples", "1000"]),
    "MobileNetV2 ImageNet": (["mobilenet_v2_imagenet/mobilenet_v2_int8.tflite",
                              "mobilenet_v2_imagenet/mobilenet_v2_int8.onnx"],
                             ["--images", PHOTOS, "--eval-samples", "40"]),
}
CPUS = {"cortex-a72": "Pi 4", "cortex-a76": "Pi 5"}


def edgecnn(*args: str) -> float:
    print("$ edgecnn " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgecnn", *args], check=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    setup_s = edgecnn("device", "setup", "arm64-emu")
    rows, machine = [], {}
    for name, (files, data) in CASES.items():
        paths = [str(BENCH / f) for f in files]
        if not all(Path(p).exists() for p in paths):
            print(f"skipping {name}: run `python benchmarks/suite.py` first", flush=True)
            continue
        for cpu in CPUS:
            out = RESULTS / f".arm64_{cpu}.json"
            edgecnn("bench", *paths, "--device", f"arm64-emu:{cpu}", *data, "--json", str(out))
            report = json.loads(out.read_text())
            out.unlink()
            machine[cpu] = report["machine"]
            rows += [{"case": name, "cpu": cpu, **row} for row in report["results"]]
    edgecnn("device", "list", "--json", str(RESULTS / "device_profiles.json"))
    (RESULTS / "arm64_emu.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "setup_s": setup_s,
                                                         "machine": machine, "rows": rows}, indent=2) + "\n")
    table = ["| model | file | emulated CPU | status | Arm top-1 | agree with x86 | max \\|diff\\| |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [("—" if r[k] is None else fmt.format(r[k])) for k, fmt in
                 (("accuracy", "{:.2%}"), ("agreement", "{:.2%}"), ("max_abs_diff", "{:.3g}"))]
        table.append(f"| {r['case']} | {r['model']} | {r['cpu']} ({CPUS[r['cpu']]}) | {r['status']} | "
                     + " | ".join(cells) + " |")
    body = (f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/arm64_emu.py` (the userland was ready in "
            f"{setup_s:.0f} s):\n\n" + "\n".join(table) + "\n\n")
    replace_section("arm64-emu", body)
    (RESULTS / "arm64_emu.md").write_text(body)
    profiles = json.loads((RESULTS / "device_profiles.json").read_text())
    lines = ["| profile | device | peak fp32 | peak int8 | MobileNetV2 fp32 / int8, all cores | basis |",
             "|---|---|---|---|---|---|"]
    for name, p in profiles.items():
        core, ghz, cores, mbv2 = p["core"], p["ghz"], p["cores"], p["mobilenet_v2_ms"]
        lines.append(f"| `{name}` | {p['title']} | {core['fp32_per_cycle'] * ghz * cores:.1f} GMAC/s | "
                     f"{core['int8_per_cycle'] * ghz * cores:.1f} GMAC/s | ≈{mbv2['float32']:.1f} / "
                     f"≈{mbv2['int8']:.1f} ms | {p['basis']} |")
    replace_section("device-profiles", "\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
