"""`edgecnn watch`: run a classifier or a detector on a video file, camera or stream as it plays; alert, count,
save what it saw.

The pieces, each small: `FrameSource` (capture thread, newest frame, reconnects) feeds `run_watch()`, which hands
each frame it takes (optionally every N-th, at most F per second) to the model's watcher (`edgecnn.watchers`:
what the task makes of a frame, and its events), then to `EventLog` (one JSON line per event, each flushed to
disk whole, with a snapshot JPEG), the annotated `--save` video and `PipelineStats`. Torch-free.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from edgecnn.atomic import write_bytes, write_json
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.capture import FrameSource, opencv_path
from edgecnn.runtime.classifier import Classifier
from edgecnn.runtime.detector import Detector
from edgecnn.scene import Line, Zone
from edgecnn.watchers import ClassifyWatcher, DetectWatcher, Region

STATS_EVERY_S = 2.0


@dataclass
class WatchOptions:
    every: int = 1  # run the model on every N-th captured frame
    max_fps: float | None = None
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in frame pixels
    max_frames: int | None = None  # stop after this many frames went through the model
    alert_labels: tuple[str, ...] = ()  # labels, or label@zone with a detector
    threshold: float = 0.5
    min_frames: int = 3  # consecutive frames a label must hold before it is an event
    zones: list[Zone] = field(default_factory=list)  # detector only
    lines: list[Line] = field(default_factory=list)  # detector only
    min_score: float | None = None  # detector only: instead of its card's
    events: Path | None = None
    save: Path | None = None
    show: bool = False
    stats_json: Path | None = None
    realtime: bool = False
    give_up_after: float | None = None


def parse_roi(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise EdgeCNNError(f"--roi {text}: expected x,y,w,h in pixels, e.g. 100,50,320,240") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise EdgeCNNError(f"--roi {text}: x and y must be ≥ 0, width and height > 0")
    return x, y, w, h


class EventLog:
    """Events as JSON lines: each line is written in one call and fsynced, so after a crash or power loss a line
    is whole or absent; its snapshot JPEG is on disk (written atomically) before the line that names it."""

    def __init__(self, path: Path):
        self.path = path
        self.snapshots = path.with_name(path.stem + "_snapshots")
        try:
            self.snapshots.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            raise EdgeCNNError(f"cannot write events to {path}: {e.strerror or e}") from None
        self.count = 0

    def write(self, event: dict, image: np.ndarray) -> None:
        stamp = datetime.fromisoformat(event["time"]).strftime("%Y%m%dT%H%M%S%f")[:-3]
        snapshot = self.snapshots / f"{stamp}_{event['frame']:06d}_{_safe(event['label'])}.jpg"
        ok, jpeg = cv2.imencode(".jpg", image)
        line = json.dumps({**event, "snapshot": str(snapshot) if ok else None}) + "\n"
        try:
            if ok:
                write_bytes(snapshot, jpeg.tobytes())
            data = line.encode()
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk took part of the line: take it back, a line is whole or absent
                os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_END) - written)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(self._fd)
        except OSError as e:  # a full SD card: stop with the events written so far intact (a failed snapshot
            # is already an EdgeCNNError naming it, from write_bytes)
            raise EdgeCNNError(f"cannot write event to {self.path}: {e.strerror or e}") from None
        self.count += 1

    def close(self) -> None:
        os.close(self._fd)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]


@dataclass
class PipelineStats:
    processed: int = 0
    bad_frames: int = 0  # frames the model could not take (shape, dtype): skipped and counted
    first_bad: str | None = None  # why the first of them could not be prepared
    skipped: int = 0  # left out on purpose by --every / --max-fps
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # capture → result, recent
    started: float = field(default_factory=time.monotonic)
    first_result: float = 0.0
    last_result: float = 0.0

    @property
    def inference_fps(self) -> float:
        span = self.last_result - self.first_result
        return (self.processed - 1) / span if self.processed > 1 and span > 0 else 0.0

    def summary(self, source: FrameSource, events: int) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else None
        return {
            "source": source.source, "frames_captured": source.stats.captured, "frames_processed": self.processed,
            "frames_dropped": source.stats.dropped, "frames_skipped": self.skipped, "bad_frames": self.bad_frames,
            "reconnects": source.stats.reconnects, "capture_fps": round(source.stats.fps, 2),
            "inference_fps": round(self.inference_fps, 2),
            "latency_ms": None if lat is None else {"p50": float(np.percentile(lat, 50)),
                                                    "p90": float(np.percentile(lat, 90))},
            "events": events, "seconds": round(time.monotonic() - self.started, 2),
        }


class VideoOutput:
    """The annotated video, written under a temporary name (same suffix: OpenCV picks the container by it) and
    renamed into place when finished: an interrupted run leaves no half-written file under the final name."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps if 1 <= fps <= 240 else 25.0
        self._tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
        self._writer: cv2.VideoWriter | None = None

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            h, w = image.shape[:2]
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EdgeCNNError(f"--save {self.path}: cannot create its folder: {e.strerror or e}") from None
            writer = cv2.VideoWriter(opencv_path(self._tmp, "--save"), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                     (w, h))
            if not writer.isOpened():
                writer.release()
                raise EdgeCNNError(f"--save {self.path}: OpenCV cannot write this video (use .mp4 or .avi, and a "
                                   "writable folder)")
            self._writer = writer
        self._writer.write(image)

    def close(self, keep: bool = True) -> None:
        """Finish the file and give it its name; with `keep` False (the run failed) remove it instead."""
        if self._writer is None:
            return
        self._writer.release()
        if keep:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def _display_available() -> bool:
    gui = getattr(cv2, "currentUIFramework", lambda: "")()
    return bool(gui) and bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def watcher_for(model: Classifier | Detector, options: WatchOptions,
                classifier: Classifier | None = None) -> ClassifyWatcher | DetectWatcher:
    """The watcher of the model's task; `classifier` runs on each detection's crop (detect → classify)."""
    region = Region(options.roi)
    if isinstance(model, Detector):
        if options.min_score is not None:
            model.min_score = options.min_score
        return DetectWatcher(model, region, options.alert_labels, options.threshold, options.min_frames,
                             options.zones, options.lines, classifier)
    if options.zones or options.lines or classifier or options.min_score is not None:
        raise EdgeCNNError("--zone, --line, --classify and --min-score need a detector; this model is a classifier")
    return ClassifyWatcher(model, region, options.alert_labels, options.threshold, options.min_frames)


def run_watch(source_spec: str, model: Classifier | Detector, options: WatchOptions, stop: threading.Event,
              report=None, classifier: Classifier | None = None) -> dict:
    """Run the pipeline on a file path, camera index or stream URL until the source ends, `max_frames` went
    through the model or `stop` is set; returns the stats. `report(line)` receives a status line every few
    seconds."""
    watcher = watcher_for(model, options, classifier)

    # Cropping, resizing and the lookup table run on the capture thread, overlapping inference; frames that
    # --every leaves out are not prepared at all.
    def prepare(image: np.ndarray, index: int):
        return None if index % options.every else watcher.prepare(image)

    source = FrameSource(source_spec, realtime=options.realtime, give_up_after=options.give_up_after,
                         prepare=prepare, stop=stop)
    events = EventLog(options.events) if options.events else None
    stats = PipelineStats()
    show = options.show and _display_available()
    if options.show and not show and report:
        report("--show: no display (or an OpenCV build without GUI): not showing frames")
    video: VideoOutput | None = None
    last_status = time.monotonic()
    min_gap = 1.0 / options.max_fps if options.max_fps else 0.0
    last_processed = 0.0
    failed = True
    try:
        with source:
            if options.save:
                video = VideoOutput(options.save, source.fps)
            while not stop.is_set():
                try:
                    frame = source.next(timeout=0.5)
                except TimeoutError:
                    continue
                if frame is None:
                    break
                now = time.monotonic()
                if frame.index % options.every or now - last_processed < min_gap:
                    stats.skipped += 1
                    if video:
                        video.write(watcher.draw(frame.image, fresh=False))
                    continue
                last_processed = now
                if frame.error is not None:
                    if options.roi and stats.processed == 0 and stats.bad_frames == 0:
                        raise EdgeCNNError(frame.error)  # an ROI outside the frame: the user's mistake
                    stats.bad_frames += 1
                    stats.first_bad = stats.first_bad or frame.error
                    continue
                happened = watcher.observe(frame.image, frame.prepared, _stream_seconds(source, frame))
                done = time.monotonic()
                stats.processed += 1
                stats.first_result = stats.first_result or done
                stats.last_result = done
                stats.latencies_ms.append((done - frame.captured) * 1000)
                if events:
                    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                    for event in happened:
                        events.write({"time": stamp, **event, "frame": frame.index, "source": source.source},
                                     frame.image)
                if video or show:
                    annotated = watcher.draw(frame.image)
                    if video:
                        video.write(annotated)
                    if show:
                        cv2.imshow("edgecnn watch", annotated)
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            stop.set()
                if report and done - last_status >= STATS_EVERY_S:
                    last_status = done
                    s = stats.summary(source, events.count if events else 0)
                    report(f"{watcher.status()} | capture {s['capture_fps']:.1f} fps, "
                           f"inference {s['inference_fps']:.1f} fps, dropped {s['frames_dropped']}, "
                           f"latency p50 {s['latency_ms']['p50']:.1f} ms, events {s['events']}")
                if options.max_frames and stats.processed >= options.max_frames:
                    break
        failed = False
    finally:
        if events:
            events.close()
        if video:
            video.close(keep=not failed)
        if show:
            cv2.destroyAllWindows()
    summary = {**stats.summary(source, events.count if events else 0), **watcher.counts()}
    if options.stats_json:
        write_json(options.stats_json, summary)
    if source.error:
        raise EdgeCNNError(source.error)
    if stats.processed == 0 and not stop.is_set():
        raise EdgeCNNError(_nothing_processed(source_spec, source.stats.captured, stats))
    return summary


def _stream_seconds(source: FrameSource, frame) -> float:
    """When the frame was filmed, in seconds from the start: a file's own clock (its frame rate), so dwell times
    do not depend on how fast this machine plays it; a camera's or stream's arrival time."""
    if source.kind == "file" and source.fps > 0:
        return frame.index / source.fps
    return frame.captured - source.stats.started


def _nothing_processed(source: str, captured: int, stats: PipelineStats) -> str:
    if captured == 0:
        return f"{source}: no frame could be read (an empty or undecodable video?)"
    return (f"{source}: none of {captured} frames could be processed ({stats.bad_frames} bad); the first: "
            f"{stats.first_bad}")
