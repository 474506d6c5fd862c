"""OpenVINO IR (.xml + .bin) as a third format: exported from the same calibrated graph as the .onnx, verified
(ops int8 as the CPU plugin runs them, agreement with float), read by the torch-free runtime, `info`, `summary`
and `bench`, and refused when either of its two files is damaged."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_clean_error, assert_damage_refused, edgecnn, edgecnn_in_process, edgecnn_without, record
from edgecnn.runtime import load
from edgecnn.runtime.formats import model_files
from edgecnn.runtime.modelfile import read_model_file

pytest.importorskip("openvino", reason="OpenVINO is an extra: pip install 'edgecnn[openvino]'")

FRAME = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _report(digits_int8, fmt: str) -> dict:
    report = json.loads((digits_int8["onnx"].parent / "report.json").read_text())
    return next(a for a in report["artifacts"] if a["format"] == fmt)


def test_int8_ir_is_verified_like_the_other_formats(digits_int8):
    ir, onnx_file = _report(digits_int8, "openvino"), _report(digits_int8, "onnx")
    assert ir["status"] == "ok" and ir["path"].endswith("tinycnn_int8.xml")
    # every compute op runs in int8 in the CPU plugin's compiled model, not just in the file
    assert ir["ops"]["float"] == 0 and ir["ops"]["int8"] == ir["ops"]["compute"] >= 5, ir["ops"]
    assert ir["agreement"] >= 0.97 and ir["accuracy"] >= ir["float_accuracy"] - 0.02
    assert ir["calibration"]["method"] == onnx_file["calibration"]["method"]  # one range search, one graph
    assert ir["size_bytes"] == sum(f.stat().st_size for f in model_files(digits_int8["openvino"]))
    assert ir["sha256"] == hashlib.sha256(b"".join(f.read_bytes() for f in
                                                   model_files(digits_int8["openvino"]))).hexdigest()
    assert [row["layer"] for row in ir["layer_errors"]] == [row["layer"] for row in onnx_file["layer_errors"]]


def test_runtime_answers_like_the_onnx_file_it_came_from(digits_int8):
    from edgecnn.data import load_dataset

    test = load_dataset("digits").split("test")
    images = [test.image(i) for i in range(200)]
    ir, onnx_model = load(digits_int8["openvino"]), load(digits_int8["onnx"])
    assert ir.backend.name == "openvino" and ir.labels == onnx_model.labels
    same = [ir.predict(img).index == onnx_model.predict(img).index for img in images]
    assert np.mean(same) >= 0.97
    assert ir.predict(FRAME).label in ir.labels


def test_info_and_summary_read_the_ir(digits_int8):
    shown = edgecnn("info", digits_int8["openvino"], "--json", "-")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["format"] == "openvino" and info["card"]["quantization"]["int8"] is True
    assert "OpenVINO QDQ" in info["card"]["quantization"]["scheme"]
    tables = {fmt: json.loads(edgecnn("summary", digits_int8[fmt], "--json", "-").stdout)
              for fmt in ("openvino", "onnx")}
    assert tables["openvino"]["macs"] == tables["onnx"]["macs"] > 0
    convolutions = [r for r in tables["openvino"]["layers"] if r["type"] == "Convolution"]
    assert len(convolutions) == 4 and all(r["dtype"] == "uint8" and r["kernel"] == [3, 3] for r in convolutions)


def test_float_ir_is_float(digits_float):
    model = read_model_file(digits_float / "tinycnn.xml")
    assert not model.int8_ops and {op.name for op in model.float_ops} >= {"Convolution"}
    assert (digits_float / "tinycnn.bin").is_file() and not list(digits_float.glob(".export-*"))


@pytest.mark.parametrize("part", ["xml", "bin"])
def test_damage_to_either_file_is_refused(digits_int8, tmp_path, part):
    files = model_files(digits_int8["openvino"])
    entry = tmp_path / files[0].name
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    target = tmp_path / files[0 if part == "xml" else 1].name
    count = 12
    assert_damage_refused(entry, target, count, seed=7)
    record(f"corrupted openvino artefacts ({part})", tried=count, refused=count)


def test_missing_or_swapped_weights_are_one_line(digits_int8, digits_float, tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_bytes(digits_int8["openvino"].read_bytes())
    assert_clean_error(edgecnn("info", xml), "m.bin", "missing")
    # the float export's weights beside the int8 graph: the content hash covers the .bin too
    (tmp_path / "m.bin").write_bytes((digits_float / "tinycnn.bin").read_bytes())
    assert_clean_error(edgecnn("info", xml), "corrupted")


def test_sidecar_lists_both_files(digits_checkpoint, tmp_path):
    result = edgecnn_in_process("export", digits_checkpoint, "--format", "openvino", "--sha256", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    sidecar = tmp_path / "tinycnn.xml.sha256"
    assert [line.split()[1] for line in sidecar.read_text().splitlines()] == ["tinycnn.xml", "tinycnn.bin"]
    assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=tmp_path, capture_output=True).returncode == 0
    assert "sha256 matches" in read_model_file(tmp_path / "tinycnn.xml").integrity.detail


def test_bench_measures_the_ir_beside_onnx(digits_int8, digits_checkpoint, tmp_path):
    report = tmp_path / "bench.json"
    result = edgecnn("bench", digits_int8["openvino"], digits_int8["onnx"], "--reference", digits_checkpoint,
                     "--dataset", "digits", "--eval-samples", "100", "--runs", "20", "--json", report)
    assert result.returncode == 0, result.stderr
    rows = {row["format"]: row for row in json.loads(report.read_text())["results"]}
    assert rows["openvino"]["backend"] == "openvino" and rows["openvino"]["precision"] == "int8"
    assert rows["openvino"]["agreement"] >= 0.95 and rows["openvino"]["median_ms"] > 0


def test_missing_extra_is_one_line(digits_checkpoint, tmp_path):
    result = edgecnn_without("openvino", "export", digits_checkpoint, "--format", "openvino", "--out", tmp_path)
    assert_clean_error(result, "pip install 'edgecnn[openvino]'")
    assert not list(tmp_path.iterdir())


TELEMETRY = """
import sys
from pathlib import Path
import openvino as ov, openvino_telemetry
if sys.argv[1] == "edgecnn":
    from edgecnn.export.openvino import convert
    convert(Path(sys.argv[2]), Path(sys.argv[3]))
else:
    ov.convert_model(sys.argv[2])
print(openvino_telemetry.Telemetry().consent)
"""


def test_the_converter_sends_no_usage_statistics_unless_opted_in(digits_int8, tmp_path):
    # A home without OpenVINO's consent file and no CI variables: the converter alone assumes consent.
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")} | {"HOME": str(tmp_path)}

    def consent(who: str) -> str:
        done = subprocess.run([sys.executable, "-c", TELEMETRY, who, digits_int8["onnx"], tmp_path / "m.xml"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    assert consent("openvino") == "True" and consent("edgecnn") == "False"


def test_openvino_runs_the_onnx_file_too(digits_int8, tmp_path):
    assert load(digits_int8["onnx"], backend="openvino").backend.name == "openvino"
    report = tmp_path / "bench.json"
    result = edgecnn("bench", digits_int8["onnx"], "--backend", "onnxruntime", "--backend", "openvino",
                     "--dataset", "digits", "--eval-samples", "50", "--runs", "10", "--json", report)
    assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())["results"]
    assert [(r["format"], r["backend"]) for r in rows] == [("onnx", "onnxruntime"), ("onnx", "openvino")]
    assert rows[1]["accuracy"] > 0.9 and abs(rows[0]["accuracy"] - rows[1]["accuracy"]) <= 0.04  # 2 of 50 images
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--backend", "openvino"),
                       "none of the backends given (openvino) runs .tflite files")
