import json

import click
import pytest
import yaml
from conftest import ROOT, assert_clean_error, edgecnn, edgecnn_in_process, edgecnn_without
from edgecnn.checkpoint import load_checkpoint
from edgecnn.runtime.modelfile import read_model_file

VERBS = ["run", "train", "eval", "prune", "export", "bench", "watch", "summary", "info", "device setup",
         "device list"]


@pytest.mark.parametrize("verb", [None, *VERBS])
def test_help(verb):
    result = edgecnn(*(verb.split() if verb else []), "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_option_has_help_and_one_meaning_per_word():
    """--help is complete, and an option spelt the same in two verbs takes the same kind of value."""
    from edgecnn.cli import cli

    kinds: dict[str, set[str]] = {}
    for path, command in _commands(cli):
        assert command.help, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
                kind = "flag" if param.is_flag else type(param.type).__name__
                kinds.setdefault(param.opts[0], set()).add(kind)
    mixed = {option: k for option, k in kinds.items() if len(k) > 1}
    assert not mixed, mixed
    assert {"--batch", "--samples", "--model-file"}.isdisjoint(kinds)


def test_json_dash_prints_json_alone(digits_int8):
    shown = edgecnn("info", digits_int8["onnx"], "--json", "-")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["card"]["labels"] == [str(d) for d in range(10)]
    table = edgecnn("summary", digits_int8["tflite"], "--json", "-")
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout)["layers"]


def test_train_then_eval_reaches_90_percent(digits_checkpoint, tmp_path):
    out = digits_checkpoint.parent
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    result = edgecnn_in_process("eval", digits_checkpoint, "--dataset", "digits", "--json", tmp_path / "e.json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["top1"] >= 0.90
    assert metrics["top1"] <= metrics["top5"] <= 1.0
    assert metrics["samples"] == 359  # the held-out 20 % of scikit-learn's 1797 digits
    assert "top-1" in result.stdout


def test_train_prints_per_epoch_table(tmp_path):
    result = edgecnn_in_process("train", "--model", "tinycnn", "--dataset", "digits", "--epochs", "2", "--img-size",
                                "16", "--out", tmp_path, "--json", tmp_path / "h.json")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    history = json.loads((tmp_path / "h.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.preprocess.img_size == 16 and ckpt.labels == [str(d) for d in range(10)]
    assert ckpt.training is None and load_checkpoint(tmp_path / "last.pt").training["epoch"] == 2


def test_run_quickstart_then_skip_then_rerun_on_change(tmp_path):
    out = tmp_path / "out"
    first = edgecnn_in_process("run", ROOT / "recipes" / "quickstart.yaml", "--out", out)
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "report.json").read_text())
    train = report["stages"]["train"]
    assert train["status"] == "done" and train["metrics"]["best_top1"] >= 0.9
    assert load_checkpoint(train["outputs"]["best"]).metrics["top1"] == train["metrics"]["best_top1"]
    # The quickstart ends with verified int8 files and their table.
    export = report["stages"]["export"]
    assert export["status"] == "done" and set(export["outputs"]) == {"tflite", "onnx"}
    for fmt in ("tflite", "onnx"):
        assert read_model_file(export["outputs"][fmt]).float_ops == []
        assert export["metrics"][f"{fmt}_agreement"] >= 0.97
    assert "sure agr." in first.stdout and "tinycnn_int8.tflite" in first.stdout

    again = edgecnn_in_process("run", ROOT / "recipes" / "quickstart.yaml", "--out", out)
    assert again.returncode == 0, again.stderr
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages["train"]["status"] == "skipped" and stages["export"]["status"] == "skipped"
    assert "skipped" in again.stdout

    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe["export"]["formats"] = ["onnx"]
    only_export = tmp_path / "onnx_only.yaml"
    only_export.write_text(yaml.safe_dump(recipe))
    assert edgecnn_in_process("run", only_export, "--out", out).returncode == 0
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages["train"]["status"] == "skipped" and stages["export"]["status"] == "done"
    assert set(stages["export"]["outputs"]) == {"onnx"}

    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe["train"]["epochs"] = 1
    recipe["quantize"]["method"], recipe["export"]["formats"] = "none", []  # the training stage is under test
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(recipe))
    third = edgecnn_in_process("run", changed, "--out", out)
    assert third.returncode == 0, third.stderr
    stage = json.loads((out / "report.json").read_text())["stages"]["train"]
    assert stage["status"] == "done" and stage["metrics"]["epochs"] == 1


def test_run_skips_nothing_when_an_output_is_gone(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {img_size: 16}\ntrain: {epochs: 1}\n")
    assert edgecnn_in_process("run", recipe, "--out", tmp_path / "o").returncode == 0
    (tmp_path / "o" / "train" / "best.pt").unlink()
    result = edgecnn_in_process("run", recipe, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["stages"]["train"]["status"] == "done"
    assert (tmp_path / "o" / "train" / "best.pt").is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["eval", "missing.pt"], "checkpoint not found"),
        (["train", "--model", "mobilenet_v9", "--dataset", "digits", "--out", "o"], "did you mean 'mobilenet_v2'"),
        (["train", "--model", "tinycnn", "--dataset", "digitz", "--out", "o"], "did you mean 'digits'"),
        (["train", "--model", "tinycnn", "--dataset", "imagefolder:/nonexistent", "--out", "o"], "folder not found"),
        (["train", "--model", "tinycnn", "--dataset", "digits", "--out", "o", "--epochs", "0"], "--epochs"),
        (["train", "--model", "tinycnn", "--dataset", "digits", "--out", "o", "--batch-size", "-1"], "--batch-size"),
        (["train", "--model", "resnet18", "--dataset", "digits", "--out", "o", "--width", "0.5"], "no width"),
        (["train", "--model", "tinycnn", "--dataset", "digits", "--out", "o", "--weights", "nope.pth"],
         "file not found"),
        (["run", "nope.yaml"], "recipe not found"),
        (["train", "--model", "tinycnn", "--dataset", "digits", "--out", "o", "--img-size", "100000"],
         "--img-size"),
        (["summary", "tinycnn", "--num-classes", "100000000"], "--num-classes"),
        (["summary", "mobilenet_v9"], "did you mean 'mobilenet_v2'"),
        (["adopt", "x.onnx", "--out", "o"], "Missing option '--task'. Choose from: classify, detect"),
    ],
)
def test_bad_input_gives_one_line(args, fragment, tmp_path):
    result = edgecnn(*args, cwd=tmp_path)
    assert_clean_error(result, fragment)  # click's usage errors too: one line, exit 2
    assert result.returncode == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--model", "mobilenet_v9", "--dataset", "digits"], "did you mean 'mobilenet_v2'"),
        (["train", "--model", "resnet18", "--dataset", "digits", "--width", "0.5"], "no width"),
        (["run", "{tmp}/bad.yaml"], "did you mean 'mobilenet_v2'"),
        (["eval", "{tmp}/missing.pt"], "checkpoint not found"),
        (["prune", "{tmp}/missing.pt", "--ratio", "0.5"], "checkpoint not found"),
        (["summary", "mobilenet_v9"], "did you mean 'mobilenet_v2'"),
        (["summary", "{tmp}/missing.pt"], "checkpoint not found"),
        (["export", "{tmp}/missing.pt"], "checkpoint not found"),
        (["export", "{tmp}/missing.pt", "--format", "tflit"], "did you mean 'tflite'"),
        (["export", "--model", "mobilenet_v9", "--weights", "w.pth"], "did you mean 'mobilenet_v2'"),
        # A file that exists stands in for the checkpoint: these are refused before it is read.
        (["export", "{tmp}/bad.yaml", "--adaround"], "add --int8"),
        (["export", "{tmp}/bad.yaml", "--int8", "--calib-video", "{tmp}/missing.mp4"], "missing.mp4: no such file"),
        (["export", "{tmp}/bad.yaml", "--int8", "--calib-video", "{tmp}/bad.yaml"], "no frame could be read"),
        (["export", "{tmp}/bad.yaml", "--int8", "--calib-video", "{tmp}/bad.yaml", "--calib-images", "{tmp}"],
         "not both"),
        (["bench", "{tmp}/missing.pt", "--all-formats"], "checkpoint not found"),
    ],
)
def test_bad_input_is_refused_before_torch_is_imported(args, fragment, tmp_path):
    """What the command line alone can get wrong is refused without importing torch: at once, and the same on a
    machine where torch cannot be imported."""
    (tmp_path / "bad.yaml").write_text("name: bad\nmodel: {name: mobilenet_v9}\ndata: {dataset: digits}\n")
    out = ["--out", str(tmp_path / "o")] if args[0] in ("train", "prune", "export") else []
    result = edgecnn_without("torch", *(a.format(tmp=tmp_path) for a in args), *out)
    assert_clean_error(result, fragment)
    assert not (tmp_path / "o").exists()


def test_corrupt_and_foreign_checkpoints(tmp_path, digits_checkpoint):
    data = digits_checkpoint.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 64)
    import torch

    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pt")
    for name, fragment in [("truncated.pt", "corrupt"), ("random.pt", "corrupt"), ("plain.pt", "not an edgecnn")]:
        assert_clean_error(edgecnn("eval", tmp_path / name), fragment)


def test_eval_on_a_dataset_with_other_classes(digits_checkpoint, tmp_path):
    import cv2
    import numpy as np

    for c in ("a", "b", "c"):
        (tmp_path / c).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / c / f"{i}.png"), np.full((8, 8, 3), i * 40, np.uint8))
    assert_clean_error(edgecnn("eval", digits_checkpoint, "--dataset", f"imagefolder:{tmp_path}"),
                       "predicts 10 classes", "has 3")
