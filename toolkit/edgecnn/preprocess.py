"""Image preprocessing shared by training and the torch-free runtime.

Training and deployment must see pixels prepared the same way, so both call `resize_image`: an optional
centre crop, then one OpenCV resize to a square. Normalisation happens later, on the batch (training) or
folded into a lookup table (int8 runtime). This module imports numpy and OpenCV only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            img_size=int(d["img_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            color=str(d.get("color", "RGB")),
            crop=None if d.get("crop") is None else float(d["crop"]),
            layout=str(d.get("layout", "NCHW")),
        )


def resize_image(image: np.ndarray, pre: Preprocess, color: str = "RGB") -> np.ndarray:
    """An H×W or H×W×C uint8 image in `color` order → img_size × img_size × 3 uint8 in `pre.color` order.

    Downscaling uses INTER_AREA, the closest OpenCV match to the antialiased resize ImageNet weights were trained
    with: cheaper ones (bilinear, or a Gaussian pyramid) flipped the top-1 of pretrained MobileNetV2 on real
    photos in our tests. It costs ~1 ms for a 640×480 camera frame, which `edgecnn watch` spends on its capture
    thread, beside inference."""
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
        interpolation = cv2.INTER_AREA if h > size and w > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if color != pre.color:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # swaps the first and third channel either way
    return np.ascontiguousarray(image)
