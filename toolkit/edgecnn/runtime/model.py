"""What every task's model shares: the file's engine, how a camera frame becomes its input, its labels.

Preprocessing is one resize (see `edgecnn.preprocess.resize_image`) and one lookup table: normalisation and,
for int8 inputs, quantization are folded into a per-channel 256-entry table, so a frame costs one resize and
one gather instead of float arithmetic per pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError, printable
from edgecnn.preprocess import Preprocess, resize_image
from edgecnn.runtime.backends import Backend, TensorSpec
from edgecnn.runtime.integrity import Integrity
from edgecnn.runtime.modelfile import ModelFile


def input_lut(pre: Preprocess, spec: TensorSpec) -> np.ndarray:
    """(3, 256) table: uint8 pixel value of channel c → the model's input value (normalised, maybe quantized)."""
    if np.issubdtype(spec.dtype, np.integer) and not spec.quantized:
        if spec.dtype != np.uint8 or any(pre.mean) or any(s != 1 for s in pre.std):
            raise EdgeCNNError(f"model input is {spec.dtype.name} without quantization parameters: only raw uint8 "
                               "pixels (no mean/std) can be fed to it")
        return np.tile(np.arange(256, dtype=np.uint8), (3, 1))  # raw pixels, as such models expect
    values = np.arange(256, dtype=np.float64) / 255.0
    table = (values[None, :] - np.asarray(pre.mean)[:, None]) / np.asarray(pre.std)[:, None]
    if spec.quantized:
        info = np.iinfo(spec.dtype)
        table = np.clip(np.round(table / spec.scale + spec.zero_point), info.min, info.max)
    return table.astype(spec.dtype)


def opencv_lut(table: np.ndarray) -> np.ndarray:
    """The (3, 256) table as cv2.LUT takes it: 256×1×3 (int8 viewed as uint8, which every OpenCV build takes)."""
    lut = np.ascontiguousarray(table.T.reshape(256, 1, 3))
    return lut.view(np.uint8) if lut.dtype == np.int8 else lut


def layout_from_shape(shape: tuple[int, ...]) -> str:
    if len(shape) != 4:
        raise EdgeCNNError(f"model input has shape {shape}: edgecnn's models take a 4-D image tensor")
    if shape[3] == 3:
        return "NHWC"
    if shape[1] == 3:
        return "NCHW"
    raise EdgeCNNError(f"model input shape {shape} has no 3-channel axis; give --layout and --img-size")


class InputPipeline:
    """A frame → one input sample in the model's layout and dtype: one resize, one table lookup."""

    def __init__(self, pre: Preprocess, spec: TensorSpec):
        self.pre, self.spec, self.layout = pre, spec, pre.layout
        self._lut = opencv_lut(input_lut(pre, spec))

    def prepare(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        """One H×W×3 (or H×W) uint8 frame → one input sample."""
        check_frame(frame)
        return self.prepare_resized(resize_image(frame, self.pre, color=color))

    def prepare_resized(self, image: np.ndarray) -> np.ndarray:
        """An image as `resize_image` returns it (cropped, at the input size, in the model's colour order) → one
        input sample: only the table lookup and the layout are left."""
        x = cv2.LUT(image, self._lut).view(self.spec.dtype)
        return np.ascontiguousarray(x.transpose(2, 0, 1)) if self.layout == "NCHW" else x


def check_frame(frame: np.ndarray) -> None:
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        raise EdgeCNNError(f"expected an H×W×3 or H×W uint8 image, got {frame.dtype} array of shape {frame.shape}")


def model_preprocess(
    model_file: ModelFile,
    input_shape: tuple[int, ...],
    img_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    color: str | None = None,
) -> Preprocess:
    """How to feed the model: its embedded card, overridden by the arguments; the layout and size from the
    input shape for files without a card (mean 0, std 1: pixels scaled to [0, 1]). A card or an `img_size` that
    contradicts a fixed input size is refused with both numbers."""
    card = model_file.card or {}
    card_pre = card.get("preprocess", {})
    layout = card.get("input", {}).get("layout") or layout_from_shape(input_shape)
    spatial = input_shape[1:3] if layout == "NHWC" else input_shape[2:4]
    fixed = spatial[0] if len(spatial) == 2 and spatial[0] > 0 else None
    if card_pre.get("img_size") is not None and fixed and card_pre["img_size"] != fixed:
        raise EdgeCNNError(f"{model_file.path}: its card says input size {printable(card_pre['img_size'])} but the "
                           f"input tensor is {fixed}×{fixed}: the card does not belong to these weights")
    if img_size is not None and fixed and img_size != fixed:
        raise EdgeCNNError(f"img_size {img_size} does not fit {model_file.path.name}, whose input is fixed at "
                           f"{fixed}×{fixed}")
    size = img_size or card_pre.get("img_size") or fixed
    if not size:
        raise EdgeCNNError(f"{model_file.path}: input size is not fixed in the model and not given; pass img_size")
    return Preprocess.from_dict({
        "img_size": size, "mean": mean or card_pre.get("mean") or (0.0, 0.0, 0.0),
        "std": std or card_pre.get("std") or (1.0, 1.0, 1.0), "color": color or card_pre.get("color", "RGB"),
        "crop": card_pre.get("crop"), "layout": layout, "interpolation": card_pre.get("interpolation", "area"),
    })


def resolve_labels(model_file: ModelFile, classes: int, labels: list[str] | None) -> list[str]:
    """The given labels, else the card's, else class indices; a count that does not match the model's classes
    is refused: silently falling back to indices would print numbers where the user expects names."""
    given = labels if labels is not None else (model_file.card or {}).get("labels")
    if not given:
        return [str(i) for i in range(classes)]
    if len(given) != classes:
        whose = "the labels given" if labels is not None else f"the card of {model_file.path.name}"
        raise EdgeCNNError(f"{whose} name {len(given)} classes but the model outputs {classes}")
    return [str(label) for label in given]


class Model:
    """A model file in its engine, fed camera frames: what `Classifier` and `Detector` have in common."""

    task = ""

    def __init__(self, backend: Backend, pre: Preprocess, labels: list[str]):
        self.backend, self.pre, self.layout, self.labels = backend, pre, pre.layout, labels
        self.notes: list[str] = []  # e.g. that the file carries no edgecnn content hash
        self.integrity: Integrity | None = None  # what `load` checked; None with verify=False
        self.inputs = InputPipeline(pre, backend.input)
        self.batch_fixed = backend.input.shape[0] == 1

    def prepare(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        return self.inputs.prepare(frame, color)

    def raw_outputs(self, samples: np.ndarray) -> list[np.ndarray]:
        """Prepared samples (N, ...) → every output of the model as float32 (N, ...), int8 ones dequantized."""
        if self.batch_fixed and len(samples) > 1:
            runs = [self.backend.run(samples[i : i + 1]) for i in range(len(samples))]
            raw = [np.concatenate(parts) for parts in zip(*runs, strict=True)]
        else:
            raw = self.backend.run(samples)
        return [spec.dequantize(r) for spec, r in zip(self.backend.outputs, raw, strict=True)]
