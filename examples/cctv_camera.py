"""Classify a camera (or a video file, or an RTSP stream) and act when a label shows up.

    python examples/cctv_camera.py model_int8.tflite 0                          # camera 0
    python examples/cctv_camera.py model_int8.tflite rtsp://192.168.1.20/stream1

Needs only `pip install edgecnn` (no torch): the model file carries its labels and preprocessing.
Copy this file and change `act`.
"""

import sys
import time

from edgecnn import runtime
from edgecnn.runtime.capture import FrameSource

WATCH_FOR = {"person", "car"}  # labels of your model that matter
THRESHOLD = 0.6


def act(label: str, score: float, frame) -> None:
    """Your action: open a gate, send a message, save the frame ..."""
    print(f"{time.strftime('%H:%M:%S')} {label} ({score:.0%})", flush=True)


def main(model_path: str, source: str) -> None:
    classifier = runtime.load(model_path, threads=2)
    with FrameSource(source) as frames:  # newest frame first; reconnects when a stream drops
        while (frame := frames.next()) is not None:
            prediction = classifier.predict(frame.image)  # BGR frame straight from OpenCV
            if prediction.label in WATCH_FOR and prediction.score >= THRESHOLD:
                act(prediction.label, prediction.score, frame.image)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "0")
