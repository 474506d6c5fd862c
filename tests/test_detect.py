"""Detection in the runtime: `edgecnn adopt` on the real SSDLite person detector and a third-party ONNX
classifier, box decoding against torchvision's coder, letterboxing, and the bad inputs adopt refuses."""

import json

import numpy as np
import pytest
from conftest import TEACHER, VTEST, assert_clean_error, edgecnn, edgecnn_in_process, video_frame
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime import Classifier, Detector, load
from edgecnn.runtime.decoding import BoxCoding, anchors_from_corners
from edgecnn.runtime.detector import letterbox

# The walking people in frame 100 of vtest.avi (768×576), box centres read off the frame by eye and by both teacher
# files: four close together in the middle, one far away on the upper path.
PEOPLE_AT_100 = [(389, 230), (513, 187), (600, 193), (356, 234), (233, 77)]


def centres(detections) -> np.ndarray:
    return np.array([((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in detections])


def found(detections, people, tolerance: float = 15) -> list[bool]:
    c = centres(detections)
    return [bool(len(c)) and bool((np.hypot(*(c - p).T) < tolerance).any()) for p in people]


def test_adopted_teacher_finds_the_walking_people(teacher):
    frame = video_frame(VTEST, 100)
    fp32, int8 = load(teacher["fp32"], threads=2), load(teacher["int8"], threads=2)
    assert isinstance(fp32, Detector) and fp32.labels == ["person"]
    assert fp32.integrity.verified and int8.integrity.verified
    people = fp32.detect(frame)
    assert all(found(people, PEOPLE_AT_100)), [(d.score, d.box) for d in people]
    assert len(people) == len(PEOPLE_AT_100)  # and nothing else: no box on the lamp post, the tripod or the van
    assert all(d.label == "person" and 0.5 <= d.score <= 1 and d.index == 0 for d in people)
    assert [d.score for d in people] == sorted((d.score for d in people), reverse=True)
    int8.min_score = 0.4  # int8 scores move by up to ±0.08 (the asset's README): the far person sits near 0.5
    assert all(found(int8.detect(frame), PEOPLE_AT_100))
    # Boxes are in frame pixels: a frame twice the size gives the same boxes, doubled (the four near people:
    # bilinear shrinking of the doubled frame blurs the far one below the threshold).
    import cv2

    big = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    assert all(found(fp32.detect(big), [(2 * x, 2 * y) for x, y in PEOPLE_AT_100[:4]], tolerance=30))
    assert fp32.detect(np.zeros_like(frame)) == []
    batch = fp32.detect_batch([frame, np.zeros_like(frame)])
    assert len(batch[0]) == len(people) and batch[1] == []


def test_info_shows_an_adopted_detector(teacher, tmp_path):
    result = edgecnn("info", teacher["int8"], "--json", "-")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    card = summary["card"]
    assert card["task"] == "detect" and card["labels"] == ["person"]
    assert card["detect"]["coding"]["anchors"]["count"] == 1917 and card["detect"]["background"] is True
    assert card["preprocess"]["mean"] == [0.5] * 3 and card["preprocess"]["interpolation"] == "linear"
    assert summary["ops"]["float"] == 0 and card["quantization"]["int8"] is True
    assert summary["integrity"]["verified"]
    # The anchors in the card are the file's, exactly.
    coding = BoxCoding.from_card(card["detect"]["coding"])
    np.testing.assert_array_equal(coding.anchors, anchors_from_corners(np.load(TEACHER / "anchors.npy")))


def test_a_changed_detection_card_is_refused(teacher, tmp_path):
    copy = tmp_path / "teacher.tflite"
    data = teacher["fp32"].read_bytes()
    at = data.index(b'"nms_iou": 0.6')
    copy.write_bytes(data[:at] + b'"nms_iou": 0.9' + data[at + 14 :])
    with pytest.raises(EdgeCNNError, match="hash"):
        load(copy)
    assert_clean_error(edgecnn("watch", copy, str(VTEST)), str(copy))


def test_box_decoding_matches_torchvision():
    """Our SSD decoding against torchvision's BoxCoder (the reference every torchvision detector uses), in its
    x-first order, and the TF order as the same numbers permuted."""
    import torch
    from torchvision.models.detection._utils import BoxCoder

    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=1).reshape(50, 4)[:, [0, 2, 1, 3]]  # x1, y1, x2, y2
    encodings = rng.normal(0, 1, (50, 4)).astype(np.float32)
    expected = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(torch.from_numpy(encodings),
                                                               torch.from_numpy(corners).float()).numpy()
    anchors = anchors_from_corners(corners.astype(np.float32), "xyxy")
    np.testing.assert_allclose(BoxCoding(anchors, "xywh").decode(encodings), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(BoxCoding(anchors, "yxhw").decode(encodings[:, [1, 0, 3, 2]]), expected,
                               rtol=1e-5, atol=1e-6)


def test_box_agreement_with_an_empty_reference():
    """Box agreement is mAP@0.5 against the reference model's shown boxes; where it shows none, an artefact that
    shows none either agrees fully and one that shows boxes not at all (mAP alone would give 0 to both)."""
    from edgecnn.detection.metrics import Boxes, box_agreement, shown_boxes

    person = Boxes(np.array([[10.0, 10.0, 50.0, 90.0]]), np.array([0]), np.array([0.9]))
    faint = Boxes(person.boxes, person.labels, np.array([0.2]))  # below the card's 0.5: a camera shows nothing
    empty = Boxes(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))
    assert shown_boxes([person, faint, empty], 0.5) == 1
    assert box_agreement([faint, empty], [empty, faint], 1, 0.5) == 1.0
    assert box_agreement([faint, empty], [empty, person], 1, 0.5) == 0.0
    assert box_agreement([person, empty], [person, empty], 1, 0.5) == pytest.approx(1.0)
    assert box_agreement([person, empty], [empty, empty], 1, 0.5) == 0.0


def test_export_report_says_when_the_float_model_shows_no_box():
    from edgecnn.export import Artefact, ExportOptions, warnings

    said = {}
    for agreement in (1.0, 0.0):
        artefact = Artefact("x.tflite", "tflite", True, agreement=agreement, box_agreement=agreement, float_boxes=0,
                            map50=0.0, float_map50=0.0)
        said[agreement] = warnings(artefact, ExportOptions(int8=True), 200)
    assert said[1.0] == ["the float model shows no box on the 200 verification images (score ≥ the card's threshold), "
                         "nor does this file: box agreement cannot judge it; verify on images with objects, or train "
                         "longer"]
    assert "but this file does: int8 lifted scores over the threshold" in said[0.0][0] and len(said[0.0]) == 1
    shown = Artefact("x.tflite", "tflite", True, agreement=0.5, box_agreement=0.5, float_boxes=3, map50=0.5,
                     float_map50=0.6)
    assert warnings(shown, ExportOptions(int8=True), 200)[0].startswith("int8 finds the float model's boxes with mAP")


def test_letterboxed_frames_map_back_to_frame_pixels(teacher, tmp_path):
    """A letterboxing detector on a frame finds what a stretching one finds on the same frame padded by hand,
    shifted by the padding: the mapping back to frame pixels undoes the bars."""
    frame = video_frame(VTEST, 100)
    out = tmp_path / "letterbox.tflite"
    result = edgecnn_in_process("adopt", TEACHER / "ssdlite_person_fp32.tflite", "--task", "detect", "--labels",
                                teacher["labels"],
                                "--anchors", TEACHER / "anchors.npy", "--input-range", "-1,1", "--fit", "letterbox",
                                "--min-score", "0.3", "--out", out)
    assert result.returncode == 0, result.stderr
    boxed = load(out)
    padded, left, top = letterbox(frame)
    assert (left, top) == (0, 96) and padded.shape[:2] == (768, 768)
    stretched = load(teacher["fp32"])
    stretched.min_score = 0.3
    expected = [(d.box[0] - left, d.box[1] - top, d.box[2] - left, d.box[3] - top) for d in stretched.detect(padded)]
    got = [d.box for d in boxed.detect(frame)]
    assert got and len(got) == len(expected)
    np.testing.assert_allclose(got, np.clip(expected, 0, [768, 576, 768, 576]), atol=0.01)


def tiny_onnx_classifier(path):
    """A third-party ONNX classifier written with onnx.helper: Conv → ReLU → global pool → 4 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["scores"])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "tiny", [image], [scores], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_adopting_an_onnx_classifier(tmp_path):
    import onnxruntime as ort

    source, out = tmp_path / "third_party.onnx", tmp_path / "adopted.onnx"
    tiny_onnx_classifier(source)
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\nfish\n")
    result = edgecnn_in_process("adopt", source, "--task", "classify", "--labels", tmp_path / "labels.txt",
                                "--input-range", "0,255", "--color", "BGR", "--out", out)
    assert result.returncode == 0, result.stderr
    model = load(out)
    assert isinstance(model, Classifier) and model.labels == ["cat", "dog", "bird", "fish"]
    assert model.integrity.verified and model.pre.color == "BGR" and model.pre.interpolation == "linear"
    frame = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    sample = model.prepare(frame)
    assert sample.shape == (3, 32, 32) and sample.max() > 1  # 0..255, as --input-range said
    raw = ort.InferenceSession(str(source)).run(None, {"image": sample[None]})[0]
    np.testing.assert_allclose(model.logits(sample[None]), raw, rtol=1e-6)
    assert model.predict(frame).label == model.labels[int(raw.argmax())]
    with pytest.raises(EdgeCNNError, match="not a detect model"):
        load(out, task="detect")


@pytest.mark.parametrize("case", ["no anchors", "anchor count", "anchors not an array", "labels count", "suffix",
                                  "same file", "anchors for classify", "range and mean", "not square"])
def test_adopt_refuses_bad_input_and_keeps_what_was_there(case, teacher, tmp_path):
    source = TEACHER / "ssdlite_person_fp32.tflite"
    out = tmp_path / "out.tflite"
    out.write_bytes(b"what was here before")
    anchors = TEACHER / "anchors.npy"
    args = ["--task", "detect", "--labels", teacher["labels"], "--anchors", anchors, "--out", out]
    expect = {"no anchors": "--anchors", "anchor count": "1916 anchors", "anchors not an array": "not a readable",
              "labels count": "3 classes", "suffix": "must be a .tflite", "same file": "is the file being adopted",
              "anchors for classify": "--anchors belongs to --task detect", "range and mean": "give one",
              "not square": "not a fixed square"}[case]
    if case == "no anchors":
        args = ["--task", "detect", "--out", out]
    elif case == "anchor count":
        np.save(tmp_path / "a.npy", np.load(anchors)[:-1])
        args[5] = tmp_path / "a.npy"
    elif case == "anchors not an array":
        (tmp_path / "a.npy").write_text("1,2,3,4\n")
        args[5] = tmp_path / "a.npy"
    elif case == "labels count":
        (tmp_path / "l.txt").write_text("a\nb\nc\n")
        args[3] = tmp_path / "l.txt"
    elif case == "suffix":
        args[-1] = tmp_path / "out.onnx"
    elif case == "same file":
        copy = tmp_path / "copy.tflite"
        copy.write_bytes(source.read_bytes())
        source, out, args[-1] = copy, copy, copy
    elif case == "anchors for classify":
        args[1] = "classify"
    elif case == "range and mean":
        args += ["--input-range", "-1,1", "--mean", "0.5,0.5,0.5"]
    elif case == "not square":
        import onnx

        source, out = tmp_path / "wide.onnx", tmp_path / "out.onnx"
        tiny_onnx_classifier(source)
        model = onnx.load(source)
        model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 48
        onnx.save(model, source)
        out.write_bytes(b"what was here before")
        args = ["--task", "classify", "--out", out]
    before = out.read_bytes()
    assert_clean_error(edgecnn("adopt", source, *args), expect)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no scratch left behind
