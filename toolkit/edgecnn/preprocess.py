"""Image preprocessing shared by training and the torch-free runtime.

Training and deployment must see pixels prepared the same way, so both call `resize_image`: an optional
centre crop, then one resize to a square (INTER_AREA weights when shrinking). Normalisation happens later, on the
batch (training) or folded into a lookup table (int8 runtime). This module imports numpy and OpenCV only.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("area", "linear")
MAX_IMG_SIZE = 4096  # input side in pixels; beyond it a single image takes ~200 MB as float
# Above this many output phases on an axis, the per-phase OpenCV calls of `area_resize` cost about as much as
# OpenCV's own INTER_AREA loop or more (measured, to 224: 300 px, 56 phases, 0.72 against 0.73 ms; 226 px, 112
# phases, 1.5 against 0.8 ms; 231 px, 32 phases, 0.36 against 0.59 ms).
MAX_AREA_PHASES = 32


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: everything a deployment needs to feed it a camera frame."""

    img_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    # Fraction of the shorter side kept by a centre crop before resizing (torchvision's 224/256 = 0.875);
    # None stretches the whole frame to the square.
    crop: float | None = None
    layout: str = field(default="NCHW")
    # How a frame shrinks to the input: "area" (the antialiased resize edgecnn trains with) or "linear"
    # (bilinear, as TensorFlow's detection and MediaPipe models were trained: their scores drop with another).
    interpolation: str = "area"

    def __post_init__(self) -> None:
        # Every entry point (recipes, checkpoints, model cards, runtime.load, watch --mean/--std) builds one of
        # these: values that would give NaN scores or allocate gigabytes stop here, with one message.
        if not (isinstance(self.img_size, int) and 1 <= self.img_size <= MAX_IMG_SIZE):
            raise EdgeCNNError(f"input size {self.img_size!r}: expected a whole number from 1 to {MAX_IMG_SIZE}")
        for name, values, low in (("mean", self.mean, -math.inf), ("std", self.std, 0.0)):
            if len(values) != 3 or not all(math.isfinite(v) and v > low for v in values):
                rule = "three positive numbers" if name == "std" else "three finite numbers"
                raise EdgeCNNError(f"{name} {list(values)}: expected {rule} (r, g, b)")
        if self.crop is not None and not 0 < self.crop <= 1:
            raise EdgeCNNError(f"crop {self.crop}: expected a fraction of the shorter side in (0, 1]")
        if self.interpolation not in INTERPOLATIONS:
            raise EdgeCNNError(f"interpolation {self.interpolation!r}: expected {' or '.join(INTERPOLATIONS)}")
        if self.color not in ("RGB", "BGR") or self.layout not in ("NCHW", "NHWC"):
            raise EdgeCNNError(f"colour {self.color!r} / layout {self.layout!r}: expected RGB or BGR / NCHW or NHWC")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        try:
            return cls(
                img_size=int(d["img_size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                color=str(d.get("color", "RGB")),
                crop=None if d.get("crop") is None else float(d["crop"]),
                layout=str(d.get("layout", "NCHW")),
                interpolation=str(d.get("interpolation", "area")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeCNNError(f"preprocessing record is malformed ({type(e).__name__}: {e})") from None


def resize_image(image: np.ndarray, pre: Preprocess, color: str = "RGB") -> np.ndarray:
    """An H×W or H×W×C uint8 image in `color` order → img_size × img_size × 3 uint8 in `pre.color` order.

    Downscaling uses INTER_AREA weights, the closest OpenCV match to the antialiased resize ImageNet weights were
    trained with: cheaper kernels (bilinear, bilinear then a 2× box, a blur then bilinear, a Gaussian pyramid)
    flipped the top-1 of pretrained MobileNetV2 on real photos in our tests. `area_resize` computes those weights
    in ~0.4 ms for a 640×480 camera frame where OpenCV's INTER_AREA takes 0.8–1 ms."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if pre.crop is not None:
        h, w = image.shape[:2]
        side = max(1, round(min(h, w) * pre.crop))
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    h, w = image.shape[:2]
    size = pre.img_size
    if (h, w) != (size, size):
        if h > size and w > size and pre.interpolation == "area":
            image = area_resize(image, size, size)
        else:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if color != pre.color:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # swaps the first and third channel either way
    return np.ascontiguousarray(image)


@lru_cache(maxsize=64)
def _area_phases(n: int, m: int) -> tuple[int, int, tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]]:
    """INTER_AREA weights for n → m pixels (n > m) as one period: every p = n/g source pixels give q = m/g
    outputs (g = gcd), output r of each period reading the source pixels `taps` with `weights` (summing to 1)."""
    g = math.gcd(n, m)
    p, q = n // g, m // g
    phases = []
    for r in range(q):
        # Output r covers [r·p/q, (r+1)·p/q) source pixels; in units of 1/q the bounds are integers, so the
        # overlaps (and weights) are exact.
        lo, hi = r * p, (r + 1) * p
        taps = tuple(j for j in range(lo // q, -(-hi // q)) if min(hi, (j + 1) * q) > max(lo, j * q))
        phases.append((taps, tuple((min(hi, (j + 1) * q) - max(lo, j * q)) / p for j in taps)))
    return p, q, tuple(phases)


_scratch = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """A per-thread array reused from call to call: a fresh megabyte each frame costs page faults (measured: 2.6
    against 0.6 ms on a busy 2-core VM)."""
    buffers = _scratch.__dict__.setdefault("buffers", {})
    array = buffers.get(name)
    if array is None or array.shape != shape or array.dtype != dtype:
        array = buffers[name] = np.empty(shape, dtype)
    return array


def _shrink_rows(src: np.ndarray, n: int, m: int, out: np.ndarray) -> np.ndarray:
    """The n rows of `src` (uint8 or float32) area-averaged into the m float32 rows of `out`, unrounded."""
    p, q, phases = _area_phases(n, m)
    for r, (taps, weights) in enumerate(phases):
        # Output rows r, r+q, … come from source rows taps[i], taps[i]+p, …: row-strided views, which OpenCV
        # takes without a copy. Two taps at once, then each further tap as a running weighted mean.
        dst, total = out[r::q], weights[0] + weights[1]
        cv2.addWeighted(src[taps[0] :: p], weights[0] / total, src[taps[1] :: p], weights[1] / total, 0, dst=dst,
                        dtype=cv2.CV_32F)
        for tap, weight in zip(taps[2:], weights[2:], strict=True):
            total += weight
            cv2.accumulateWeighted(src[tap::p], dst, weight / total)
    return out


def area_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink an H×W or H×W×C uint8 image (H > height, W > width) with OpenCV's INTER_AREA weights, faster.

    For ratios that are not whole numbers OpenCV's INTER_AREA runs a scalar loop (~1 ms for the 420×420 centre
    crop of a 640×480 frame). Area weights repeat with a short period (420 → 224: every 15 source rows give 8
    output rows with the same weights), so each output phase is a weighted sum of 2–4 row-strided views: a few
    vectorised OpenCV calls per phase, rows then columns (through a transpose), float32 in between, one rounding at
    the end. Values match INTER_AREA's except where the exact average is a .5 tie, which float rounding breaks
    either way (±1 on ~0.1 % of pixels for 640×480 → 224×224; never for 420 → 224, whose averages are k/225)."""
    h, w = image.shape[:2]
    phases = [height // math.gcd(h, height), width // math.gcd(w, width)]
    if phases == [1, 1] or max(phases) > MAX_AREA_PHASES:
        # Whole-number ratios have OpenCV's vectorised path; many phases make too many calls.
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    rest = image.shape[2:]
    rows = _shrink_rows(image, h, height, _buffer("rows", (height, w, *rest), np.float32))
    columns = cv2.transpose(rows, dst=_buffer("columns", (w, height, *rest), np.float32))
    small = _shrink_rows(columns, w, width, _buffer("small", (width, height, *rest), np.float32))
    # The result is the caller's to keep, so only it is newly allocated.
    return cv2.transpose(cv2.convertScaleAbs(small, dst=_buffer("rounded", (width, height, *rest), np.uint8)))
