"""Frames from a video file, a camera or a network stream (RTSP/HTTP), read on their own thread.

    source = FrameSource("rtsp://camera/stream")
    with source:
        while (frame := source.next()) is not None:
            ...frame.image, frame.index, frame.captured...

Live sources (cameras, streams, a file played with `realtime=True`) keep only the newest frame: inference
always gets the latest picture, and frames it had no time for are dropped and counted. A file read as fast as
possible hands over every frame instead (nothing is dropped; decoding still overlaps inference). A stream that
fails is reopened with exponential back-off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
# FFmpeg options for low-latency RTSP: TCP (no UDP loss), no input buffering; `timeout` is FFmpeg's socket
# timeout in µs, so a silent server cannot block a read forever. A user's own setting of the variable wins.
FFMPEG_OPTIONS = "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|timeout;5000000"
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 8.0


@dataclass
class Frame:
    image: np.ndarray
    index: int  # position among the frames captured from the source (counting dropped ones)
    captured: float  # time.monotonic() when it was read
    prepared: Any = None  # what `prepare(image)` returned on the capture thread
    error: str | None = None  # why `prepare` refused this frame


def source_kind(source: str) -> str:
    """'camera' (an index such as 0), 'stream' (a URL) or 'file'."""
    if source.isdigit():
        return "camera"
    if source.lower().startswith(STREAM_SCHEMES):
        return "stream"
    return "file"


def opencv_path(path: str | Path, what: str) -> str:
    """`path` as OpenCV's video functions may receive it. OpenCV 5 crashes the whole process on a file name that
    is not valid UTF-8 (files from Windows shares and cameras): such a name is refused, shown as bytes."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EdgeCNNError(f"{what} {os.fsencode(text)!r}: the file name is not valid UTF-8, which OpenCV cannot "
                           "open; rename the file") from None
    return text


def open_capture(source: str) -> cv2.VideoCapture | None:
    """An opened capture, or None when the source cannot be opened (now)."""
    kind = source_kind(source)
    if kind == "camera":
        capture = cv2.VideoCapture(int(source))
    elif kind == "stream":
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
    else:
        capture = cv2.VideoCapture(opencv_path(source, "video file"))
    if capture.isOpened():
        return capture
    capture.release()
    return None


@dataclass
class CaptureStats:
    captured: int = 0
    dropped: int = 0  # newer frames replaced them before inference took them
    reconnects: int = 0
    started: float = 0.0
    last_frame: float = 0.0

    @property
    def fps(self) -> float:
        span = self.last_frame - self.started
        return self.captured / span if span > 0 else 0.0


class FrameSource:
    def __init__(self, source: str, *, realtime: bool = False, reconnect: bool | None = None,
                 give_up_after: float | None = None, prepare: Callable[[np.ndarray, int], Any] | None = None,
                 stop: threading.Event | None = None):
        self.source, self.kind = source, source_kind(source)
        # Work done on the capture thread, overlapping inference (the classifier's resize + lookup table):
        # prepare(image, index) → Frame.prepared.
        self.prepare = prepare
        if self.kind == "file" and not Path(source).is_file():
            raise EdgeCNNError(f"video file not found: {source}")
        self.live = self.kind != "file" or realtime
        self.realtime = realtime and self.kind == "file"
        self.reconnect = self.kind != "file" if reconnect is None else reconnect
        self.give_up_after = give_up_after  # seconds without a frame before a reconnecting source gives up
        self.stats = CaptureStats()
        self.error: str | None = None
        self._cond = threading.Condition()
        self._pending: list[Frame] = []
        self._ended = False
        self._stop = threading.Event()
        self._caller_stop = stop  # e.g. set on Ctrl-C: also ends waiting for a source that is not up yet
        self._thread: threading.Thread | None = None
        self.fps = 0.0

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        capture = open_capture(self.source)
        if capture is None and self.reconnect and self.give_up_after:
            capture = self._retry_open()  # a box may boot before its camera: wait for it as after a drop
            if capture is None and self._stopped():
                raise KeyboardInterrupt  # Ctrl-C while waiting: an interruption, not a camera that never came
        if capture is None:
            what = {"camera": "camera", "stream": "stream", "file": "video file"}[self.kind]
            if self.reconnect and self.give_up_after:
                detail = f" within {self.give_up_after:g} s"
            elif self.kind == "stream":
                detail = " (is the server up and the URL right? --give-up-after S keeps trying that long)"
            elif self.kind == "camera":
                detail = " (--give-up-after S keeps trying that long)"
            else:
                detail = ""
            raise EdgeCNNError(f"cannot open {what} {self.source}{detail}")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        self.stats.started = self.stats.last_frame = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(capture,), name="edgecnn-capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=READ_TIMEOUT_MS / 1000 + 2)

    def next(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet handed out (live) or the next frame (file); None at the end."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending or self._ended or self._stop.is_set(), timeout):
                raise TimeoutError
            if not self._pending:
                return None
            frame = self._pending.pop(0)
            self._cond.notify_all()
            return frame

    def _hand_over(self, frame: Frame) -> None:
        with self._cond:
            if self.live:
                self.stats.dropped += len(self._pending)
                self._pending = [frame]
            else:  # every frame of a file: wait for room (two frames decoded ahead)
                self._cond.wait_for(lambda: len(self._pending) < 2 or self._stop.is_set())
                self._pending.append(frame)
            self._cond.notify_all()

    def _run(self, capture: cv2.VideoCapture) -> None:
        index = 0
        period = 1.0 / self.fps if self.realtime and self.fps > 0 else 0.0
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    capture.release()
                    capture = self._reopen() if self.reconnect else None
                    if capture is None:
                        break
                    continue
                now = time.monotonic()
                self.stats.captured += 1
                self.stats.last_frame = now
                self._hand_over(self._frame(image, index, now))
                index += 1
                if period:
                    next_due = max(next_due + period, now - period)
                    self._stop.wait(max(0.0, next_due - time.monotonic()))
        except Exception as e:  # the consumer must hear of it: a silent end would look like the end of the video
            self.error = f"capture of {self.source} failed: {type(e).__name__}: {e}"
        finally:
            if capture is not None:
                capture.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _frame(self, image: np.ndarray, index: int, captured: float) -> Frame:
        frame = Frame(image, index, captured)
        if self.prepare is not None:
            try:
                frame.prepared = self.prepare(image, index)
            except Exception as e:  # one frame the model cannot take: counted by the consumer, not fatal
                frame.error = str(e) if isinstance(e, EdgeCNNError) else f"{type(e).__name__}: {e}"
        return frame

    def _reopen(self) -> cv2.VideoCapture | None:
        """Reopen a dropped stream; None when stopped or given up."""
        capture = self._retry_open()
        if capture is not None:
            self.stats.reconnects += 1
        elif not self._stopped():
            self.error = f"{self.source}: no frames for {self.give_up_after:.0f} s; gave up reconnecting"
        return capture

    def _stopped(self) -> bool:
        return self._stop.is_set() or (self._caller_stop is not None and self._caller_stop.is_set())

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the source or its caller is stopped."""
        end = time.monotonic() + seconds
        while not self._stopped():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._stop.wait(min(left, 0.2))
        return True

    def _retry_open(self) -> cv2.VideoCapture | None:
        """Try to open the source, waiting 0.5, 1, 2 ... 8 s between tries, until it opens (the capture), the
        source is stopped or `give_up_after` seconds have passed (None)."""
        delay, lost = BACKOFF_START_S, time.monotonic()
        while not self._wait(delay):
            capture = open_capture(self.source)
            if capture is not None:
                return capture
            if self.give_up_after is not None and time.monotonic() - lost > self.give_up_after:
                return None
            delay = min(delay * 2, BACKOFF_MAX_S)
        return None
