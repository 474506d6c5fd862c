"""The int8 scheme follows the CPU the model will run on.

onnxruntime's x86 int8 kernels multiply uint8 activations by int8 weights; without VNNI (AVX2 only) they add
pairs of products in saturating 16-bit registers, so 8-bit weights can overflow: such CPUs want 7-bit weights
(`reduce_range`), or 8-bit weights stored as uint8 (zero point 128), which onnxruntime multiplies in its u8 × u8
kernels: operands widened to 16 bits, no saturation, more instructions per product (the x86-avx2-u8u8 scheme).
VNNI/AMX accumulate in 32 bits and take full 8-bit weights. Arm cores run int8 × int8 (S8S8), with the dot-product
instructions where present. XNNPACK (TFLite) has no such overflow on any of them.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgecnn.errors import EdgeCNNError, closest


@dataclass(frozen=True)
class Scheme:
    target: str
    onnx_activations: str  # "uint8" | "int8"
    reduce_range: bool  # 7-bit ONNX weights
    reason: str
    onnx_weights: str = "int8"  # "uint8": the .onnx stores its int8 weights + 128 (zero point 128), same values

    def to_dict(self) -> dict:
        return asdict(self)


SCHEMES = {
    "x86-avx2": Scheme("x86-avx2", "uint8", True, "x86 without VNNI: 16-bit accumulation of u8×s8 pairs "
                       "saturates with 8-bit weights, so ONNX weights use 7 bits (reduce_range)"),
    "x86-avx2-u8u8": Scheme("x86-avx2-u8u8", "uint8", False, "x86 without VNNI, exact 8-bit: the .onnx stores "
                            "8-bit weights as uint8, which onnxruntime multiplies in its u8×u8 kernels (no 16-bit "
                            "saturation; slower than u8×s8); OpenVINO keeps 7-bit int8 weights", "uint8"),
    "x86-vnni": Scheme("x86-vnni", "uint8", False, "x86 with VNNI/AMX: 32-bit int8 dot products, full 8-bit "
                       "weights"),
    "arm": Scheme("arm", "int8", False, "Arm: int8 activations and weights (S8S8), dot-product kernels where "
                  "the core has them"),
}
ALIASES = {"x86": "x86-avx2", "pi4": "arm", "pi5": "arm", "arm64": "arm", "aarch64": "arm"}
NAMES = ("host", *SCHEMES, *ALIASES)


def host_target(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """This machine's scheme name, from its ISA flags."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64") or machine.startswith("arm"):
        return "arm"
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return "x86-vnni" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "x86-avx2"


def scheme_for(target: str) -> Scheme:
    """The scheme for a target name (`host` reads this CPU)."""
    name = target.strip().lower()
    if name == "host":
        scheme = SCHEMES[host_target()]
        return replace(scheme, reason=f"this machine ({scheme.target}): {scheme.reason}")
    name = ALIASES.get(name, name)
    if name not in SCHEMES:
        raise EdgeCNNError(f"unknown target '{target}'{closest(target, NAMES)}; choose from {', '.join(NAMES)}")
    return SCHEMES[name]
