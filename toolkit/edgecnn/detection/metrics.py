"""mAP with COCO's own evaluator (pycocotools), on boxes in any pixel frame, from numpy arrays.

`box_agreement` is the same measure with one model's boxes as the ground truth: how well an int8 artefact finds
what its float model found.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np


@dataclass
class Boxes:
    """One image's boxes: (K, 4) x1, y1, x2, y2 pixels, (K,) class indices from 0, (K,) scores (1 for truth)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None

    def above(self, min_score: float) -> Boxes:
        keep = self.scores >= min_score
        return Boxes(self.boxes[keep], self.labels[keep])


def decode_boxes(decoding, encodings: np.ndarray, scores: np.ndarray, size: int) -> list[Boxes]:
    """Each image's boxes from its (A, 4) encodings and (A, columns) class outputs, through the runtime's
    `edgecnn.runtime.detector.Decoding`, in the pixels of a `size`-square input."""
    found = []
    for image_encodings, image_scores in zip(encodings, scores, strict=True):
        boxes, confidence, labels = decoding(image_encodings, image_scores)
        found.append(Boxes(boxes * size, labels, confidence))
    return found


def detection_map(truth: list[Boxes], predicted: list[Boxes], classes: int) -> dict[str, float]:
    """{"map50": mAP@0.5, "map": mAP@0.5:0.95} of `predicted` against `truth` (one entry per image, same order),
    over the classes that have ground truth; 0 where nothing is predicted."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1} for i in range(len(truth))]
    gt_anns = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": _xywh(b),
                "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0}
               for i, t in enumerate(truth) for b, c in zip(t.boxes, t.labels, strict=True)]
    for n, ann in enumerate(gt_anns):
        ann["id"] = n + 1
    if not gt_anns:
        return {"map50": 0.0, "map": 0.0, "truth_boxes": 0, "predicted_boxes": sum(len(p.boxes) for p in predicted)}
    dt = [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": _xywh(b), "score": float(s)}
          for i, p in enumerate(predicted) for b, c, s in zip(p.boxes, p.labels, p.scores, strict=True)]
    summary = {"truth_boxes": len(gt_anns), "predicted_boxes": len(dt)}
    if not dt:
        return {"map50": 0.0, "map": 0.0, **summary}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns,
                      "categories": [{"id": c + 1} for c in range(classes)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(dt), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map50": round(float(max(evaluation.stats[1], 0.0)), 4),
            "map": round(float(max(evaluation.stats[0], 0.0)), 4), **summary}


def shown_boxes(boxes: list[Boxes], min_score: float) -> int:
    """How many boxes a camera would show at `min_score`, over all images."""
    return sum(len(b.above(min_score).boxes) for b in boxes)


def box_agreement(reference: list[Boxes], predicted: list[Boxes], classes: int, min_score: float) -> float:
    """mAP@0.5 of `predicted` with the reference model's boxes above `min_score` as the truth. Where the reference
    shows no box at all, mAP has no truth to score: 1.0 when `predicted` shows none either at `min_score` (both
    show an empty scene), else 0.0."""
    if shown_boxes(reference, min_score) == 0:
        return float(shown_boxes(predicted, min_score) == 0)
    return detection_map([r.above(min_score) for r in reference], predicted, classes)["map50"]


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]
