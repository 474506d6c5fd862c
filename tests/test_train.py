import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import edgecnn, record
from edgecnn.checkpoint import load_checkpoint
from edgecnn.data import load_dataset
from edgecnn.loader import make_loader
from edgecnn.models import FAMILY_DEFAULTS, MODELS
from edgecnn.preprocess import Preprocess
from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig, load_recipe, validate
from edgecnn.train import TrainResult, learning_rate, not_learning_warning, recalibrate_batchnorm, train
from rich.console import Console

TRAIN = ["train", "--model", "tinycnn", "--dataset", "digits", "--img-size", "16", "--batch-size", "16"]


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 10, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def _resolved(model: str, **train) -> TrainConfig:
    return validate(Recipe(model=ModelConfig(model), train=TrainConfig(epochs=3, **train))).train


def test_family_defaults_fill_only_what_the_user_left_unset(tmp_path):
    assert all(spec.family in FAMILY_DEFAULTS for spec in MODELS.values())
    assert (_resolved("mobilenet_v2").lr, _resolved("mobilenet_v2").warmup_epochs) == (0.02, 1.0)
    assert (_resolved("tinycnn").lr, _resolved("tinycnn").warmup_epochs) == (0.1, 0.0)
    assert (_resolved("resnet50", lr=0.05).lr, _resolved("resnet50", lr=0.05).warmup_epochs) == (0.05, 1.0)
    assert _resolved("resnet50", warmup_epochs=0.0).warmup_epochs == 0.0
    assert _resolved("resnet50", optimizer="adamw").lr == 1e-3
    # A run shorter than the family's warm-up still ends with a decaying rate.
    assert validate(Recipe(model=ModelConfig("resnet18"), train=TrainConfig(epochs=1))).train.warmup_epochs == 1 / 3
    (tmp_path / "r.yaml").write_text("model: {name: mobilenet_v2}\ntrain: {lr: 0.3}\n")
    cfg = load_recipe(tmp_path / "r.yaml").train
    assert (cfg.lr, cfg.warmup_epochs) == (0.3, 1.0)


def _train_quietly(tmp_path: Path, **train_options) -> tuple[str, TrainResult]:
    console = Console(file=io.StringIO(), width=200)
    recipe = Recipe(data=DataConfig(img_size=16, batch_size=16), model=ModelConfig("tinycnn", 0.5),
                    train=TrainConfig(device="cpu", **train_options))
    result = train(recipe, tmp_path, console=console)
    return console.file.getvalue(), result


def test_a_learning_run_prints_its_defaults_and_no_warning(tmp_path):
    output, result = _train_quietly(tmp_path, epochs=2)
    assert "tinycnn: edge family defaults lr 0.1, warmup_epochs 0 " in output
    assert "warning" not in output and result.warning is None and result.best > 0.8
    config = load_checkpoint(tmp_path / "last.pt").training["config"]
    assert (config["lr"], config["warmup_epochs"]) == (0.1, 0.0)  # what was used, not "unset"


def test_a_run_that_does_not_learn_is_warned_about(tmp_path):
    output, result = _train_quietly(tmp_path, epochs=2, lr=1e-5)  # far too small to move the weights
    lines = [line for line in output.splitlines() if line.startswith("warning: not learning after epoch 1")]
    assert len(lines) == 1 and "--lr" in lines[0] and result.warning == lines[0]  # once, not every epoch
    assert result.history[-1]["epoch"] == 2  # a warning, not an error


def test_not_learning_warning_names_the_fix():
    cfg = TrainConfig(lr=0.1, warmup_epochs=0.0)
    diverging = not_learning_warning({"epoch": 1, "train_loss": 7.5, "top1": 0.16}, 10, cfg)
    assert "--lr 0.02, now 0.1" in diverging and "--warmup-epochs 1" in diverging
    assert "--warmup-epochs" not in not_learning_warning({"epoch": 1, "train_loss": 7.5, "top1": 0.16}, 10,
                                                         TrainConfig(lr=0.1, warmup_epochs=1.0))
    assert not_learning_warning({"epoch": 1, "train_loss": 7.5, "top1": 0.35}, 10, cfg) is None  # above chance
    assert not_learning_warning({"epoch": 1, "train_loss": 1.2, "top1": 0.15}, 10, cfg) is None  # loss falling


def test_batchnorm_recalibration_uses_the_data():
    """After recalibration the running mean is the data's mean, whatever momentum the layer has."""
    ds = load_dataset("digits")
    pre = Preprocess(img_size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert len(ds.train) == 2 * 719  # equal batches: an average of batch means is then the data mean
    loader = make_loader(ds.train, pre, 719, train=False)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.01))
    recalibrate_batchnorm(model, loader, pre, torch.device("cpu"), batches=1000)
    expected = torch.tensor(ds.train.array, dtype=torch.float64).mean() / 255
    assert model[0].running_mean[0].item() == pytest.approx(expected.item(), rel=1e-4)
    assert model[0].momentum == 0.01 and not model.training


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.reliability  # an injected fault (see test_faults.py)
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL mid-epoch; --resume continues from last.pt and ends exactly where an uninterrupted run does."""
    epochs = "4"
    whole = edgecnn(*TRAIN, "--epochs", epochs, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "edgecnn", *TRAIN, "--epochs", epochs, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "last.pt", proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("*.tmp")) or all(p.name.startswith(".") for p in out.glob("*.tmp"))
    done = load_checkpoint(out / "last.pt").training["epoch"]
    assert 1 <= done < int(epochs)

    resumed = edgecnn(*TRAIN, "--epochs", epochs, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'last.pt'} after epoch {done}" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(out / "last.pt")
    assert [h["epoch"] for h in b.training["history"]] == list(range(1, int(epochs) + 1))
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=1e-4, atol=1e-5, msg=key)
    record("faults: SIGKILL during training", injected=1, half_written_checkpoints=0)


def test_resume_refuses_another_model(tmp_path):
    assert edgecnn(*TRAIN, "--epochs", "1", "--out", tmp_path).returncode == 0
    result = edgecnn("train", "--model", "resnet8", "--dataset", "digits", "--epochs", "2", "--out", tmp_path,
                     "--resume")
    assert result.returncode == 2 and "cannot resume" in result.stderr and "Traceback" not in result.stderr


def test_checkpoints_load_without_running_code(digits_checkpoint):
    payload = torch.load(digits_checkpoint, weights_only=True)
    assert payload["format"] == "edgecnn-checkpoint/1"
    assert payload["preprocess"]["img_size"] == 32 and len(payload["labels"]) == 10


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this Python")
def test_ddp_with_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29531", "-m", "edgecnn", *TRAIN, "--epochs", "3",
         "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.metrics["top1"] >= 0.8
    # Rank 0 alone prints the table: three epoch rows, not six.
    rows = [line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3
