"""Checking an artefact instead of trusting it: load it in its runtime, list its ops, compare it with the
float PyTorch model on held-out images."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecnn.detection.metrics import Boxes, box_agreement, decode_boxes, detection_map, shown_boxes
from edgecnn.export.sources import Images
from edgecnn.preprocess import Preprocess
from edgecnn.runtime import Detector, load
from edgecnn.runtime.decoding import EVAL_MIN_SCORE
from edgecnn.runtime.modelfile import ModelFile, read_model_file


@dataclass
class FloatReference:
    """The float PyTorch model's raw outputs on the verification images, computed once per export; for a
    detector also its decoded boxes and the ground truth they are scored against."""

    outputs: list[np.ndarray]  # a classifier's (N, classes) logits; a detector's (N, A, 4) and (N, A, columns)
    labels: np.ndarray | None
    task: str = "classify"
    boxes: list[Boxes] | None = None  # a detector's boxes (score ≥ EVAL_MIN_SCORE), input pixels
    truth: list[Boxes] | None = None

    @property
    def logits(self) -> np.ndarray:
        """Class logits, one row per answer: per image for a classifier, per anchor for a detector (what range
        search compares)."""
        return class_logits(self.outputs)

    @property
    def accuracy(self) -> float | None:
        return _accuracy(self.logits, self.labels) if self.task == "classify" else None

    @property
    def map50(self) -> float | None:
        if self.boxes is None or self.truth is None:
            return None
        return detection_map(self.truth, self.boxes, self.logits.shape[-1] - 1)["map50"]

    def head(self, n: int) -> FloatReference:
        return FloatReference([o[:n] for o in self.outputs], None if self.labels is None else self.labels[:n],
                              self.task, None if self.boxes is None else self.boxes[:n],
                              None if self.truth is None else self.truth[:n])


def class_logits(outputs: list[np.ndarray]) -> np.ndarray:
    """(rows, classes): a classifier's one output, or a detector's score output with one row per anchor."""
    return outputs[-1].reshape(-1, outputs[-1].shape[-1])


def float_reference(model: nn.Module, pre: Preprocess, images: Images, batch: int = 128,
                    task: str = "classify") -> FloatReference:
    from edgecnn.loader import normalise_batch

    model.eval()
    batches = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = normalise_batch(torch.from_numpy(images.pixels[start : start + batch]), pre, torch.device("cpu"))
            out = model(x)
            batches.append([o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))])
    outputs = [np.concatenate(parts) for parts in zip(*batches, strict=True)]
    if task == "classify":
        return FloatReference(outputs, images.labels)
    return FloatReference(outputs, None, task, decode_boxes(model.decoding(EVAL_MIN_SCORE), *outputs, pre.img_size),
                          images.boxes)


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())


CONFIDENT = 0.5  # float top-1 probability above which a prediction is a clear answer worth keeping


@dataclass
class Verification:
    model_file: ModelFile
    accuracy: float | None
    agreement: float  # a classifier's top-1 agreement, a detector's box agreement, with the float model
    max_logit_error: float
    samples: int
    # Agreement on the images the float model is sure about (top-1 probability ≥ CONFIDENT): on ambiguous
    # photos two near-equal classes may swap places without either answer being wrong.
    confident_agreement: float | None
    confident_samples: int
    map50: float | None = None  # a detector's mAP@0.5 against the ground truth
    float_boxes: int | None = None  # a detector's: boxes the float model shows (score ≥ the card's threshold)
    # Signal-to-noise ratio (dB) of the logits against the float model's: steadier than agreement on few images.
    logit_sqnr_db: float | None = None

    @property
    def float_ops(self) -> list[str]:
        return [f"{op.name} ({op.where})" for op in self.model_file.float_ops]


def artefact_outputs(path: Path, images: Images, threads: int | None = None) -> list[np.ndarray]:
    """The artefact's float outputs on `images`, which are already cropped and resized as the float reference saw
    them (running them through the full `prepare` would crop them a second time); a detector's in the order
    (box encodings, scores) whatever order the file keeps them in."""
    model = load(path, threads=threads)
    samples = np.stack([model.inputs.prepare_resized(p) for p in images.pixels])
    outputs = model.raw_outputs(samples)
    if isinstance(model, Detector):
        anchors = len(model.decoding.coding.anchors)
        encodings, scores = model.box_and_score(outputs)
        return [encodings.reshape(len(samples), anchors, 4), scores.reshape(len(samples), anchors, -1)]
    return outputs


def compare(logits: np.ndarray, reference: FloatReference) -> tuple[float | None, float, float]:
    """(accuracy, top-1 agreement with the float model, max |logit difference|)."""
    agreement = float((logits.argmax(1) == reference.logits.argmax(1)).mean())
    return _accuracy(logits, reference.labels), agreement, float(np.abs(logits - reference.logits).max())


def confident(reference: FloatReference) -> np.ndarray:
    logits = reference.logits - reference.logits.max(1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.max(1) >= CONFIDENT


def verify(path: Path, images: Images, reference: FloatReference) -> Verification:
    """Run `path` in its runtime on `images` and compare with the float model's predictions."""
    model_file = read_model_file(path)
    outputs = artefact_outputs(path, images)
    if reference.task == "detect":
        return _verify_detector(path, model_file, outputs, images, reference)
    logits = outputs[0]
    accuracy, agreement, max_error = compare(logits, reference)
    sure = confident(reference)
    same = logits.argmax(1) == reference.logits.argmax(1)
    sure_agreement = float(same[sure].mean()) if sure.any() else None
    return Verification(model_file, accuracy, agreement, max_error, len(images), sure_agreement, int(sure.sum()),
                        logit_sqnr_db=logit_sqnr_db(logits, reference.logits))


def logit_sqnr_db(logits: np.ndarray, reference: np.ndarray) -> float:
    """10·log10(Σ reference² / Σ (logits − reference)²), capped at 200 dB for identical outputs."""
    noise = float(((logits.astype(np.float64) - reference) ** 2).sum())
    return round(min(200.0, 10 * np.log10(max(float((reference.astype(np.float64) ** 2).sum()), 1e-30)
                                          / max(noise, 1e-30))), 2)


def _verify_detector(path: Path, model_file: ModelFile, outputs: list[np.ndarray], images: Images,
                     reference: FloatReference) -> Verification:
    """mAP@0.5 of the artefact's boxes against the ground truth, and its box agreement: mAP@0.5 against the float
    model's boxes (those a camera would show, score ≥ the card's threshold)."""
    detector = load(path)
    decoding = replace(detector.decoding, min_score=EVAL_MIN_SCORE)
    found = decode_boxes(decoding, *outputs, detector.pre.img_size)
    classes = len(detector.labels)
    agreement = box_agreement(reference.boxes, found, classes, detector.min_score)
    map50 = detection_map(images.boxes, found, classes)["map50"]
    max_error = float(np.abs(class_logits(outputs) - reference.logits).max())
    return Verification(model_file, None, agreement, max_error, len(images), None, 0, map50,
                        float_boxes=shown_boxes(reference.boxes, detector.min_score))


def interleaved_latency_ms(paths: dict[str, Path], rounds: int = 5, runs: int = 20) -> dict[str, float]:
    """Single-thread median latency of each model, measured in turns (A B A B ...) so that a drifting machine
    biases none of them. A quick figure to compare variants; `edgecnn bench` is the full measurement."""
    backends = {name: load(path, threads=1).backend for name, path in paths.items()}
    samples = {name: np.zeros((1, *b.input.shape[1:]), b.input.dtype) for name, b in backends.items()}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            backend.run(samples[name])  # warm caches after the other model ran
            for _ in range(runs):
                start = time.perf_counter()
                backend.run(samples[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}
