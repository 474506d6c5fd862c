"""Where an export starts: a trained edgecnn checkpoint, or a pretrained torchvision classifier's weights;
and the images it calibrates and verifies on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.data import recorded_dataset
from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess, resize_image

if TYPE_CHECKING:
    from torch import nn

IMAGENET_CLASSES = 1000
TORCHVISION_CROP = 224 / 256  # torchvision's Resize(256) + CenterCrop(224)


@dataclass
class ExportSource:
    model: nn.Module
    pre: Preprocess
    labels: list[str]
    name: str  # registry model name
    width: float = 1.0
    dataset: str | None = None  # labelled data the model was trained on: held-out split for verification
    recipe_hash: str | None = None
    origin: str = ""  # checkpoint or weights file it came from
    qat: Any = None  # edgecnn.export.qat.QATResult when quantization-aware training ran
    macs: int | None = None  # multiply-accumulates per image, recorded in the card for `edgecnn bench`
    task: str = "classify"  # or "detect": an SSDLite whose outputs are (box encodings, class logits)
    val_dataset: str | None = None  # a detector's held-out box dataset (coco:PATH or yolo:PATH)
    equalization: dict | None = None  # what edgecnn.quantize.equalize did to `model` before int8
    adaround: dict | None = None  # what edgecnn.quantize.adaround did to `model` before int8
    searched: Any = None  # edgecnn.quantize.search.SearchedRanges of `model` (--calibration search)


@dataclass
class Images:
    """Images already at the model's input size (N×S×S×3 uint8 RGB), with labels when known."""

    pixels: np.ndarray
    labels: np.ndarray | None
    description: str
    boxes: list | None = None  # detection ground truth: one edgecnn.detection.metrics.Boxes per image, input pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def head(self, n: int | None) -> Images:
        if n is None or n >= len(self):
            return self
        return Images(self.pixels[:n], None if self.labels is None else self.labels[:n], self.description,
                      None if self.boxes is None else self.boxes[:n])


def source_from_checkpoint(path: str | Path) -> ExportSource:
    from edgecnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return ExportSource(ckpt.build(), ckpt.preprocess, ckpt.labels, ckpt.model, ckpt.width, ckpt.dataset,
                        ckpt.recipe_hash, str(path), task=ckpt.task, val_dataset=ckpt.val_dataset)


def source_from_weights(
    name: str, weights: str, labels: list[str] | None, img_size: int | None, width: float = 1.0
) -> ExportSource:
    """A torchvision-style classifier from a state_dict: ImageNet normalisation and torchvision's centre crop;
    as many classes as the weights' head has (1000 for ImageNet weights)."""
    from edgecnn.models.build import build_model, head_classes, load_pretrained, weights_state_dict

    state = weights_state_dict(name, weights)
    num_classes = head_classes(name, state) or IMAGENET_CLASSES
    if labels and len(labels) != num_classes:
        raise EdgeCNNError(f"--labels has {len(labels)} names but weights {weights} predict {num_classes} classes")
    model = build_model(name, num_classes, width)
    load_pretrained(model, name, weights, state)
    pre = Preprocess(img_size=img_size or 224, crop=TORCHVISION_CROP)
    return ExportSource(model.eval(), pre, labels or [str(i) for i in range(num_classes)], name, width,
                        origin=str(weights))


def dataset_images(spec: str, split: str, pre: Preprocess, limit: int | None, seed: int = 0) -> Images:
    """Up to `limit` images of a dataset split (a seeded random subset), resized for the model."""
    from edgecnn.data import load_dataset, sample_indices

    images = load_dataset(spec).split(split)
    order = sample_indices(len(images), limit, seed)
    pixels = np.stack([resize_image(images.image(int(i)), pre) for i in order])
    return Images(pixels, images.labels[order], f"{spec} {split} split")


def box_dataset_images(spec: str, pre: Preprocess, limit: int | None, seed: int = 0) -> Images:
    """Up to `limit` images of a COCO or YOLO dataset (a seeded random subset, in dataset order), resized for the
    model, with their boxes in the input's pixels."""
    from edgecnn.data import sample_indices
    from edgecnn.detection.data import load_box_dataset
    from edgecnn.detection.metrics import Boxes

    data = load_box_dataset(spec)
    order = np.sort(sample_indices(len(data), limit, seed))
    records = [data.images[int(i)] for i in order]
    pixels = np.stack([resize_image(r.image(), pre) for r in records])
    boxes = [Boxes(r.boxes * pre.img_size, r.labels) for r in records]
    return Images(pixels, None, f"{spec} ({len(records)} of {len(data)} images)", boxes)


def folder_images(folder: str | Path, pre: Preprocess) -> Images:
    """Every image under `folder` (recursively, sorted), unlabelled."""
    from edgecnn.data import image_files, read_image

    folder = Path(folder)
    paths = image_files(folder, "calibration folder")
    return Images(np.stack([resize_image(read_image(p), pre) for p in paths]), None, f"images in {folder}")


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """The video's frames (BGR) as OpenCV decodes them, until it stops."""
    import cv2

    from edgecnn.runtime.capture import opencv_path

    capture = cv2.VideoCapture(opencv_path(path, "--calib-video"))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def _video_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise EdgeCNNError(f"--calib-video {path}: no such file")
    return path


def _undecodable(path: Path) -> EdgeCNNError:
    return EdgeCNNError(f"--calib-video {path}: no frame could be read (not a video OpenCV can decode?)")


def calibration_video(path: str | Path) -> None:
    """Refuse a --calib-video that is missing or has no frame OpenCV can decode: checked before the model loads,
    so a wrong file fails at once."""
    path = _video_file(path)
    with closing(_video_frames(path)) as frames:
        if next(frames, None) is None:
            raise _undecodable(path)


def check_calibration_sources(calib_images, calib_video) -> None:
    """Calibration images from one place: a folder or a video, not both."""
    if calib_images and calib_video:
        raise EdgeCNNError("give --calib-images or --calib-video, not both")


def video_frames(path: str | Path, every: int, pre: Preprocess, limit: int) -> Images:
    """Every `every`-th frame of a video (up to `limit`), resized for the model: a camera's own footage."""
    path = _video_file(path)
    frames = []
    with closing(_video_frames(path)) as decoded:
        for index, frame in enumerate(decoded):
            if index % every == 0:
                frames.append(resize_image(frame, pre, color="BGR"))
                if len(frames) == limit:
                    break
    if not frames:
        raise _undecodable(path)
    return Images(np.stack(frames), None, f"1 in {every} frames of {path.name}")


def split_video(frames: Images) -> tuple[Images, Images]:
    """Calibrate on the first half of the footage and verify on the second: neighbouring frames are near
    copies, so an alternating split would verify on the calibration images in all but name."""
    half = len(frames) // 2
    if half == 0:
        raise EdgeCNNError(f"{frames.description}: need at least 2 frames to calibrate and verify")
    return (Images(frames.pixels[:half], None, frames.description + " (first half)"),
            Images(frames.pixels[half:], None, frames.description + " (second half, not used to calibrate)"))


def split_unlabelled(images: Images, calib_samples: int) -> tuple[Images, Images]:
    """Calibrate on one part of an unlabelled folder and verify on the rest, so agreement is not measured on
    the very images the ranges were fitted to."""
    if len(images) < 2:
        raise EdgeCNNError(f"{images.description}: need at least 2 images (one to calibrate, one to verify)")
    calib = Images(images.pixels[::2][:calib_samples], None, images.description + " (even-numbered)")
    held_out = Images(images.pixels[1::2], None, images.description + " (odd-numbered, not used to calibrate)")
    return calib, held_out


def export_images(source: ExportSource, dataset: str | None, calib_images, calib_video, calib_every: int,
                  calib_samples: int, eval_samples: int | None, int8: bool) -> tuple[Images, Images]:
    """(calibration, verification) for an export: the dataset's held-out split verifies when there is one (the
    checkpoint's, or --dataset), calibrating on its training split, a folder or a video; without one, a folder or a
    video is split in two."""
    check_calibration_sources(calib_images, calib_video)
    if source.task == "detect":
        return _detector_images(source, dataset, calib_images, calib_video, calib_every, calib_samples,
                                eval_samples)
    data = dataset or source.dataset
    frames = video_frames(calib_video, calib_every, source.pre, 2 * calib_samples) if calib_video else None
    if data:
        with recorded_dataset(dataset):
            verification = dataset_images(data, "test", source.pre, eval_samples)
        if frames is not None:
            calibration = frames
        elif calib_images:
            calibration = folder_images(calib_images, source.pre)
        else:
            calibration = dataset_images(data, "train", source.pre, calib_samples)
        return calibration.head(calib_samples), verification
    if calib_images:
        calibration, verification = split_unlabelled(folder_images(calib_images, source.pre), calib_samples)
    elif frames is not None:
        calibration, verification = split_video(frames)
    else:
        need = "--int8 needs calibration images" if int8 else "no images to verify the export on"
        raise EdgeCNNError(f"{need}: give --dataset NAME, --calib-images DIR or --calib-video FILE")
    return calibration.head(calib_samples), verification.head(eval_samples)


def _detector_images(source: ExportSource, dataset: str | None, calib_images, calib_video, calib_every: int,
                     calib_samples: int, eval_samples: int | None) -> tuple[Images, Images]:
    """A detector verifies on labelled boxes only (mAP needs them): the held-out dataset it was trained with, or
    --dataset; it calibrates on its training images, a folder or a video."""
    held_out = dataset or source.val_dataset
    if not held_out:
        raise EdgeCNNError("a detector is verified on a labelled box dataset: give --dataset coco:PATH or yolo:PATH")
    verification = box_dataset_images(held_out, source.pre, eval_samples)
    if calib_video:
        calibration = video_frames(calib_video, calib_every, source.pre, calib_samples)
    elif calib_images:
        calibration = folder_images(calib_images, source.pre)
    elif source.dataset:
        calibration = box_dataset_images(source.dataset, source.pre, calib_samples)
    else:
        raise EdgeCNNError("--int8 needs calibration images: give --calib-images DIR or --calib-video FILE")
    return calibration.head(calib_samples), verification
