"""`edgecnn label`: a COCO dataset from real footage, labelled by the real person detector."""

import json

import cv2
import numpy as np
import pytest
from conftest import VTEST, assert_clean_error, edgecnn, video_frame
from edgecnn.runtime import load


def test_label_a_video_into_a_coco_dataset(teacher, tmp_path):
    video_frame(VTEST, 0)
    out = tmp_path / "ds"
    result = edgecnn("label", VTEST, "--teacher", teacher["fp32"], "--frames", "100:140", "--every", "4",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert "10 images" in result.stdout
    dataset = json.loads((out / "annotations.json").read_text())
    assert [im["frame"] for im in dataset["images"]] == list(range(100, 140, 4))
    assert dataset["categories"] == [{"id": 1, "name": "person"}]
    assert dataset["info"]["teacher_sha256"] and dataset["info"]["min_score"] == 0.5
    teacher_model = load(teacher["fp32"])
    for image in dataset["images"]:
        saved = cv2.imread(str(out / image["file_name"]))
        assert saved.shape == (576, 768, 3) == (image["height"], image["width"], 3)
        boxes = [a["bbox"] for a in dataset["annotations"] if a["image_id"] == image["id"]]
        # The teacher's boxes on the original frame (the JPEG is only what a student trains on).
        expected = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in
                    (d.box for d in teacher_model.detect(video_frame(VTEST, image["frame"])))]
        np.testing.assert_allclose(sorted(boxes), sorted(expected), atol=0.01)
    assert len(dataset["annotations"]) >= 30  # four or five people in each of these frames
    # pycocotools, the evaluator training uses, reads it.
    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 10 and len(coco.getAnnIds()) == len(dataset["annotations"])
    before = (out / "annotations.json").read_bytes()
    assert_clean_error(edgecnn("label", VTEST, "--teacher", teacher["fp32"], "--frames", "0:2", "--out", out),
                       "already exists")
    assert (out / "annotations.json").read_bytes() == before


def test_label_a_folder_of_images_keeps_them_as_they_are(teacher, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in (0, 300, 600):
        cv2.imwrite(str(folder / f"frame{i:03d}.png"), video_frame(VTEST, i))
    out = tmp_path / "ds"
    result = edgecnn("label", folder, "--teacher", teacher["int8"], "--min-score", "0.6", "--out", out)
    assert result.returncode == 0, result.stderr
    dataset = json.loads((out / "annotations.json").read_text())
    names = [im["file_name"] for im in dataset["images"]]
    assert names == ["images/000001.png", "images/000002.png", "images/000003.png"]
    assert (out / names[1]).read_bytes() == (folder / "frame300.png").read_bytes()
    assert all(a["score"] >= 0.6 for a in dataset["annotations"]) and dataset["info"]["min_score"] == 0.6


@pytest.mark.parametrize("case", ["frames", "source", "empty range", "classifier teacher"])
def test_label_bad_input(case, teacher, digits_int8, tmp_path):
    video_frame(VTEST, 0)
    out = tmp_path / "ds"
    args = {"frames": [VTEST, "--teacher", teacher["fp32"], "--frames", "50:10"],
            "source": [tmp_path / "missing.mp4", "--teacher", teacher["fp32"]],
            "empty range": [VTEST, "--teacher", teacher["fp32"], "--frames", "5000:5010"],
            "classifier teacher": [VTEST, "--teacher", digits_int8["tflite"]]}[case]
    expect = {"frames": "--frames 50:10", "source": "missing.mp4", "empty range": "no frame in the range",
              "classifier teacher": "not a detect model"}[case]
    assert_clean_error(edgecnn("label", *args, "--out", out), expect)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
