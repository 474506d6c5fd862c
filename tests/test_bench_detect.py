"""`edgecnn bench` on detectors: latency with decoding + NMS, mAP@0.5 on a box dataset and box agreement with the
float model, on the real person detector and real footage labelled by it."""

import json
import subprocess
import sys

import pytest
from conftest import VTEST, assert_clean_error, edgecnn, edgecnn_in_process, video_frame


@pytest.fixture(scope="module")
def people(teacher, tmp_path_factory):
    """Ten frames of vtest.avi labelled by the fp32 teacher: its own boxes are the ground truth."""
    video_frame(VTEST, 0)
    out = tmp_path_factory.mktemp("bench-detect") / "people"
    result = edgecnn_in_process("label", VTEST, "--teacher", teacher["fp32"], "--frames", "300:360", "--every", "6",
                                "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_bench_scores_detectors_on_boxes(teacher, people, tmp_path):
    report = tmp_path / "bench.json"
    result = edgecnn("bench", teacher["int8"], teacher["fp32"], "--dataset", f"coco:{people}", "--runs", "5",
                     "--estimate", "pi5", "--json", report)
    assert result.returncode == 0, result.stderr
    rows = {(r["model"], r["status"]): r for r in json.loads(report.read_text())["results"]}
    fp32, int8 = rows["teacher_fp32.tflite", "ok"], rows["teacher_int8.tflite", "ok"]
    # The fp32 teacher against its own labels (boxes of score ≥ 0.5) and against itself: every box found.
    assert fp32["map50"] > 0.95 and fp32["box_agreement"] == 1.0
    # The int8 teacher finds the same people, not all at the same scores or exactly the same boxes.
    assert 0.7 < int8["map50"] <= 1.0 and 0.7 < int8["box_agreement"] <= 1.0
    for row in (fp32, int8):
        assert row["task"] == "detect" and row["accuracy"] is None and row["agreement"] is None
        assert 0 < row["decode_ms"] < row["median_ms"]  # the median includes decoding + NMS
    estimate = rows["teacher_int8.tflite", "estimated"]
    assert "decoding + NMS not in it" in estimate["note"] and estimate["estimated_ms"] > 0
    assert "mAP50" in result.stdout and "decoding + NMS" in result.stdout


def test_bench_box_agreement_on_unlabelled_frames(teacher, people):
    result = edgecnn("bench", teacher["int8"], "--images", people / "images", "--reference", teacher["fp32"],
                     "--runs", "3", "--json", "-")
    assert result.returncode == 0, result.stderr
    rows = {r["model"]: r for r in json.loads(result.stdout)["results"]}
    assert rows["teacher_int8.tflite"]["map50"] is None  # no boxes to score against
    assert 0.7 < rows["teacher_int8.tflite"]["box_agreement"] <= 1.0


def test_bench_refuses_a_task_the_data_cannot_score(teacher, people, digits_int8):
    assert_clean_error(edgecnn("bench", teacher["int8"], "--dataset", "digits", "--runs", "2"), "coco:PATH")
    assert_clean_error(edgecnn("bench", digits_int8["tflite"], "--dataset", f"coco:{people}", "--runs", "2"),
                       "classifier is not scored on a box dataset")


def test_the_device_runner_decodes_without_opencv(tmp_path):
    """The bundle a device gets (ssh, adb) carries the decoding, which needs OpenCV only for NMS, at call time."""
    from edgecnn.bench.jobs import build_runner_bundle

    bundle = build_runner_bundle(tmp_path / "runner.pyz")
    check = ("import sys; sys.path.insert(0, sys.argv[1]); import edgecnn.runtime.decoding, edgecnn.bench.runner; "
             "assert 'cv2' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", check, str(bundle)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
