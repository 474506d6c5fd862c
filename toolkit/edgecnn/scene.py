"""What a camera sees over time, from a detector's boxes: tracks with ids, zones people enter and leave, lines
they cross (torch-free).

`IoUTracker` links each frame's detections to the tracks by box overlap (greedy, per label) with where each track
is predicted to be: its last box moved by its recent velocity, so a person missed for a few frames is found again
further along instead of starting a new track. A track's position is the
bottom centre of its box (the feet of a person, the wheels of a car): that is what crosses a line on the ground.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.detector import Detection

VELOCITY_SMOOTHING = 0.5  # weight of the old velocity against the newest step


@dataclass
class Track:
    detection: Detection
    first_seen: float
    hits: int = 1
    missed: int = 0
    previous: tuple[float, float] | None = None  # position at the match before the last (across a short gap)
    zones: dict[str, float] = field(default_factory=dict)  # zone name → when the track entered it
    kind: tuple[str, float] | None = None  # what the --classify model said of its last crop
    id: int = 0  # given when the track is confirmed: ids count real tracks, not one-frame flickers
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # pixels per observed frame, smoothed

    def predicted_box(self) -> np.ndarray:
        """Where the box should be in the next frame, the frames it was missed included."""
        return np.asarray(self.detection.box) + np.tile(self.velocity * (self.missed + 1), 2)

    def move_to(self, detection: Detection, kind: tuple[str, float] | None) -> None:
        step = _centre(detection.box) - _centre(self.detection.box)
        self.velocity = VELOCITY_SMOOTHING * self.velocity + (1 - VELOCITY_SMOOTHING) * step / (self.missed + 1)
        self.previous, self.detection, self.kind = self.position, detection, kind
        self.hits, self.missed = self.hits + 1, 0

    @property
    def position(self) -> tuple[float, float]:
        x1, _, x2, y2 = self.detection.box
        return (x1 + x2) / 2, y2


def _centre(box: tuple[float, float, float, float]) -> np.ndarray:
    return (np.asarray(box[:2]) + box[2:]) / 2


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), boxes as x1, y1, x2, y2."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class IoUTracker:
    """Tracks from per-frame detections. A track is confirmed after `min_hits` matches (one-frame flickers get
    no id in events) and ends after `max_missed` frames without a match."""

    def __init__(self, min_iou: float = 0.2, min_hits: int = 3, max_missed: int = 20):
        self.min_iou, self.min_hits, self.max_missed = min_iou, min_hits, max_missed
        self.tracks: list[Track] = []
        self.confirmed = 0

    def update(self, detections: list[Detection], now: float,
               kinds: list[tuple[str, float] | None] | None = None) -> tuple[list[Track], list[Track]]:
        """Match this frame's detections (and what a classifier said of each, `kinds`); returns (confirmed tracks
        seen in this frame, tracks that ended)."""
        matched: set[int] = set()
        used: set[int] = set()
        if self.tracks and detections:
            iou = iou_matrix(np.array([t.predicted_box() for t in self.tracks]), np.array([d.box for d in detections]))
            same = np.array([[t.detection.label == d.label for d in detections] for t in self.tracks])
            iou = np.where(same, iou, 0)
            for flat in np.argsort(-iou, axis=None):
                ti, di = np.unravel_index(flat, iou.shape)
                if iou[ti, di] < self.min_iou:
                    break
                if ti in matched or di in used:
                    continue
                self.tracks[ti].move_to(detections[di], kinds[di] if kinds else None)
                matched.add(int(ti))
                used.add(int(di))
        ended = []
        for i, track in enumerate(list(self.tracks)):
            if i not in matched:
                track.missed += 1
                if track.missed > self.max_missed:
                    ended.append(track)
        self.tracks = [t for t in self.tracks if t not in ended]
        self.tracks += [Track(d, now, kind=kinds[i] if kinds else None) for i, d in enumerate(detections)
                        if i not in used]
        for track in self.tracks:
            if not track.id and track.hits >= self.min_hits:
                self.confirmed += 1
                track.id = self.confirmed
        return [t for t in self.tracks if t.missed == 0 and t.id], [t for t in ended if t.id]


@dataclass
class Zone:
    name: str
    polygon: np.ndarray  # (K, 2) float32 frame pixels
    entered: int = 0
    left: int = 0

    def contains(self, point: tuple[float, float]) -> bool:
        return cv2.pointPolygonTest(self.polygon, point, False) >= 0


@dataclass
class Line:
    """A counting line from `a` to `b`. "in" counts crossings from its left to its right as seen on screen when
    walking from a to b (for a line drawn left to right: moving down the frame); "out" the other way."""

    name: str
    a: tuple[float, float]
    b: tuple[float, float]
    counts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0})

    def side(self, p: tuple[float, float]) -> float:
        return (self.b[0] - self.a[0]) * (p[1] - self.a[1]) - (self.b[1] - self.a[1]) * (p[0] - self.a[0])

    def crossing(self, before: tuple[float, float], after: tuple[float, float]) -> str | None:
        """'in', 'out' or None for a move from `before` to `after` (the segments must intersect: passing beside
        the line's end is not crossing it)."""
        s1, s2 = self.side(before), self.side(after)
        if s1 < 0 <= s2:
            direction = "in"
        elif s1 > 0 >= s2:
            direction = "out"
        else:
            return None
        path = Line("", before, after)
        return direction if path.side(self.a) * path.side(self.b) <= 0 else None


def _points(text: str, option: str, count: int | None) -> list[tuple[float, float]]:
    """The points after NAME: in `text` (the whole option value, which errors quote)."""
    try:
        numbers = [float(v) for v in text.partition(":")[2].replace(";", ",").split(",")]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) % 2 or (count and len(numbers) != 2 * count) or not np.isfinite(numbers).all():
        shape = "x1,y1,x2,y2" if count == 2 else "x,y;x,y;x,y;..."
        raise EdgeCNNError(f"{option} {text}: expected NAME:{shape} in frame pixels")
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def _named(text: str, option: str) -> str:
    name, sep, _ = text.partition(":")
    if not sep or not name.strip():
        raise EdgeCNNError(f"{option} {text}: expected NAME:points, e.g. {option} door:100,200,300,200")
    return name.strip()


def parse_zone(text: str) -> Zone:
    name = _named(text, "--zone")
    points = _points(text, "--zone", None)
    if len(points) < 3 or cv2.contourArea(np.array(points, np.float32)) <= 0:
        raise EdgeCNNError(f"--zone {text}: a zone needs at least 3 points enclosing an area")
    return Zone(name, np.array(points, np.float32))


def parse_line(text: str) -> Line:
    name = _named(text, "--line")
    a, b = _points(text, "--line", 2)
    if a == b:
        raise EdgeCNNError(f"--line {text}: its two points are the same")
    return Line(name, a, b)


class Scene:
    """Tracks, zones and lines together: each frame's detections in, events out."""

    def __init__(self, zones: list[Zone], lines: list[Line], tracker: IoUTracker | None = None):
        names = [z.name for z in zones] + [ln.name for ln in lines]
        if len(set(names)) != len(names):
            raise EdgeCNNError(f"zone and line names must differ: {', '.join(names)}")
        self.zones, self.lines, self.tracker = zones, lines, tracker or IoUTracker()

    def update(self, detections: list[Detection], now: float,
               kinds: list[tuple[str, float] | None] | None = None) -> tuple[list[Track], list[dict]]:
        """The confirmed tracks in view, and the events this frame made: 'enter'/'leave' a zone (leave with the
        dwell time), 'cross' a line (with its direction)."""
        seen, ended = self.tracker.update(detections, now, kinds)
        events = []
        for track in seen:
            point = track.position
            for zone in self.zones:
                inside = zone.contains(point)
                if inside and zone.name not in track.zones:
                    track.zones[zone.name] = now
                    zone.entered += 1
                    events.append(self._event("enter", track, zone=zone.name))
                elif not inside and zone.name in track.zones:
                    events.append(self._leave(track, zone, now))
            if track.previous is not None:
                for line in self.lines:
                    direction = line.crossing(track.previous, point)
                    if direction:
                        line.counts[direction] += 1
                        events.append(self._event("cross", track, line=line.name, direction=direction))
        for track in ended:  # gone from view while inside: it left
            events += [self._leave(track, zone, now) for zone in self.zones if zone.name in track.zones]
        return seen, events

    def _leave(self, track: Track, zone: Zone, now: float) -> dict:
        zone.left += 1
        return self._event("leave", track, zone=zone.name, dwell_s=round(now - track.zones.pop(zone.name), 2))

    @staticmethod
    def _event(kind: str, track: Track, **fields) -> dict:
        d = track.detection
        return {"event": kind, "track": track.id, "label": d.label, "score": round(d.score, 4),
                "box": [round(v, 1) for v in d.box], **fields, **({"kind": track.kind[0]} if track.kind else {})}

    def counts(self) -> dict:
        return {"tracks": self.tracker.confirmed,
                "lines": {line.name: dict(line.counts) for line in self.lines},
                "zones": {z.name: {"entered": z.entered, "left": z.left, "inside": z.entered - z.left}
                          for z in self.zones}}
