"""What `edgecnn watch` does with each model's answer, one class per task (torch-free).

A watcher prepares a frame on the capture thread (`prepare`), runs its model on it and returns the frame's events
(`observe`), draws what it knows on a frame (`draw`), says one status phrase and, at the end, its counts. The
pipeline around it (`edgecnn.watch.run_watch`: capture, event log, video, statistics) is the same for every task.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.classifier import Classifier, Prediction
from edgecnn.runtime.detector import Detection, Detector
from edgecnn.runtime.report import shown
from edgecnn.scene import Line, Scene, Track, Zone

ROI_COLOUR, BOX_COLOUR, ZONE_COLOUR, LINE_COLOUR = (0, 200, 255), (0, 220, 0), (255, 160, 0), (0, 0, 255)


@dataclass
class Region:
    """Where in the frame the model looks (--roi: x, y, w, h in frame pixels; None: everywhere)."""

    roi: tuple[int, int, int, int] | None = None

    def crop(self, image: np.ndarray) -> np.ndarray:
        if self.roi is None:
            return image
        x, y, w, h = self.roi
        height, width = image.shape[:2]
        if x >= width or y >= height:
            raise EdgeCNNError(f"--roi {x},{y},{w},{h} lies outside the {width}×{height} frame")
        return image[y : min(y + h, height), x : min(x + w, width)]

    def draw(self, out: np.ndarray) -> None:
        if self.roi is not None:
            x, y, w, h = self.roi
            cv2.rectangle(out, (x, y), (x + w, y + h), ROI_COLOUR, 2)


class AlertTracker:
    """A key (a label, or label@zone) becomes an event once it is present for `min_frames` observed frames in a
    row; it fires again only after it has been absent for `min_frames` frames (debounce)."""

    def __init__(self, keys: tuple[str, ...], min_frames: int):
        self.keys, self.min_frames = set(keys), min_frames
        self.streak: dict[str, int] = {}
        self.absent: dict[str, int] = {}
        self.active: set[str] = set()

    def update(self, present: set[str]) -> list[str]:
        fired = []
        for key in sorted(self.keys):
            if key in present:
                self.streak[key] = self.streak.get(key, 0) + 1
                self.absent[key] = 0
                if self.streak[key] >= self.min_frames and key not in self.active:
                    self.active.add(key)
                    fired.append(key)
            else:
                self.streak[key] = 0
                self.absent[key] = self.absent.get(key, 0) + 1
                if self.absent[key] >= self.min_frames:
                    self.active.discard(key)
        return fired


def draw_text(out: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    """White text on a solid black box whose top-left is (x, y) (a thick outline under thin text filled the
    letters' insides on small frames)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (width, height), baseline = cv2.getTextSize(text, font, scale, 1)
    cv2.rectangle(out, (x, y), (x + width + 8, y + height + baseline + 8), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, text, (x + 4, y + 4 + height), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _canvas(image: np.ndarray) -> tuple[np.ndarray, float]:
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return out, max(0.4, min(out.shape[:2]) / 480 * 0.7)


class ClassifyWatcher:
    """A classifier's top-1 on each frame (or its --roi); --alert labels fire when their score holds."""

    def __init__(self, model: Classifier, region: Region, alerts: tuple[str, ...], threshold: float,
                 min_frames: int):
        unknown = [a for a in alerts if a not in model.labels]
        if unknown:
            raise EdgeCNNError(f"--alert {','.join(unknown)}: not a label of the model "
                               f"(labels: {', '.join(model.labels[:20])})")
        self.model, self.region, self.threshold = model, region, threshold
        self.alerts = AlertTracker(alerts, min_frames)
        self.prediction: Prediction | None = None

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self.model.prepare(self.region.crop(image))

    def observe(self, image: np.ndarray, sample: np.ndarray, now: float) -> list[dict]:
        p = self.prediction = self.model.predict_prepared(sample)
        present = {p.label} if p.score >= self.threshold else set()
        return [{"event": "alert", "label": key, "score": round(p.score, 4)} for key in self.alerts.update(present)]

    def draw(self, image: np.ndarray, fresh: bool = True) -> np.ndarray:
        out, scale = _canvas(image)
        self.region.draw(out)
        if fresh and self.prediction is not None:
            draw_text(out, f"{self.prediction.label} {self.prediction.score:.2f}", 4, 4, scale)
        return out

    def status(self) -> str:
        p = self.prediction
        return f"{shown(p.label)} {p.score:.2f}" if p else "-"

    def counts(self) -> dict:
        return {}


class DetectWatcher:
    """A detector's boxes on each frame, tracked; zone and line events; --alert on a label (anywhere) or on
    label@zone; with --classify, a classifier's answer on each tracked box's crop."""

    def __init__(self, model: Detector, region: Region, alerts: tuple[str, ...], threshold: float,
                 min_frames: int, zones: list[Zone], lines: list[Line], classifier: Classifier | None = None):
        labels = set(model.labels) | set(classifier.labels if classifier else ())
        zone_names = {z.name for z in zones}
        for alert in alerts:
            label, _, zone = alert.partition("@")
            if label not in labels or (zone and zone not in zone_names):
                raise EdgeCNNError(f"--alert {alert}: expected LABEL or LABEL@ZONE with a label of the models "
                                   f"({', '.join(sorted(labels)[:20])}) and a --zone name")
        self.model, self.region, self.threshold, self.classifier = model, region, threshold, classifier
        self.alerts = AlertTracker(alerts, min_frames)
        self.scene = Scene(zones, lines)
        self.tracks: list[Track] = []
        self.detections = 0

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self.model.prepare(self.region.crop(image))

    def observe(self, image: np.ndarray, sample: np.ndarray, now: float) -> list[dict]:
        x, y = self.region.roi[:2] if self.region.roi else (0, 0)
        found = self.model.detect_prepared(sample, self.region.crop(image).shape)
        for d in found:  # back to whole-frame pixels, where zones and lines are drawn
            d.box = (d.box[0] + x, d.box[1] + y, d.box[2] + x, d.box[3] + y)
        self.detections += len(found)
        self.tracks, events = self.scene.update(found, now, [self._kind(image, d) for d in found])
        present = set()
        for track in self.tracks:
            if track.detection.score >= self.threshold:
                names = {track.detection.label} | ({track.kind[0]} if track.kind else set())
                present |= names | {f"{n}@{zone}" for n in names for zone in track.zones}
        return events + [{"event": "alert", "label": key} for key in self.alerts.update(present)]

    def _kind(self, image: np.ndarray, detection: Detection) -> tuple[str, float] | None:
        """What --classify says of the detection's crop."""
        x1, y1, x2, y2 = (int(round(v)) for v in detection.box)
        if self.classifier is None or x2 <= x1 or y2 <= y1:
            return None
        p = self.classifier.predict(image[y1:y2, x1:x2])
        return p.label, p.score

    def draw(self, image: np.ndarray, fresh: bool = True) -> np.ndarray:
        out, scale = _canvas(image)
        self.region.draw(out)
        for zone in self.scene.zones:
            cv2.polylines(out, [zone.polygon.astype(np.int32)], True, ZONE_COLOUR, 2)
            x, y = zone.polygon.min(axis=0).astype(int)
            draw_text(out, f"{zone.name}: {zone.entered - zone.left} inside", int(x), int(y), scale * 0.8)
        for line in self.scene.lines:
            a, b = tuple(int(v) for v in line.a), tuple(int(v) for v in line.b)
            cv2.line(out, a, b, LINE_COLOUR, 2)
            draw_text(out, f"{line.name}: in {line.counts['in']} out {line.counts['out']}", *a, scale * 0.8)
        for track in self.tracks if fresh else []:
            x1, y1, x2, y2 = (int(v) for v in track.detection.box)
            cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, 2)
            kind = f" {track.kind[0]}" if track.kind else ""
            draw_text(out, f"#{track.id} {track.detection.label}{kind} {track.detection.score:.2f}", x1,
                      max(0, y1 - int(24 * scale)), scale * 0.7)
        return out

    def status(self) -> str:
        lines = "".join(f", {ln.name} in {ln.counts['in']} out {ln.counts['out']}" for ln in self.scene.lines)
        return shown(f"{len(self.tracks)} in view, {self.scene.tracker.confirmed} tracks{lines}")

    def counts(self) -> dict:
        return {"detections": self.detections, **self.scene.counts()}
