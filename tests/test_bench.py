"""`edgecnn bench`: real artefacts measured by real runtimes in child processes, locally and over a real sshd."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import assert_clean_error, edgecnn, edgecnn_in_process
from edgecnn.bench.adb import parse_benchmark_model
from edgecnn.bench.harness import held_out_images
from edgecnn.bench.machine import cpu_description, decode_throttled, machine_info
from edgecnn.runtime import load
from edgecnn.runtime.formats import installed_formats
from edgecnn.runtime.modelfile import read_model_file
from onnx import TensorProto, helper

ROW_FIELDS = ("model", "backend", "device", "threads", "median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "runs",
              "size_bytes", "peak_rss_mb", "load_ms", "first_ms", "throughput_ips")


def bench_json(*args, path):
    result = edgecnn_in_process("bench", *args, "--json", path)
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(path.read_text())


def test_rows_have_the_statistics(digits_int8, tmp_path):
    report = bench_json(digits_int8["tflite"], digits_int8["onnx"], "--threads", "1", "--runs", "50", "--warmup", "5",
                        path=tmp_path / "r.json")
    machine = report["machine"]
    assert machine["cores"] == os.cpu_count() and machine["cpu"] and machine["arch"] == os.uname().machine
    rows = report["results"]
    assert [(r["model"], r["backend"]) for r in rows] == [("tinycnn_int8.tflite", "litert"),
                                                         ("tinycnn_int8.onnx", "onnxruntime")]
    for row, path in zip(rows, (digits_int8["tflite"], digits_int8["onnx"]), strict=True):
        assert all(row[f] is not None for f in ROW_FIELDS), row
        assert row["status"] == "ok" and row["device"] == "cpu" and row["threads"] == 1
        assert row["runs"] >= 50
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["size_bytes"] == path.stat().st_size
        assert 10 < row["peak_rss_mb"] < 2000  # the runner's own peak, not the parent's
        assert row["precision"] == "int8"
        assert row["macs"] > 1e6  # recorded in the card at export
    assert sum(r["fastest"] for r in rows) == 1


def test_accuracy_and_agreement_on_held_out_data(digits_checkpoint, digits_int8, tmp_path):
    report = bench_json(digits_checkpoint, digits_int8["tflite"], digits_int8["onnx"], "--dataset", "digits",
                        "--eval-samples", "150", "--runs", "10", path=tmp_path / "r.json")
    rows = {r["format"]: r for r in report["results"]}
    assert rows["pytorch"]["agreement"] == 1.0  # the reference: the checkpoint
    held_out = held_out_images("digits", 150)
    for fmt in ("tflite", "onnx"):
        classifier = load(digits_int8[fmt])
        predicted = np.array([classifier.predict(image, color="RGB").index for image in held_out.images])
        assert rows[fmt]["accuracy"] == pytest.approx(float((predicted == held_out.labels).mean()))
        assert rows[fmt]["agreement"] >= 0.95
    assert rows["pytorch"]["accuracy"] > 0.85


def test_threads_and_rounds(digits_int8, tmp_path):
    report = bench_json(digits_int8["tflite"], "--threads", "1", "--threads", "2", "--rounds", "2", "--runs", "10",
                        path=tmp_path / "r.json")
    rows = report["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    assert all(r["runs"] == 20 for r in rows)  # two rounds of 10 pooled


@pytest.mark.slow  # four formats exported float and int8: about 60 s on one worker
def test_all_formats_table_plot_and_markdown(digits_checkpoint, tmp_path):
    # One range method (as `export --calibration`): auto's four candidates per format are tested on export.
    report = bench_json(digits_checkpoint, "--all-formats", "--calibration", "minmax", "--export-dir", tmp_path / "x",
                        "--runs", "20", "--eval-samples", "150", "--plot", tmp_path / "p.png", "--md",
                        tmp_path / "t.md", "--csv", tmp_path / "t.csv", path=tmp_path / "r.json")
    rows = report["results"]
    kinds = sorted((r["format"], r["precision"]) for r in rows)
    # every format whose package is installed (`make test` installs them all), float and int8, beside PyTorch
    exported = [(f, p) for f in installed_formats() for p in ("float32", "int8")]
    assert kinds == sorted([("pytorch", "float32"), *exported])
    assert all(r["status"] == "ok" and r["accuracy"] > 0.85 and r["agreement"] >= 0.95 for r in rows)
    int8_files = [Path(r["path"]) for r in rows if r["precision"] == "int8"]
    assert all("activation ranges: minmax" in read_model_file(f).card["quantization"]["scheme"] for f in int8_files)
    assert sum(r["fastest"] for r in rows) == 1
    fastest = next(r for r in rows if r["fastest"])
    assert fastest["median_ms"] == min(r["median_ms"] for r in rows)
    image = cv2.imread(str(tmp_path / "p.png"))
    assert image is not None and image.shape[0] > 200
    table = (tmp_path / "t.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "**" in table  # header + a row each; the fastest in bold
    assert len((tmp_path / "t.csv").read_text().splitlines()) == len(rows) + 1


def test_onnx_profile_names_the_slow_ops(digits_int8, tmp_path):
    report = bench_json(digits_int8["onnx"], "--profile", "--runs", "10", path=tmp_path / "r.json")
    profile = report["results"][0]["profile"]
    ops = [p["op"] for p in profile]
    assert "QLinearConv" in ops and "Conv" not in ops  # onnxruntime's fused int8 kernels, not float Conv
    assert all(p["mean_ms"] > 0 for p in profile) and profile == sorted(profile, key=lambda p: -p["mean_ms"])
    assert 0.5 < sum(p["share"] for p in profile) <= 1.0001


def _dynamic_onnx(path, dims):
    """A third-party-style classifier without an edgecnn card: conv → global pool → linear."""
    rng = np.random.default_rng(0)
    weights = [
        helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(216).astype(np.float32)),
        helper.make_tensor("fc", TensorProto.FLOAT, [8, 5], rng.standard_normal(40).astype(np.float32)),
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "third_party", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 5])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_third_party_files_and_dynamic_shapes(tmp_path):
    free = _dynamic_onnx(tmp_path / "free.onnx", ["N", 3, "H", "W"])
    assert_clean_error(edgecnn("bench", free), "dynamic dimensions", "--input-shape")
    report = bench_json(free, "--input-shape", "1,3,64,64", "--runs", "10", path=tmp_path / "a.json")
    assert report["results"][0]["status"] == "ok" and report["results"][0]["precision"] == "float32"
    batch_only = _dynamic_onnx(tmp_path / "batch.onnx", ["N", 3, 32, 32])
    row = bench_json(batch_only, "--batch-size", "4", "--runs", "10", path=tmp_path / "b.json")["results"][0]
    assert row["batch"] == 4 and row["throughput_ips"] == pytest.approx(4000 / row["median_ms"])
    fixed = _dynamic_onnx(tmp_path / "fixed.onnx", [1, 3, 32, 32])
    assert_clean_error(edgecnn("bench", fixed, "--batch-size", "4"), "batch is fixed at 1")


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_corrupt_files_never_crash_it(digits_int8, tmp_path, suffix):
    data = digits_int8[suffix[1:]].read_bytes()
    bad = {
        "truncated": data[: len(data) // 3],
        "random": np.random.default_rng(1).bytes(len(data)),
        "magic": b"XXXX" * 2 + data[8:] if suffix == ".tflite" else b"\xff" * 16 + data[16:],
        "empty": b"",
    }
    for name, content in bad.items():
        (tmp_path / f"{name}{suffix}").write_bytes(content)
        assert_clean_error(edgecnn("bench", tmp_path / f"{name}{suffix}", "--runs", "5"), f"{name}{suffix}")


def test_bad_bench_input(digits_int8, digits_checkpoint, tmp_path):
    (tmp_path / "model.pb").write_bytes(b"x")
    assert_clean_error(edgecnn("bench", tmp_path / "model.pb"), "unknown model type")
    assert_clean_error(edgecnn("bench", tmp_path / "missing.tflite"), "not found")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--threads", "0"), "--threads")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "gpu0"), "unknown --device")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "cuda"), "--device cuda")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "adb"), "--benchmark-model")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "adb", "--benchmark-model",
                               digits_int8["tflite"]), "adb is not installed")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--all-formats"), "one edgecnn checkpoint")
    assert_clean_error(edgecnn("bench", digits_checkpoint, "--all-formats", "--device", "ssh://pi@localhost"),
                       "--device cpu")
    assert_clean_error(edgecnn("bench", digits_checkpoint, "--all-formats", "--calibration", "mean", "--export-dir",
                               tmp_path / "x"), "unknown calibration 'mean'", "minmax")
    assert not (tmp_path / "x").exists()  # refused before anything was exported


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="a GPU is present: the CUDA run itself is tested instead")
def test_cuda_without_a_gpu_is_a_clear_error(digits_checkpoint):
    assert_clean_error(edgecnn("bench", digits_checkpoint, "--device", "cuda"), "no CUDA GPU")


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU on this machine: GPU reference runs are not testable here")
def test_cuda_reference_rows(digits_checkpoint, tmp_path):
    rows = bench_json(digits_checkpoint, "--device", "cuda", "--runs", "20", path=tmp_path / "r.json")["results"]
    assert {(r["precision"], r["batch"]) for r in rows} == {(p, b) for p in ("float32", "float16") for b in (1, 256)}
    assert all(r["status"] == "ok" for r in rows)
    assert {r["backend"] for r in rows if r["batch"] == 1} == {"torch-cuda-graph"}


# --- machine header and benchmark_model output ----------------------------------------------------------------

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08

Hardware\t: BCM2835
Revision\t: c03112
Model\t\t: Raspberry Pi 4 Model B Rev 1.2
"""


def test_cpu_description_of_arm_and_x86():
    pi4 = cpu_description(PI4_CPUINFO)
    assert pi4 == {"cpu": "2× Cortex-A72", "isa": ["neon"]}
    pi5 = cpu_description(PI4_CPUINFO.replace("0xd08", "0xd0b").replace("cpuid", "cpuid asimdhp asimddp"))
    assert pi5["cpu"] == "2× Cortex-A76" and pi5["isa"] == ["neon", "dotprod", "fp16"]
    x86 = cpu_description("processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 fma avx512_vnni amx_int8\n")
    assert x86 == {"cpu": "Intel Xeon", "isa": ["avx2", "fma", "avx512_vnni", "amx_int8"]}
    assert decode_throttled("throttled=0x50005") == {
        "raw": "0x50005", "flags": ["under-voltage now", "throttled now", "under-voltage has occurred",
                                    "throttling has occurred"]}
    assert decode_throttled("throttled=0x0")["flags"] == []


def test_machine_info_leaves_out_what_this_host_lacks():
    info = machine_info()
    assert info["cores"] == os.cpu_count() and info["packages"]["numpy"] == np.__version__
    if not os.path.exists("/proc/device-tree/model"):
        assert "board" not in info
    if not os.path.exists("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"):
        assert "governor" not in info


# TensorFlow Lite's benchmark_model log, in the format its docs and source print (tabs between table columns).
BENCHMARK_MODEL_LOG = (Path(__file__).parent / "data" / "benchmark_model.log").read_text()


def test_benchmark_model_log_is_parsed():
    result = parse_benchmark_model(BENCHMARK_MODEL_LOG)
    stats = result["stats"]
    assert stats["runs"] == 70 and stats["mean_ms"] == pytest.approx(14.2909) and stats["min_ms"] == 13.728
    assert stats["median_ms"] is None and stats["std_ms"] == 0.452  # this version prints no percentiles
    assert result["load_ms"] == pytest.approx(52.687) and result["first_ms"] == pytest.approx(19.105)
    assert result["peak_rss_mb"] == pytest.approx(13.1797)
    assert [p["op"] for p in result["profile"]] == ["Convolution (NHWC, QC8) IGEMM", "QUANTIZE"]
    assert result["profile"][0]["mean_ms"] == 0.407 and result["profile"][0]["share"] == pytest.approx(0.02658)
    newer = BENCHMARK_MODEL_LOG.replace("avg=14290.9 std=452", "avg=14290.9 std=452 p5=13801 median=14120 p95=15010")
    assert parse_benchmark_model(newer)["stats"]["median_ms"] == 14.12
    failed = parse_benchmark_model("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")
    assert not failed["ok"] and "Could not open" in failed["error"]
