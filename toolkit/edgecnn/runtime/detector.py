"""Object detection: a camera frame in, boxes out (torch-free).

A detector file holds the network up to its raw outputs (SSD style: a box encoding and class scores per anchor);
its model card holds the anchors, the box coding and the score function, so decoding and non-maximum suppression
run here in numpy and OpenCV, the same for every format and for third-party files `edgecnn adopt` sealed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess
from edgecnn.runtime.backends import Backend, TensorSpec
from edgecnn.runtime.model import Model, check_frame, resolve_labels
from edgecnn.runtime.modelfile import ModelFile

LETTERBOX_FILL = 114  # grey bars: the value YOLO-style letterboxing uses, not a colour objects have


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float
    label: str
    index: int  # class index into the labels


@dataclass
class BoxCoding:
    """SSD box coding: an encoding (t_a, t_b, t_c, t_d) in `order` decodes against its anchor as
    centre = t / scale · anchor size + anchor centre, size = exp(t / scale) · anchor size."""

    anchors: np.ndarray  # (N, 4) cy, cx, h, w, normalised to the input image
    order: str = "yxhw"
    scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # in `order`

    def decode(self, encodings: np.ndarray, which: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(N, 4) encodings of the anchors `which` → (N, 4) boxes x1, y1, x2, y2 normalised to the input."""
        t = encodings / np.asarray(self.scales, np.float32)
        if self.order == "xywh":
            t = t[:, [1, 0, 3, 2]]
        cy, cx, h, w = self.anchors[which].T
        centre_y, centre_x = t[:, 0] * h + cy, t[:, 1] * w + cx
        half_h, half_w = np.exp(t[:, 2]) * h / 2, np.exp(t[:, 3]) * w / 2
        return np.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], axis=1)

    def to_card(self) -> dict:
        return {"anchors": encode_anchors(self.anchors), "order": self.order, "scales": list(self.scales)}

    @classmethod
    def from_card(cls, card: dict) -> BoxCoding:
        return cls(decode_anchors(card["anchors"]), card["order"], tuple(float(s) for s in card["scales"]))


@dataclass
class Decoding:
    """Raw outputs → boxes: the box coding, how class outputs become scores, the score threshold and NMS."""

    coding: BoxCoding
    score_function: str = "sigmoid"
    background: bool = True  # score column 0 is the background class
    min_score: float = 0.5
    nms_iou: float = 0.6
    max_detections: int = 100

    @classmethod
    def from_card(cls, settings: dict) -> Decoding:
        return cls(BoxCoding.from_card(settings["coding"]), settings["score"], settings["background"],
                   float(settings["min_score"]), float(settings["nms_iou"]), int(settings.get("max_detections", 100)))

    def class_scores(self, scores: np.ndarray) -> np.ndarray:
        """(N, columns) raw class outputs → (N, classes) probabilities, background dropped."""
        if self.score_function == "sigmoid":
            probs = 1 / (1 + np.exp(-scores))
        else:
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        return probs[:, 1:] if self.background else probs

    def __call__(self, encodings: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample's (A, 4) box encodings and (A, columns) class outputs → boxes (K, 4) x1, y1, x2, y2 normalised
        to the input, scores (K,) and class indices (K,), best first, after the threshold and per-class NMS."""
        probs = self.class_scores(scores.reshape(len(self.coding.anchors), -1))
        anchor, label = np.nonzero(probs >= self.min_score)
        if not len(anchor):
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        score = probs[anchor, label]
        boxes = self.coding.decode(encodings.reshape(-1, 4)[anchor], anchor)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), label.tolist(), self.min_score, self.nms_iou)
        keep = np.asarray(keep, dtype=int).reshape(-1)
        keep = keep[np.argsort(-score[keep], kind="stable")][: self.max_detections]
        return boxes[keep], score[keep], label[keep]


def encode_anchors(anchors: np.ndarray) -> dict:
    """Anchors (N, 4 as cy, cx, h, w) as a card field: exact float32 bytes, base64 (a third the size of text)."""
    data = np.ascontiguousarray(anchors, dtype="<f4")
    return {"count": len(data), "layout": "cy,cx,h,w", "float32": base64.b64encode(data.tobytes()).decode()}


def decode_anchors(field: dict) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(field["float32"], validate=True), dtype="<f4")
    if data.size != 4 * field["count"]:
        raise EdgeCNNError(f"the card's anchors hold {data.size} numbers, not 4 × {field['count']}")
    return data.reshape(-1, 4).astype(np.float32)


def anchors_from_corners(corners: np.ndarray, order: str = "yxyx") -> np.ndarray:
    """(N, 4) anchor corners — y1, x1, y2, x2 (TF) or x1, y1, x2, y2 — → (N, 4) cy, cx, h, w."""
    y1, x1, y2, x2 = (corners.T if order == "yxyx" else corners[:, [1, 0, 3, 2]].T)
    return np.stack([(y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1], axis=1).astype(np.float32)


def letterbox(frame: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The frame centred on a square of grey bars, and where its top-left corner landed (x, y)."""
    h, w = frame.shape[:2]
    side = max(h, w)
    left, top = (side - w) // 2, (side - h) // 2
    padded = cv2.copyMakeBorder(frame, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT,
                                value=(LETTERBOX_FILL,) * 3)
    return padded, left, top


def find_box_and_score_outputs(outputs: list[TensorSpec], names: dict, anchors: int) -> tuple[int, int]:
    """Indices of the box-encoding and class-score outputs: by the card's names, else by shape (ExecuTorch
    numbers its outputs instead of naming them)."""
    by_name = {o.name: i for i, o in enumerate(outputs)}
    if names.get("boxes") in by_name and names.get("scores") in by_name:
        return by_name[names["boxes"]], by_name[names["scores"]]
    per_anchor = [i for i, o in enumerate(outputs) if anchors in o.shape]
    boxes = [i for i in per_anchor if outputs[i].shape[-1] == 4 and np.prod(outputs[i].shape) == 4 * anchors]
    if len(per_anchor) != 2 or len(boxes) != 1:
        shapes = ", ".join(f"{o.name} {o.shape}" for o in outputs)
        raise EdgeCNNError(f"cannot tell the box and score outputs apart among {shapes} for {anchors} anchors")
    return boxes[0], next(i for i in per_anchor if i != boxes[0])


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
        boxes = self._to_frame(boxes, frame_shape)
        return [Detection(tuple(float(v) for v in box), float(score), self.labels[label], int(label))
                for box, score, label in zip(boxes, scores, labels, strict=True)]

    def _to_frame(self, boxes: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        height, width = frame_shape[:2]
        if self.fit == "letterbox":
            side = max(height, width)
            boxes = boxes * side - np.array([(side - width) // 2, (side - height) // 2] * 2, np.float32)
        else:
            boxes = boxes * np.array([width, height, width, height], np.float32)
        return np.clip(boxes, 0, [width, height, width, height])
