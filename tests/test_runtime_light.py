"""The runtime and `edgecnn info` must work on a device with no torch installed."""

import subprocess
import sys

from conftest import edgecnn

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


def test_runtime_and_info_import_no_torch(digits_checkpoint, tmp_path):
    assert edgecnn("export", digits_checkpoint, "--int8", "--out", tmp_path).returncode == 0
    for path in (tmp_path / "tinycnn_int8.tflite", tmp_path / "tinycnn_int8.onnx"):
        result = subprocess.run([sys.executable, "-c", NO_TORCH, str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "heavy: []" in result.stdout


BENCH_NO_TORCH = """
import sys
from pathlib import Path
from edgecnn.bench import BenchOptions, benchmark, make_target
rows, machine = benchmark([Path(sys.argv[1])], BenchOptions(runs=5), make_target("local"))
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
