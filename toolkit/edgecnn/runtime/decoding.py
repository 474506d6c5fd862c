"""Raw detector outputs → boxes, torch-free and OpenCV only for NMS: the box coding and anchors a detector's card
holds, the score function and per-class non-maximum suppression. The runtime's `Detector` and the bench runner
on a device (whose bundle carries this module, not OpenCV's resizing) decode the same way.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.backends import TensorSpec

EVAL_MIN_SCORE = 0.05  # mAP needs the low-scoring boxes too: its precision-recall curve runs through them


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
        import cv2  # here: the bench runner's device bundle imports this module where OpenCV may be missing

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


def to_frame(boxes: np.ndarray, frame_shape: tuple[int, ...], fit: str) -> np.ndarray:
    """(K, 4) boxes normalised to the input → pixels of the (height, width, ...) frame the input was made from
    by stretching it or by letterboxing it (`fit`), clipped to the frame."""
    height, width = frame_shape[:2]
    if fit == "letterbox":
        side = max(height, width)
        boxes = boxes * side - np.array([(side - width) // 2, (side - height) // 2] * 2, np.float32)
    else:
        boxes = boxes * np.array([width, height, width, height], np.float32)
    return np.clip(boxes, 0, [width, height, width, height])
