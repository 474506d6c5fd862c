"""The emulated Raspberry Pi OS userland (Debian bookworm arm64 under qemu-user) and the device profiles.

The userland is built once into edgecnn's cache (~/.cache/edgecnn/arm64-emu, reused by later runs: ~30 s to
build, ~10 s to check). Marked `arm64`: `pytest -m "not arm64"` skips it on machines without qemu-user.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import assert_clean_error, edgecnn, edgecnn_in_process
from edgecnn.bench.arm64_emu import QEMU_NAMES, default_folder, setup_userland
from edgecnn.bench.machine import machine_info
from edgecnn.bench.profiles import MOBILENET_V2_MACS, PROFILES, measured_profile
from edgecnn.bench.report import machine_line
from edgecnn.checkpoint import load_checkpoint
from filelock import FileLock

HAS_QEMU = any(shutil.which(name) for name in QEMU_NAMES)
needs_userland = pytest.mark.skipif(not HAS_QEMU or not shutil.which("mmdebstrap"),
                                    reason="qemu-user-static and mmdebstrap are not installed (apt-get install "
                                           "qemu-user-static mmdebstrap)")


pytestmark = pytest.mark.xdist_group("arm64_userland")  # one worker builds and uses it


@pytest.fixture(scope="module")
def userland():
    default_folder().parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{default_folder()}.lock"):  # pytest-xdist workers share one cached userland
        return setup_userland(default_folder(), log=lambda line: None)


@pytest.mark.arm64
@needs_userland
def test_runtime_runs_in_the_arm64_userland_without_torch(userland, digits_int8):
    """The Pi's view: `from edgecnn import runtime` and a prediction, torch nowhere, answers as on x86."""
    script = (
        "import json, platform, sys\n"
        "import numpy as np\n"
        "from edgecnn import runtime\n"
        "rng = np.random.default_rng(0)\n"
        "frame = (rng.random((48, 40, 3)) * 255).astype(np.uint8)\n"
        "out = {p: runtime.load(p, threads=1).predict(frame).label for p in sys.argv[1:]}\n"
        "try:\n"
        "    import torch  # noqa\n"
        "    out['torch'] = True\n"
        "except ImportError:\n"
        "    out['torch'] = False\n"
        "out['arch'] = platform.machine()\n"
        "print(json.dumps(out))\n"
    )
    paths = [str(digits_int8[fmt]) for fmt in ("tflite", "onnx", "openvino")]
    done = userland.python("cortex-a72", ["-c", script, *paths], timeout=300)
    assert done.returncode == 0, done.stderr
    guest = json.loads(done.stdout.strip().splitlines()[-1])
    assert guest.pop("arch") == "aarch64" and guest.pop("torch") is False
    # The CPU model really reaches the guest: the kernel-reported HWCAP (from qemu, not from the cpuinfo file)
    # has the dot product (ASIMDDP, bit 20) on the Pi 5's core and not on the Pi 4's.
    hwcap = "import ctypes; print(ctypes.CDLL(None).getauxval(16) >> 20 & 1)"
    for cpu, dotprod in (("cortex-a72", "0"), ("cortex-a76", "1")):
        assert userland.python(cpu, ["-c", hwcap]).stdout.strip() == dotprod
    here = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300)
    host = json.loads(here.stdout.strip().splitlines()[-1])
    assert guest == {p: host[p] for p in paths}


@pytest.mark.arm64
@pytest.mark.slow
@needs_userland
@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_int8_models_agree_with_x86_on_emulated_pi4_and_pi5(userland, digits_int8, cpu, tmp_path):
    report = tmp_path / "arm.json"
    formats = ["tflite", "onnx", "openvino"]  # OpenVINO's aarch64 wheel is in the userland; ExecuTorch needs torch
    # 200 of the 359 held-out digits: emulation costs ~0.05 s a digit for the three files (35.5 s for all 359, 22 s
    # for 100, on the Pi 4), and ≥ 99 % agreement on 200
    # still allows two answers to differ from x86's.
    result = edgecnn("bench", *(digits_int8[fmt] for fmt in formats), "--device", f"arm64-emu:{cpu}",
                     "--dataset", "digits", "--eval-samples", "200", "--json", report, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    data = json.loads(report.read_text())
    rows = data["results"]
    assert [r["format"] for r in rows] == formats
    for row in rows:
        assert row["status"] == "ok" and row["device"] == f"arm64-emu:{cpu}" and row["precision"] == "int8"
        assert row["agreement"] >= 0.99 and row["accuracy"] > 0.9, row
        assert row["median_ms"] is None and row["throughput_ips"] is None  # emulated time is never latency
        assert "emulated" in row["note"]
    machine = data["machine"]
    assert machine["arch"] == "aarch64" and cpu in machine["emulation"]
    expected_core = {"cortex-a72": "Cortex-A72", "cortex-a76": "Cortex-A76"}[cpu]
    assert expected_core in machine["cpu"]
    assert ("dotprod" in machine["isa"]) == (cpu == "cortex-a76")  # the Pi 5's int8 kernels are really picked
    assert "not latency" in result.stdout and "median" in result.stdout


@pytest.mark.arm64
@needs_userland
def test_onnx_exported_for_arm_runs_on_the_emulated_pi5(userland, digits_checkpoint, tmp_path):
    """`export --target arm` (signed int8 activations, no reduce_range: what Arm's kernels prefer)."""
    exported = edgecnn_in_process("export", digits_checkpoint, "--int8", "--calibration", "minmax", "--format", "onnx",
                                  "--target", "arm", "--out", tmp_path)
    assert exported.returncode == 0, exported.stderr
    report = tmp_path / "arm.json"
    result = edgecnn("bench", tmp_path / "tinycnn_int8.onnx", "--device", "arm64-emu:cortex-a76", "--dataset",
                     "digits", "--json", report, timeout=900)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(report.read_text())["results"]
    # What the export promises: on the Pi, the int8 file keeps the float model's accuracy on held-out digits.
    float_top1 = load_checkpoint(digits_checkpoint).metrics["top1"]
    assert row["status"] == "ok" and row["precision"] == "int8" and row["accuracy"] >= float_top1 - 0.02, row
    # The agreement is with the same file on this x86 host, where onnxruntime without VNNI runs S8S8 through
    # saturating 16-bit sums: the host's answers are the ones off (91.9 % the same as the Pi's on one AVX2-only
    # host, ≥ 95 % on another with another checkpoint). A preprocessing or layout slip on the Pi would give ~10 %.
    assert row["agreement"] >= 0.9, row


def test_bad_arm64_emu_inputs(digits_int8, digits_checkpoint, tmp_path):
    """No userland needed: these fail before anything is emulated."""
    assert_clean_error(edgecnn("bench", digits_checkpoint, "--device", "arm64-emu"), "runs on --device cpu or cuda",
                       "to run it on arm64-emu")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "arm64-emu:cortex-a53"),
                       "unknown CPU 'cortex-a53'", "cortex-a76")
    no_qemu = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # python and edgecnn, no qemu, no mmdebstrap
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "arm64-emu", env=no_qemu),
                       "qemu-user is not installed", "apt-get install qemu-user-static")
    assert_clean_error(edgecnn("device", "setup", "arm64-emu", env=no_qemu), "qemu-user is not installed")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--estimate", "pi6"), "unknown device profile 'pi6'",
                       "pi5")
    if not HAS_QEMU:
        return
    empty = {**os.environ, "EDGECNN_CACHE": str(tmp_path / "no-cache")}
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--device", "arm64-emu", env=empty),
                       "no arm64 userland", "edgecnn device setup arm64-emu")
    assert_clean_error(edgecnn("device", "setup", "arm64-emu", "--from-tarball", tmp_path / "missing.tar.gz"),
                       "missing.tar.gz", "no such file")
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    assert_clean_error(edgecnn("device", "setup", "arm64-emu", "--folder", tmp_path / "u", "--from-tarball", bogus),
                       "bogus.tar.gz", "cannot unpack")
    (tmp_path / "u" / "userland.json").write_text("{half a reco")  # a marker a power cut damaged
    assert_clean_error(edgecnn("device", "setup", "arm64-emu", "--folder", tmp_path / "u"),
                       "userland.json is unreadable", "--rebuild")


@pytest.mark.arm64
@pytest.mark.slow
@needs_userland
def test_userland_saved_and_restored_from_a_tarball(userland, tmp_path):
    saved = tmp_path / "userland.tar.gz"
    setup_userland(userland.folder, save_tarball=saved, log=lambda line: None)
    restored = setup_userland(tmp_path / "restored", from_tarball=saved, log=lambda line: None)
    assert restored.record == userland.record
    done = restored.python("cortex-a76", ["-c", "import edgecnn.runtime, onnxruntime; print('ok')"])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# --- device profiles and the Pi header -------------------------------------------------------------------------

def test_file_macs_are_per_image_whatever_the_batch(tmp_path):
    import numpy as np
    import onnx
    from edgecnn.bench.harness import file_macs
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    for batch in ("N", 4, 1):
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, 32, 32])], [weight])
        path = tmp_path / f"conv_{batch}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        assert file_macs(path) == 8 * 32 * 32 * 3 * 3 * 3


def test_profiles_reproduce_their_calibration_and_scale_with_macs():
    pi4 = PROFILES["pi4"]
    assert pi4.estimate_ms(MOBILENET_V2_MACS, "float32", 4) == pytest.approx(46.0)
    assert pi4.estimate_ms(MOBILENET_V2_MACS, "int8", 4) == pytest.approx(17.0)
    assert pi4.estimate_ms(MOBILENET_V2_MACS // 2, "int8", 4) == pytest.approx(8.5)
    assert pi4.estimate_ms(MOBILENET_V2_MACS, "int8", 1) == pytest.approx(68.0)  # one core of four
    assert pi4.estimate_ms(MOBILENET_V2_MACS, "mixed", 4) == pytest.approx(46.0)  # float ops left: fp32 rate
    pi5, a55 = PROFILES["pi5"], PROFILES["phone-a55"]
    assert pi5.estimate_ms(MOBILENET_V2_MACS, "float32", 4) < pi4.estimate_ms(MOBILENET_V2_MACS, "float32", 4)
    assert a55.estimate_ms(MOBILENET_V2_MACS, "float32", 4) > pi4.estimate_ms(MOBILENET_V2_MACS, "float32", 4)
    for profile in PROFILES.values():
        assert profile.calibration.source and "XNNPACK" in profile.basis()
        int8, fp32 = (profile.estimate_ms(MOBILENET_V2_MACS, p, 4) for p in ("int8", "float32"))
        assert 0 < int8 < fp32


def test_efficiency_of_measured_rows(digits_int8, tmp_path):
    report = tmp_path / "r.json"
    result = edgecnn("bench", digits_int8["tflite"], "--runs", "20", "--estimate", "pi4,pi5", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    measured, *estimates = data["results"]
    profile = measured_profile(data["machine"])
    if profile is not None:
        expected = measured["macs"] / (profile.peak_macs_per_s("int8", 1) * measured["median_ms"] / 1000)
        assert measured["efficiency"] == pytest.approx(expected)
        assert "eff.: peak = " in result.stdout
    assert [e["device"] for e in estimates] == ["pi4", "pi5"]
    for e in estimates:
        assert e["status"] == "estimated" and e["median_ms"] is None and e["efficiency"] is None
        assert e["estimated_ms"] == pytest.approx(PROFILES[e["device"]].estimate_ms(measured["macs"], "int8", 1))
    assert "est. pi4" in result.stdout and "≈" in result.stdout


def test_pi_header_fields_come_from_the_device(tmp_path):
    """A Pi 4's /proc and /sys files (as Raspberry Pi OS shows them) and its firmware tool's answer fill the
    header; this host, which has none of them, leaves them out."""
    root = tmp_path / "pi4"
    files = {
        "proc/cpuinfo": PROFILE_PI4_CPUINFO,
        "proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00",
        "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "ondemand\n",
        "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq": "1800000\n",
        "sys/class/thermal/thermal_zone0/temp": "51121\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "vcgencmd").write_text("#!/bin/sh\necho throttled=0x50000\n")  # the firmware's answer after a brown-out
    (tools / "vcgencmd").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{tools}:{path}"
    try:
        pi = machine_info(str(root))
    finally:
        os.environ["PATH"] = path
    assert pi["board"] == "Raspberry Pi 4 Model B Rev 1.4" and pi["cpu"] == "4× Cortex-A72"
    assert pi["governor"] == "ondemand" and pi["max_mhz"] == 1800 and pi["temperature_c"] == 51.1
    assert pi["throttled"]["flags"] == ["under-voltage has occurred", "throttling has occurred"]
    line = machine_line(pi, "ssh://pi@gate")
    for text in ("Raspberry Pi 4 Model B Rev 1.4", "governor ondemand", "temp 51.1°C", "throttled 0x50000"):
        assert text in line
    profile = measured_profile({**pi, "arch": "aarch64"})
    assert profile.core.name == "Cortex-A72" and profile.ghz == 1.8

    here = machine_info()
    for field, source in (("board", "/proc/device-tree/model"),
                          ("governor", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")):
        assert (field in here) == os.path.exists(source)
    assert ("throttled" in here) == bool(shutil.which("vcgencmd"))


PROFILE_PI4_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(4)
) + "Revision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
