"""The held-out images every benchmarked model answers, and how its answers are scored: a classifier by top-1
accuracy and agreement with the reference model, a detector by mAP@0.5 against the dataset's boxes and box
agreement (mAP@0.5 against the reference model's boxes)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.backends import TensorSpec
from edgecnn.runtime.decoding import EVAL_MIN_SCORE, Decoding, to_frame
from edgecnn.runtime.modelfile import ModelFile, read_model_file


@dataclass
class HeldOut:
    """The held-out images (RGB, as stored) every model is compared on, resized per model from the same originals;
    a box dataset's ground truth in each image's pixels."""

    images: list[np.ndarray]
    labels: np.ndarray | None
    description: str
    boxes: list | None = None  # one edgecnn.detection.metrics.Boxes per image

    @property
    def task(self) -> str:
        return "detect" if self.boxes is not None else "classify"


def is_box_dataset(spec: str) -> bool:
    from edgecnn.detection.data import FORMATS

    return spec.partition(":")[0] in FORMATS


def held_out_images(dataset: str, limit: int) -> HeldOut:
    """A seeded subset of the dataset's test split (the split the checkpoint never trained on); of a box dataset
    (coco:PATH, yolo:PATH: a held-out set as a whole), its images in dataset order."""
    from edgecnn.data import load_dataset, sample_indices

    if is_box_dataset(dataset):
        return _box_held_out(dataset, limit)
    test = load_dataset(dataset).split("test")
    order = sample_indices(len(test), limit)
    images = [test.image(int(i)) for i in order]
    return HeldOut(images, test.labels[order], f"{dataset} test split, {len(order)} images")


def _box_held_out(spec: str, limit: int) -> HeldOut:
    from edgecnn.data import sample_indices
    from edgecnn.detection.data import load_box_dataset
    from edgecnn.detection.metrics import Boxes

    data = load_box_dataset(spec)
    records = [data.images[int(i)] for i in np.sort(sample_indices(len(data), limit))]
    images = [r.image() for r in records]
    truth = [Boxes(r.boxes * np.array([i.shape[1], i.shape[0]] * 2, np.float32), r.labels)
             for r, i in zip(records, images, strict=True)]
    return HeldOut(images, None, f"{spec}, {len(images)} of {len(data)} images", truth)


def folder_held_out(folder: Path, limit: int) -> HeldOut:
    """The first `limit` images under `folder` (sorted), unlabelled."""
    from edgecnn.data import image_files, read_image

    paths = image_files(folder, "--images")[:limit]
    return HeldOut([read_image(p) for p in paths], None, f"{len(paths)} images in {folder}")


def check_tasks(variants, held_out: HeldOut) -> None:
    """A box dataset scores detectors only, a classification dataset classifiers only (a folder of images: both)."""
    for v in variants:
        if held_out.task == "detect" and v.task != "detect":
            raise EdgeCNNError(f"{v.model}: a classifier is not scored on a box dataset; bench it with a "
                               "classification --dataset or --images")
        if held_out.task == "classify" and held_out.labels is not None and v.task == "detect":
            raise EdgeCNNError(f"{v.model}: a detector is scored on boxes: give --dataset coco:PATH or yolo:PATH "
                               "(or --images for box agreement alone)")


def prepare_inputs(variant, held_out: HeldOut, folder: Path) -> Path:
    """The held-out images as this model's input tensors (its size, layout, normalisation, quantization; a
    letterboxing detector's grey bars)."""
    from edgecnn.preprocess import resize_image
    from edgecnn.runtime.detector import letterbox
    from edgecnn.runtime.model import InputPipeline, model_preprocess

    target = folder / f"inputs-{abs(hash((str(variant.model), variant.input_shape)))}.npy"
    if target.exists():
        return target
    if variant.format == "pytorch":
        samples = np.stack([resize_image(image, variant.pre) for image in held_out.images])
    else:
        model_file = read_model_file(variant.model, verify=False)  # verified by file_variants
        pipeline = InputPipeline(model_preprocess(model_file, variant.input_shape),
                                 input_spec(model_file, variant.input_shape))
        fitted = held_out.images if _fit(variant) == "stretch" else [letterbox(i)[0] for i in held_out.images]
        samples = np.stack([pipeline.prepare(image, color="RGB") for image in fitted])
    np.save(target, samples)
    return target


def input_spec(model_file: ModelFile, shape: tuple[int, ...]) -> TensorSpec:
    t = model_file.inputs[0]
    if t["dtype"] not in ("float32", "float16", "uint8", "int8"):
        raise EdgeCNNError(f"{model_file.path}: input '{t['name']}' is {t['dtype']}, not an image tensor")
    return TensorSpec(t["name"], shape, np.dtype(t["dtype"]), t.get("scale", 0.0), t.get("zero_point", 0))


def _fit(variant) -> str:
    return (variant.detect or {}).get("fit", "stretch")


def score(rows, variants, outputs: dict[int, list[np.ndarray]], held_out: HeldOut,
          references: dict[int, list[np.ndarray]], reference_variants: dict[int, object]) -> None:
    """Score each row that ran on the held-out images against the dataset and against its reference outputs (the
    float model's; under emulation, the same file's on this x86 host)."""
    boxes = {}
    for i, row in enumerate(rows):
        out = outputs.get(i)
        if out is None:
            continue
        ref = references.get(i)
        if variants[i].task == "detect":
            _score_detector(row, variants[i], out, held_out, ref, reference_variants.get(i), boxes)
        else:
            _score_classifier(row, out[0], held_out.labels, None if ref is None else ref[0])


def _score_classifier(row, out: np.ndarray, labels: np.ndarray | None, ref: np.ndarray | None) -> None:
    if labels is not None and out.shape[1] > labels.max():
        row.accuracy = float((out.argmax(1) == labels).mean())
    if ref is not None and ref.shape == out.shape:
        row.agreement = float((out.argmax(1) == ref.argmax(1)).mean())
        row.max_abs_diff = float(np.abs(out - ref).max())


def _score_detector(row, variant, out: list[np.ndarray], held_out: HeldOut, ref: list[np.ndarray] | None,
                    ref_variant, cache: dict) -> None:
    from edgecnn.detection.metrics import box_agreement, detection_map

    found = frame_boxes(variant, out, held_out.images)
    classes = out[1].shape[-1] - int(variant.detect["background"])
    if held_out.boxes is not None:
        row.map50 = detection_map(held_out.boxes, found, classes)["map50"]
    if ref is not None and ref_variant is not None and ref_variant.task == "detect":
        key = id(ref_variant)
        if key not in cache:
            cache[key] = frame_boxes(ref_variant, ref, held_out.images)
        row.box_agreement = box_agreement(cache[key], found, classes, float(ref_variant.detect["min_score"]))


def frame_boxes(variant, outputs: list[np.ndarray], images: list[np.ndarray]) -> list:
    """Each image's boxes (score ≥ EVAL_MIN_SCORE: mAP runs through the low ones) in the image's own pixels,
    from a detector's (box encodings, class scores) outputs."""
    from edgecnn.detection.metrics import Boxes

    decoding = replace(Decoding.from_card(variant.detect), min_score=EVAL_MIN_SCORE)
    found = []
    for encodings, scores, image in zip(*outputs, images, strict=True):
        boxes, confidence, labels = decoding(encodings, scores)
        found.append(Boxes(to_frame(boxes, image.shape, _fit(variant)), labels, confidence))
    return found
