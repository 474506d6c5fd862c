"""A detector from footage to verified int8 files: the teacher labels vtest.avi, an SSDLite student trains on it
(small and short: the real recipe is recipes/vtest_person.yaml), exports to .tflite and .onnx, and the runtime,
`eval` and `info` read what came out."""

import json

import numpy as np
import pytest
import torch
from conftest import VTEST, assert_clean_error, build_once, edgecnn, edgecnn_in_process, video_frame
from edgecnn.detection.data import load_box_dataset
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime import Detector, load

REAL_WEIGHTS = "mobilenet_v2-b0353104.pth"
SIZE = 320
pytestmark = pytest.mark.xdist_group("student")  # one worker trains it; the other is not kept waiting


@pytest.fixture(scope="session")
def student(teacher, tmp_path_factory):
    """Teacher labels of 12 frames, trained on for 3 epochs and scored on the same frames (this checks the
    machinery; what the recipe learns is measured in benchmarks/), then float and int8 exports of both formats."""
    from conftest import ROOT

    weights = next(ROOT.glob(f".cache/real/**/{REAL_WEIGHTS}"), None)

    def make(out):
        video_frame(VTEST, 0)
        labelled = edgecnn_in_process("label", VTEST, "--teacher", teacher["fp32"], "--frames", "100:340", "--every",
                                      "20", "--out", out / "data")
        assert labelled.returncode == 0, labelled.stderr
        train = edgecnn_in_process("train", "--model", "ssdlite_mobilenet_v2", "--dataset", f"coco:{out / 'data'}",
                                   "--val", f"coco:{out / 'data'}", "--img-size", SIZE, "--epochs", 3, "--batch-size",
                                   6, "--lr", 0.05, "--warmup-epochs", 1, *(["--weights", weights] if weights else []),
                                   "--out", out / "train", "--json", out / "train.json")
        assert train.returncode == 0, train.stderr
        for flag, folder in (([], "float"), (["--int8", "--calibration", "minmax"], "int8")):
            exported = edgecnn_in_process("export", out / "train" / "last.pt", "--format", "tflite,onnx", *flag,
                                          "--out", out / folder, "--calib-samples", 12, "--json",
                                          out / f"{folder}.json")
            assert exported.returncode == 0, exported.stdout + exported.stderr
        return out

    return build_once(tmp_path_factory, "student", make)


@pytest.mark.slow  # the student: about 150 s on one worker
def test_training_runs_and_scores_each_epoch(student):
    history = json.loads((student / "train.json").read_text())["history"]
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"] * 0.85
    assert all(0 <= row["map50"] <= 1 and 0 <= row["map"] <= row["map50"] for row in history)


@pytest.mark.slow  # the student: about 150 s on one worker
def test_exports_are_verified_and_scored(student):
    float_report = json.loads((student / "float.json").read_text())["artifacts"]
    for artefact in float_report:  # the same network in another runtime: the same outputs, the same mAP
        assert artefact["status"] == "ok" and artefact["max_logit_error"] < 1e-2, artefact
        assert artefact["map50"] == pytest.approx(artefact["float_map50"], abs=0.01)
    int8 = json.loads((student / "int8.json").read_text())["artifacts"]
    assert {a["format"] for a in int8} == {"tflite", "onnx"}
    for artefact in int8:
        assert artefact["status"] == "ok" and artefact["float_ops"] == [] and artefact["ops"]["int8"] > 50
        assert 0 <= artefact["map50"] <= 1 and 0 <= artefact["box_agreement"] <= 1
        # Three epochs: the float model may show no box yet at the card's 0.5, and then the report says that box
        # agreement cannot judge the file (instead of calling a file that also shows nothing a poor match).
        assert artefact["float_boxes"] == float_report[0]["float_boxes"] >= 0
        no_boxes = any("the float model shows no box" in w for w in artefact["warnings"])
        assert no_boxes == (artefact["float_boxes"] == 0), artefact["warnings"]
        assert not (no_boxes and any("finds the float model's boxes" in w for w in artefact["warnings"]))
        assert artefact["box_agreement"] == artefact["agreement"] and artefact["float_map50"] == float_report[0][
            "float_map50"]


@pytest.mark.slow  # the student: about 150 s on one worker
def test_the_runtime_detects_with_the_exported_files(student):
    frame = video_frame(VTEST, 200)
    for path in sorted((student / "int8").glob("*_int8.*")):
        detector = load(path)
        assert isinstance(detector, Detector) and detector.labels == ["person"]
        assert detector.integrity.verified and detector.pre.img_size == SIZE and detector.min_score == 0.5
        detector.min_score = 0.05  # three epochs: boxes, not yet confident ones
        found = detector.detect(frame)
        assert found and len(found) <= 100, path
        assert all(d.label == "person" and 0 <= d.box[0] < d.box[2] <= 768 and 0 <= d.box[1] < d.box[3] <= 576
                   for d in found)


@pytest.mark.slow  # the student: about 150 s on one worker
def test_info_and_eval(student):
    summary = json.loads(edgecnn("info", student / "int8" / "ssdlite_mobilenet_v2_int8.tflite", "--json", "-").stdout)
    card = summary["card"]
    assert card["task"] == "detect" and card["detect"]["score"] == "softmax" and card["detect"]["background"]
    assert card["detect"]["coding"]["order"] == "xywh" and summary["ops"]["float"] == 0
    anchors = card["detect"]["coding"]["anchors"]["count"]
    assert [o["shape"][1] for o in card["outputs"]] == [anchors, anchors]
    result = edgecnn_in_process("eval", student / "train" / "best.pt", "--json", "-")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    best = max(row["map50"] for row in json.loads((student / "train.json").read_text())["history"])
    assert metrics["map50"] == pytest.approx(best, abs=1e-4) and metrics["samples"] == 12
    assert_clean_error(edgecnn("eval", student / "train" / "best.pt", "--dataset", "coco:/nonexistent"),
                       "does not exist")


def test_torchvision_ssdlite_weights_load_and_match_torchvision(tmp_path):
    """Users with torchvision's COCO SSDLite weights load them into ssdlite_mobilenet_v3_large: the same numbers
    as torchvision's own model (random weights here: the real ones are a download)."""
    import torchvision
    from edgecnn.models.ssdlite import build_detector
    from torchvision.models.detection.image_list import ImageList

    reference = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                           num_classes=91).eval()
    torch.save(reference.state_dict(), tmp_path / "ssdlite.pth")
    model, note = build_detector("ssdlite_mobilenet_v3_large", 90, weights=str(tmp_path / "ssdlite.pth"))
    assert "whole detector" in note
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        features = list(reference.backbone(x).values())
        expected = reference.head(features)
        encodings, logits = model.eval()(x)
    torch.testing.assert_close(encodings, expected["bbox_regression"])
    torch.testing.assert_close(logits, expected["cls_logits"])
    anchors = reference.anchor_generator(ImageList(x, [(320, 320)]), features)[0]
    torch.testing.assert_close(model.anchor_boxes, anchors)
    with pytest.raises(EdgeCNNError, match="do not fit"):
        build_detector("ssdlite_mobilenet_v3_large", 3, weights=str(tmp_path / "ssdlite.pth"))


@pytest.mark.parametrize("case", ["outside", "no area", "category", "image"])
def test_coco_boxes_are_checked(case, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    box = {"outside": [150, 10, 60, 20], "no area": [10, 10, 0, 5]}.get(case, [10, 10, 20, 20])
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [{"id": 7, "image_id": 2 if case == "image" else 1,
                             "category_id": 5 if case == "category" else 1, "bbox": box}]}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    expect = {"outside": "lies outside the 200×100 image", "no area": "has no area",
              "category": "category_id 5", "image": "image_id 2"}[case]
    with pytest.raises(EdgeCNNError, match="annotation 7") as error:
        load_box_dataset(f"coco:{tmp_path}")
    assert expect in str(error.value)


@pytest.mark.parametrize("line, expect", [("0 0.5 0.5 0.2", "expected `class cx cy w h`"),
                                          ("3 0.5 0.5 0.2 0.2", "class 3 is not one of the 2"),
                                          ("0 0.95 0.5 0.2 0.2", "lies outside the image"),
                                          ("1 0.5 0.5 0 0.2", "has no area")])
def test_yolo_boxes_are_checked(line, expect, tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "f.png"), np.zeros((40, 60, 3), np.uint8))
    (tmp_path / "classes.txt").write_text("person\ncar\n")
    (tmp_path / "labels" / "f.txt").write_text("0 0.5 0.5 0.5 0.5\n" + line + "\n")
    with pytest.raises(EdgeCNNError, match=r"f\.txt:2") as error:
        load_box_dataset(f"yolo:{tmp_path}")
    assert expect in str(error.value)


def test_yolo_dataset_reads_back(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), np.zeros((40, 60, 3), np.uint8))
    (tmp_path / "data.yaml").write_text("names: {0: person, 1: car}\n")
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    data = load_box_dataset(f"yolo:{tmp_path}")
    assert data.classes == ["person", "car"] and len(data) == 2
    np.testing.assert_allclose(data.images[0].boxes, [[0.25, 0.375, 0.75, 0.625]])
    assert data.images[0].labels.tolist() == [1] and len(data.images[1].boxes) == 0


@pytest.mark.parametrize("change, expect", [
    ({"model": {"name": "mobilenet_v2"}}, "'mobilenet_v2' is not a detector"),
    ({"data": {"dataset": "coco:DATA"}}, "data.val"),
    ({"data": {"dataset": "digits", "val": "coco:DATA"}}, "data.dataset: 'digits' is not coco:PATH"),
    ({"prune": {"ratio": 0.5}}, "prune.ratio: not available for detectors"),
    ({"task": "classify", "model": {"name": "tinycnn"}, "data": {"dataset": "digits", "val": "coco:DATA"}},
     "data.val: only detection recipes"),
])
def test_detection_recipes_are_checked(change, expect, tmp_path):
    import yaml

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "annotations.json").write_text('{"images": [], "annotations": [], "categories": []}')
    recipe = {"task": "detect", "model": {"name": "ssdlite_mobilenet_v2"},
              "data": {"dataset": "coco:DATA", "val": "coco:DATA"}}
    for key, value in change.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    if "val" not in change.get("data", {"val": 1}):
        recipe["data"].pop("val")
    text = yaml.safe_dump(recipe).replace("DATA", str(tmp_path / "data"))
    (tmp_path / "r.yaml").write_text(text)
    assert_clean_error(edgecnn("run", tmp_path / "r.yaml", "--out", tmp_path / "out"), expect)
