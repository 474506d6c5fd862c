"""`edgecnn prune`: prune a checkpoint, fine-tune it, and measure what it changed — MACs, parameters,
accuracy before / right after / after fine-tuning, and the int8 latency of the exported model on this CPU
(MACs alone do not say what a device will gain)."""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from edgecnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecnn.data import load_dataset
from edgecnn.errors import EdgeCNNError
from edgecnn.loader import make_loader
from edgecnn.models import model_spec
from edgecnn.prune import layer_shapes, prune_channels
from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig
from edgecnn.summary import complexity
from edgecnn.train import evaluate, recalibrate_batchnorm, train

LATENCY_ROUNDS, LATENCY_RUNS = 7, 20


def _top1(model: torch.nn.Module, ckpt: Checkpoint, loader) -> float:
    return evaluate(model, loader, ckpt.preprocess, torch.device("cpu"))["top1"]


def int8_latency_ms(models: dict[str, tuple[torch.nn.Module, Checkpoint]], folder: Path) -> dict[str, float]:
    """Export each model to int8 .tflite and time them interleaved (1 thread, median)."""
    from edgecnn.export import ExportOptions, export
    from edgecnn.export.sources import ExportSource, dataset_images
    from edgecnn.export.verify import interleaved_latency_ms

    paths = {}
    for name, (model, ckpt) in models.items():
        source = ExportSource(model, ckpt.preprocess, ckpt.labels, ckpt.model, ckpt.width, ckpt.dataset)
        images = dataset_images(ckpt.dataset, "train", ckpt.preprocess, 100)
        artefact = export(source, ExportOptions(formats=("tflite",), int8=True, allow_float_ops=True),
                          folder / name, images, images.head(50), Console(file=io.StringIO()))[0]
        if artefact.status != "ok":
            raise EdgeCNNError(f"cannot time the {name} model: int8 export {artefact.status} ({artefact.error})")
        paths[name] = Path(artefact.path)
    return interleaved_latency_ms(paths, LATENCY_ROUNDS, LATENCY_RUNS)


def prune_checkpoint(path: str | Path, ratio: float, out_dir: str | Path, *, steps: int = 1,
                     global_pruning: bool = False, round_to: int | None = 8, finetune_epochs: int = 0,
                     lr: float = 0.01, batch_size: int = 64, console: Console | None = None,
                     measure_latency: bool = True) -> dict:
    """Prune `ratio` of the channels in `steps` rounds (each removing the same share of what is left, each
    followed by `finetune_epochs` of fine-tuning); write out_dir/pruned.pt and return the report."""
    console = console or Console()
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(path)
    original = ckpt.build()
    size, head = ckpt.preprocess.img_size, model_spec(ckpt.model).head
    dataset = load_dataset(ckpt.dataset)
    test_loader = make_loader(dataset.test, ckpt.preprocess, 256, train=False)
    train_loader = make_loader(dataset.train, ckpt.preprocess, batch_size, train=False)
    before, accuracy_before = complexity(original, size), _top1(original, ckpt, test_loader)
    step_ratio = 1.0 - (1.0 - ratio) ** (1.0 / steps)

    model, rounds = copy.deepcopy(original), []
    for step in range(1, steps + 1):
        model = prune_channels(model, head, size, step_ratio, global_pruning, round_to)
        # Pruning leaves BatchNorm statistics stale for the remaining channels: re-estimate before scoring.
        recalibrate_batchnorm(model, train_loader, ckpt.preprocess, torch.device("cpu"), 20)
        shape = complexity(model, size)
        row = {"step": step, "macs": shape.macs, "params": shape.params, "top1_pruned": _top1(model, ckpt, test_loader),
               "top1_finetuned": None}
        console.print(f"step {step}/{steps}: MACs {before.macs:,} → {shape.macs:,}, top-1 {accuracy_before:.2%} → "
                      f"{row['top1_pruned']:.2%} right after pruning")
        if finetune_epochs > 0:
            recipe = Recipe(
                name="prune", seed=step,
                data=DataConfig(dataset=ckpt.dataset, img_size=size, batch_size=batch_size,
                                mean=list(ckpt.preprocess.mean), std=list(ckpt.preprocess.std),
                                crop=ckpt.preprocess.crop),
                model=ModelConfig(ckpt.model, ckpt.width),
                train=TrainConfig(epochs=finetune_epochs, lr=lr, warmup_epochs=0.0),  # fine-tuning: no warm-up
            )
            result = train(recipe, out_dir / f"finetune{step}", console=console, dataset=dataset, model=model)
            model = load_checkpoint(result.best_path).build()
            row["top1_finetuned"] = result.best
        rounds.append(row)

    final = rounds[-1]
    top1 = final["top1_finetuned"] if final["top1_finetuned"] is not None else final["top1_pruned"]
    save_checkpoint(out_dir / "pruned.pt", Checkpoint(
        model=ckpt.model, width=ckpt.width, num_classes=ckpt.num_classes, labels=ckpt.labels,
        preprocess=ckpt.preprocess, dataset=ckpt.dataset, state_dict=model.state_dict(), metrics={"top1": top1},
        recipe_hash=ckpt.recipe_hash, structure=layer_shapes(model),
    ))
    report = {
        "checkpoint": str(out_dir / "pruned.pt"), "ratio": ratio, "steps": rounds, "global": global_pruning,
        "round_to": round_to, "finetune_epochs": finetune_epochs,
        "macs_before": before.macs, "macs_after": final["macs"], "params_before": before.params,
        "params_after": final["params"], "top1_before": accuracy_before, "top1_pruned": final["top1_pruned"],
        "top1_finetuned": final["top1_finetuned"],
    }
    if measure_latency:
        with tempfile.TemporaryDirectory() as tmp:
            latency = int8_latency_ms({"before": (original, ckpt), "after": (model, ckpt)}, Path(tmp))
        report.update(int8_latency_ms_before=latency["before"], int8_latency_ms_after=latency["after"],
                      latency_method=f"int8 .tflite, 1 thread, median of {LATENCY_ROUNDS}×{LATENCY_RUNS} runs, "
                                     "before/after interleaved")
    return report
