import json

import pytest
import torch
from conftest import assert_clean_error, edgecnn, edgecnn_in_process
from edgecnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecnn.errors import EdgeCNNError
from edgecnn.models import model_spec
from edgecnn.models.build import build_model
from edgecnn.preprocess import Preprocess
from edgecnn.prune import apply_layer_shapes, layer_shapes, prune_channels
from edgecnn.runtime.modelfile import read_model_file
from edgecnn.summary import complexity


def test_prune_finetune_report_and_reload(digits_checkpoint, tmp_path):
    result = edgecnn_in_process("prune", digits_checkpoint, "--ratio", "0.5", "--finetune-epochs", "1", "--out",
                                tmp_path, "--json", tmp_path / "p.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["macs_after"] * 2 <= report["macs_before"]
    assert report["params_after"] < report["params_before"]
    assert 0 <= report["top1_pruned"] <= 1 and report["top1_finetuned"] >= 0.8
    assert report["int8_latency_ms_before"] > 0 and report["int8_latency_ms_after"] > 0
    pruned = load_checkpoint(tmp_path / "pruned.pt")
    model = pruned.build()  # rebuilt from the stored shapes, loaded weights_only
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert complexity(model, 32).macs == report["macs_after"]
    evaluated = edgecnn_in_process("eval", tmp_path / "pruned.pt", "--json", tmp_path / "e.json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text())["top1"] == pytest.approx(report["top1_finetuned"])


HEAVY = pytest.mark.slow  # a pruned MobileNet's int8 export, reloaded: 35-45 s on one worker


@pytest.mark.parametrize("name, width", [pytest.param("mobilenet_v2", 0.5, marks=HEAVY),
                                         pytest.param("mobilenet_v3_small_edge", 0.5, marks=HEAVY), ("resnet18", 1.0)])
def test_pruned_backbones_reload_and_export_fully_int8(name, width, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, 10, width)
    before = complexity(model, 32)
    pruned = prune_channels(model, model_spec(name).head, 32, 0.5)
    assert complexity(pruned, 32).macs < before.macs * 0.6
    ckpt_path = tmp_path / "pruned.pt"
    pre = Preprocess(32, (0.3,) * 3, (0.37,) * 3)
    save_checkpoint(ckpt_path, Checkpoint(name, 10, [str(i) for i in range(10)], pre, "digits", pruned.state_dict(),
                                          width, structure=layer_shapes(pruned)))
    reloaded = load_checkpoint(ckpt_path).build()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(x), pruned.eval()(x))
    result = edgecnn_in_process("export", ckpt_path, "--int8", "--calibration", "minmax", "--eval-samples", "50",
                                "--out", tmp_path / "out", "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    for artefact in json.loads((tmp_path / "r.json").read_text())["artifacts"]:
        assert artefact["float_ops"] == [] and read_model_file(artefact["path"]).float_ops == []


def test_bad_prune_input(digits_checkpoint, tmp_path):
    for ratio in ("0", "1", "1.5", "-0.2"):
        result = edgecnn("prune", digits_checkpoint, "--ratio", ratio, "--out", tmp_path)
        assert result.returncode == 2 and "--ratio" in result.stderr and "Traceback" not in result.stderr
    assert_clean_error(edgecnn("prune", tmp_path / "missing.pt", "--ratio", "0.5", "--out", tmp_path),
                       "checkpoint not found")
    with pytest.raises(EdgeCNNError, match="must be in"):
        prune_channels(build_model("tinycnn", 10), "classifier", 32, 1.0)


def test_structure_of_another_architecture_is_refused(tmp_path):
    shapes = layer_shapes(build_model("resnet8", 10))
    with pytest.raises(EdgeCNNError, match="another architecture"):
        apply_layer_shapes(build_model("tinycnn", 10), shapes)
    ckpt = Checkpoint("tinycnn", 10, [str(i) for i in range(10)], Preprocess(32), "digits",
                      build_model("tinycnn", 10).state_dict(), structure=shapes)
    save_checkpoint(tmp_path / "bad.pt", ckpt)
    assert_clean_error(edgecnn("eval", tmp_path / "bad.pt"), "another architecture")


def test_recipe_prunes_before_export(tmp_path):
    import yaml

    recipe = {
        "data": {"img_size": 32}, "model": {"name": "tinycnn"}, "train": {"epochs": 3},
        "prune": {"ratio": 0.5, "finetune_epochs": 1},
        "quantize": {"method": "ptq"}, "export": {"formats": ["tflite"]},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = edgecnn_in_process("run", tmp_path / "r.yaml", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    stages = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]
    assert stages["prune"]["status"] == "done"
    assert stages["prune"]["metrics"]["macs_after"] * 2 <= stages["prune"]["metrics"]["macs_before"]
    card = read_model_file(stages["export"]["outputs"]["tflite"]).card
    assert card["source"]["from"].endswith("prune/pruned.pt") and card["quantization"]["int8"]


def test_a_model_torch_pruning_cannot_handle_is_named():
    with pytest.raises(EdgeCNNError, match="cannot prune ShuffleNetV2: .*channel shuffle"):
        prune_channels(build_model("shufflenet_v2_x0_5", 10), "fc", 64, 0.5)
