"""What machine a measurement ran on: the facts that decide int8 and float speed, read from Linux itself.

Standard library only: this module travels to remote devices inside the runner bundle. A field the machine
does not have (a governor in a container, a Pi's throttling flags on a PC) is left out, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

# /proc/cpuinfo flags that decide int8/fp16 kernel speed.
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16", "sve": "sve",
                "bf16": "bf16"}
# Arm "CPU part" numbers (implementer 0x41) of the cores found in Pis and phones.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
    "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720",
    "0xd82": "Cortex-X4",
}
# `vcgencmd get_throttled` bits (Raspberry Pi firmware).
THROTTLE_BITS = {
    0: "under-voltage now", 1: "frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage has occurred", 17: "frequency capping has occurred", 18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
RUNTIMES = ("numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "torch")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def cpuinfo_fields(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(machine-wide fields, one dict per processor block) of a /proc/cpuinfo text."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip()] = value.strip()
    blocks = [b for b in blocks if b]
    processors = [b for b in blocks if "processor" in b]
    common = {k: v for b in blocks if "processor" not in b for k, v in b.items()}
    return common, processors


def cpu_description(text: str) -> dict:
    """CPU model and the ISA features that matter for int8 from a /proc/cpuinfo text (x86 or Arm)."""
    common, processors = cpuinfo_fields(text)
    first = processors[0] if processors else {}
    flags = set((first.get("flags") or first.get("Features") or "").split())
    if "model name" in first:
        model = first["model name"]
        isa = [f for f in X86_FEATURES if f in flags]
        described = {"cpu": model, "isa": isa}
        cores = {(p.get("physical id"), p.get("core id")) for p in processors if "core id" in p}
        if cores:  # hyper-threads share their core's SIMD units: peak rates count physical cores
            described["physical_cores"] = len(cores)
        if first.get("cpu MHz"):  # the current clock: the only one a VM shows (no cpufreq there)
            described["mhz"] = round(float(first["cpu MHz"]))
        return described
    else:
        parts = [ARM_PARTS.get(p.get("CPU part", ""), p.get("CPU part", "?")) for p in processors]
        counts = {name: parts.count(name) for name in dict.fromkeys(parts)}
        model = " + ".join(f"{n}× {name}" for name, n in counts.items()) or common.get("Hardware", "unknown")
        isa = [label for flag, label in ARM_FEATURES.items() if flag in flags]
    return {"cpu": model, "isa": isa}


def decode_throttled(value: str) -> dict:
    """'throttled=0x50005' → {'raw': '0x50005', 'flags': [...]}."""
    raw = value.strip().split("=")[-1]
    bits = int(raw, 16)
    return {"raw": raw, "flags": [text for bit, text in THROTTLE_BITS.items() if bits & (1 << bit)]}


def _throttled() -> dict | None:
    if not shutil.which("vcgencmd"):
        return None
    try:
        done = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
        return decode_throttled(done.stdout) if done.returncode == 0 and "=" in done.stdout else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _versions() -> dict:
    found = {}
    for name in RUNTIMES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def machine_info(root: str = "/") -> dict:
    """This machine's facts; `root` reads /proc and /sys from a copy of another machine's (tests)."""
    def read(path: str) -> str | None:
        return _read(os.path.join(root, path.lstrip("/")))

    info: dict = {"host": platform.node(), "arch": platform.machine(), "os": platform.platform(),
                  "python": platform.python_version()}
    info.update(cpu_description(read("/proc/cpuinfo") or ""))
    info["cores"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    optional = {
        "board": read("/proc/device-tree/model"),
        "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "max_mhz": read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
        "temperature_c": read("/sys/class/thermal/thermal_zone0/temp"),
        "throttled": _throttled(),
    }
    if optional["max_mhz"]:
        optional["max_mhz"] = int(optional["max_mhz"]) // 1000
    if optional["temperature_c"]:
        optional["temperature_c"] = round(int(optional["temperature_c"]) / 1000, 1)
    info.update({k: v for k, v in optional.items() if v})
    info["packages"] = _versions()
    return info
