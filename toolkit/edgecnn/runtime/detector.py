"""Object detection: a camera frame in, boxes out (torch-free).

A detector file holds the network up to its raw outputs (SSD style: a box encoding and class scores per anchor);
its model card holds the anchors, the box coding and the score function, so decoding and non-maximum suppression
run here (`edgecnn.runtime.decoding`), the same for every format and for third-party files `edgecnn adopt` sealed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess
from edgecnn.runtime.backends import Backend
from edgecnn.runtime.decoding import Decoding, find_box_and_score_outputs, to_frame
from edgecnn.runtime.model import Model, check_frame, resolve_labels
from edgecnn.runtime.modelfile import ModelFile

LETTERBOX_FILL = 114  # grey bars: the value YOLO-style letterboxing uses, not a colour objects have


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float
    label: str
    index: int  # class index into the labels


def letterbox(frame: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The frame centred on a square of grey bars, and where its top-left corner landed (x, y)."""
    h, w = frame.shape[:2]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    padded = cv2.copyMakeBorder(frame, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT,
                                value=(LETTERBOX_FILL,) * 3)
    return padded, left, top


class Detector(Model):
    task = "detect"

    def __init__(self, backend: Backend, pre: Preprocess, labels: list[str], decoding: Decoding, fit: str,
                 outputs: tuple[int, int]):
        """`outputs`: the indices of the box and score outputs (`find_box_and_score_outputs`)."""
        super().__init__(backend, pre, labels)
        self.decoding, self.fit = decoding, fit
        self._boxes, self._scores = outputs
        columns = backend.outputs[self._scores].shape[-1]
        if len(labels) != columns - int(decoding.background):
            raise EdgeCNNError(f"{len(labels)} labels for {columns} score columns"
                               + (" (the first is background)" if decoding.background else ""))

    @property
    def min_score(self) -> float:
        return self.decoding.min_score

    @min_score.setter
    def min_score(self, value: float) -> None:
        self.decoding.min_score = value

    @classmethod
    def from_file(cls, model_file: ModelFile, backend: Backend, pre: Preprocess,
                  labels: list[str] | None) -> Detector:
        settings = (model_file.card or {}).get("detect")
        if not settings:
            raise EdgeCNNError(f"{model_file.path}: no detection card (anchors, box coding); seal it with "
                               "`edgecnn adopt FILE --task detect --anchors ANCHORS.npy --out OUT`")
        if pre.crop is not None:
            raise EdgeCNNError(f"{model_file.path}: a detector sees the whole frame; its card asks for a centre crop")
        decoding = Decoding.from_card(settings)
        outputs = find_box_and_score_outputs(backend.outputs, settings["outputs"], len(decoding.coding.anchors))
        classes = backend.outputs[outputs[1]].shape[-1] - int(decoding.background)
        return cls(backend, pre, resolve_labels(model_file, classes, labels), decoding, settings["fit"], outputs)

    def prepare(self, frame: np.ndarray, color: str = "BGR") -> np.ndarray:
        if self.fit == "letterbox":
            check_frame(frame)  # before padding it
            frame = letterbox(frame)[0]
        return self.inputs.prepare(frame, color)

    def detect(self, frame: np.ndarray, color: str = "BGR") -> list[Detection]:
        """Every object in one H×W×3 uint8 frame (BGR as OpenCV gives it), best first."""
        return self.detect_prepared(self.prepare(frame, color), frame.shape[:2])

    def detect_batch(self, frames: list[np.ndarray], color: str = "BGR") -> list[list[Detection]]:
        if not len(frames):
            return []
        outputs = self.raw_outputs(np.stack([self.prepare(f, color) for f in frames]))
        return [self.decode([o[i] for o in outputs], f.shape[:2]) for i, f in enumerate(frames)]

    def detect_prepared(self, sample: np.ndarray, frame_shape: tuple[int, ...]) -> list[Detection]:
        """Detect in one sample from `prepare` (which may run elsewhere, e.g. on a capture thread); boxes are
        given in the pixels of the frame it was prepared from, of shape (height, width, ...)."""
        return self.decode([o[0] for o in self.raw_outputs(sample[None])], frame_shape)

    def box_and_score(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The box-encoding and class-score outputs among the model's outputs (files keep them in any order)."""
        return outputs[self._boxes], outputs[self._scores]

    def decode(self, outputs: list[np.ndarray], frame_shape: tuple[int, ...]) -> list[Detection]:
        """One sample's float outputs → detections in frame pixels, after the score threshold and per-class NMS."""
        boxes, scores, labels = self.decoding(*self.box_and_score(outputs))
        boxes = to_frame(boxes, frame_shape, self.fit)
        return [Detection(tuple(float(v) for v in box), float(score), self.labels[label], int(label))
                for box, score, label in zip(boxes, scores, labels, strict=True)]
