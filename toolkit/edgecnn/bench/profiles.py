"""Device profiles: what a CPU could do at most, and what a published measurement shows it does.

Peak rate = cores × clock × MACs per cycle per core (the core's SIMD throughput for fp32 multiply-accumulate and
for int8 dot products). A measured row's efficiency is its MACs ÷ (peak × latency): how much of the machine the
runtime used. For a device that is not attached, an estimate is MACs ÷ (peak × a calibrated efficiency), where
the efficiency comes from a published measurement on that core — an estimate, labelled as one, never a
measurement. MACs are not latency: depthwise layers, memory traffic and float ops left in an int8 model make
real efficiency vary by model, so trust an estimate to within about ×2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MOBILENET_V2_MACS = 300_774_272  # torchvision mobilenet_v2 at 224 px, conv + linear MACs as edgecnn counts them


@dataclass(frozen=True)
class Core:
    """Per-core multiply-accumulates per cycle, fp32 and int8, and where those figures come from."""

    name: str
    fp32_per_cycle: int
    int8_per_cycle: int
    source: str


CORES = {
    # The in-order little cores have a 64-bit-wide ASIMD datapath: a 128-bit instruction issues every other cycle.
    "Cortex-A53": Core("Cortex-A53", 2, 4, "128-bit FMLA every other cycle; int8 by widening SMLAL, no dot product"),
    "Cortex-A55": Core("Cortex-A55", 2, 8, "128-bit FMLA and SDOT (16 MACs) every other cycle"),
    "Cortex-A72": Core("Cortex-A72", 4, 8, "one 128-bit FMLA per cycle; int8 by widening SMLAL in two pipes, "
                       "no dot product (Cortex-A72 Software Optimization Guide)"),
    "Cortex-A75": Core("Cortex-A75", 8, 32, "two 128-bit FMLA pipes; two SDOT pipes × 16 MACs"),
    "Cortex-A76": Core("Cortex-A76", 8, 32, "two 128-bit FMLA pipes; two SDOT pipes × 16 MACs "
                       "(Cortex-A76 Software Optimization Guide)"),
}


@dataclass(frozen=True)
class Calibration:
    """A published latency of a model with known MACs on a known device: the share of that device's peak it
    reached is the efficiency estimates use."""

    model: str
    macs: int
    threads: int
    fp32_ms: float | None
    int8_ms: float | None
    device: str
    core: Core
    cores: int
    ghz: float
    source: str

    def efficiency(self, precision: str) -> float | None:
        ms = self.int8_ms if precision == "int8" else self.fp32_ms
        if ms is None:
            return None
        per_cycle = self.core.int8_per_cycle if precision == "int8" else self.core.fp32_per_cycle
        peak = per_cycle * self.ghz * 1e9 * min(self.threads, self.cores)
        return self.macs / (peak * ms / 1000)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    title: str
    core: Core
    cores: int
    ghz: float
    calibration: Calibration | None = None

    def peak_macs_per_s(self, precision: str, threads: int) -> float:
        per_cycle = self.core.int8_per_cycle if precision == "int8" else self.core.fp32_per_cycle
        return per_cycle * self.ghz * 1e9 * min(max(threads, 1), self.cores)

    def estimate_ms(self, macs: int, precision: str, threads: int) -> float | None:
        """fp32: MACs ÷ (peak × the calibration's fp32 efficiency). int8 on the calibration's own core: the
        same with its int8 efficiency; on another core (another int8 instruction set): the fp32 estimate ÷ the
        int8 speed-up measured on the calibration device. Mixed models (float ops left) count as fp32."""
        c = self.calibration
        if c is None or not macs:
            return None
        fp32_ms = macs / (self.peak_macs_per_s("float32", threads) * c.efficiency("float32")) * 1000
        if precision != "int8":
            return fp32_ms
        if c.core is self.core and c.int8_ms:
            return macs / (self.peak_macs_per_s("int8", threads) * c.efficiency("int8")) * 1000
        return fp32_ms / self.int8_speedup

    @property
    def speedup_calibration(self) -> Calibration:
        """Where the int8-over-fp32 speed-up comes from: this profile's calibration if it has int8, else the Pi 4's."""
        return self.calibration if self.calibration and self.calibration.int8_ms else XNNPACK_PI4

    @property
    def int8_speedup(self) -> float:
        c = self.speedup_calibration
        return c.fp32_ms / c.int8_ms

    def describe(self) -> str:
        return (f"{self.title}: {self.core.fp32_per_cycle} fp32 / {self.core.int8_per_cycle} int8 MACs per cycle "
                f"per core ({self.core.source})")

    def basis(self) -> str:
        c = self.calibration
        if c is None:
            return "no published measurement: no estimate"
        times = ", ".join(f"{k} {v:g} ms" for k, v in (("fp32", c.fp32_ms), ("int8", c.int8_ms)) if v)
        text = f"{c.model} {times}, {c.threads} thread(s) on {c.device} ({c.source})"
        if c.core is not self.core:
            text += (f"; {c.core.name}'s fp32 efficiency applied to the {self.core.name}, int8 = fp32 ÷ "
                     f"{self.int8_speedup:.2f} (the int8 speed-up measured on the {self.speedup_calibration.device})")
        return text


XNNPACK_PI4 = Calibration("MobileNetV2 1.0 224", MOBILENET_V2_MACS, 4, 46.0, 17.0, "Raspberry Pi 4",
                          CORES["Cortex-A72"], 4, 1.5,
                          "XNNPACK README, RPi 4 (BCM2711, ARM64), end2end-bench, Feb 2022")
XNNPACK_PIXEL3A = Calibration("MobileNetV2 1.0 224", MOBILENET_V2_MACS, 1, 55.0, None, "Pixel 3a",
                              CORES["Cortex-A75"], 2, 2.0,
                              "XNNPACK README, Pixel 3a (Snapdragon 670, Cortex-A75 @ 2.0 GHz), end2end_bench, "
                              "Mar 2020")

PROFILES = {
    "pi4": DeviceProfile("pi4", "Raspberry Pi 4 Model B (BCM2711, 4× Cortex-A72 @ 1.5 GHz)", CORES["Cortex-A72"], 4,
                         1.5, XNNPACK_PI4),
    "pi5": DeviceProfile("pi5", "Raspberry Pi 5 (BCM2712, 4× Cortex-A76 @ 2.4 GHz)", CORES["Cortex-A76"], 4, 2.4,
                         XNNPACK_PI4),
    "phone-a76": DeviceProfile("phone-a76", "phone big cores (4× Cortex-A76 @ 2.4 GHz, Snapdragon 855 class)",
                               CORES["Cortex-A76"], 4, 2.4, XNNPACK_PIXEL3A),
    "phone-a55": DeviceProfile("phone-a55", "phone little cores (4× Cortex-A55 @ 1.8 GHz, same phone)",
                               CORES["Cortex-A55"], 4, 1.8, XNNPACK_PI4),
}


def x86_core(isa: list[str]) -> Core:
    """Nominal rates from the ISA: 2 FMA units × vector width for fp32; VNNI/AVX2 dot products for int8.
    Server cores with two 512-bit FMA units do twice the fp32 figure; Zen 4 runs AVX-512 as two halves."""
    flags = set(isa)
    fp32 = 16 if "fma" in flags or "avx2" in flags else 8
    if "amx_int8" in flags:
        int8, how = 1024, "AMX tiles"
    elif "avx512_vnni" in flags:
        int8, how = 64, "AVX-512 VNNI (VPDPBUSD, as two 256-bit halves on Zen 4)"
    elif "avx_vnni" in flags:
        int8, how = 64, "AVX-VNNI"
    elif "avx2" in flags:
        int8, how = 32, "AVX2 VPMADDUBSW"
    else:
        int8, how = 16, "SSE"
    return Core("x86", fp32, int8, f"nominal from the ISA flags: fp32 {fp32}/cycle (2 FMA units), int8 {how}")


def measured_profile(machine: dict) -> DeviceProfile | None:
    """A profile for the machine a row was measured on (its core, core count and clock), for efficiency;
    None when the clock or the core type is unknown."""
    cpu, isa = machine.get("cpu", ""), machine.get("isa", [])
    mhz = machine.get("max_mhz") or machine.get("mhz")
    cores = min(machine.get("physical_cores") or 10**6, machine.get("cores_usable") or machine.get("cores") or 1)
    if machine.get("arch") in ("x86_64", "AMD64"):
        core = x86_core(isa)
    else:
        names = re.findall(r"Cortex-A\d+", cpu)
        core = CORES.get(max(set(names), key=names.count)) if names else None
    if core is None or not mhz:
        return None
    clock = "max clock" if machine.get("max_mhz") else "current clock from /proc/cpuinfo (turbo or idle skew eff.)"
    return DeviceProfile("measured", f"{cpu}, {cores} cores @ {float(mhz) / 1000:.2f} GHz ({clock})", core,
                         int(cores), float(mhz) / 1000)


def efficiency(macs: int | None, median_ms: float | None, precision: str, threads: int,
               profile: DeviceProfile | None) -> float | None:
    if not macs or not median_ms or profile is None:
        return None
    kind = "int8" if precision == "int8" else "float32"
    return macs / (profile.peak_macs_per_s(kind, threads) * median_ms / 1000)


def parse_profiles(text: str) -> list[DeviceProfile]:
    from edgecnn.errors import EdgeCNNError, closest

    names = list(PROFILES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in PROFILES:
            raise EdgeCNNError(f"--estimate: unknown device profile '{name}'{closest(name, PROFILES)}; "
                               f"profiles: {', '.join(PROFILES)} or all")
    return [PROFILES[n] for n in names]
