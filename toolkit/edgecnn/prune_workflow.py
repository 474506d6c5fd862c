"""`edgecnn prune`: prune a checkpoint, fine-tune it, and measure what it changed — MACs, parameters,
accuracy before / right after / after fine-tuning, and the int8 latency of the exported model on this CPU
(MACs alone do not say what a device will gain)."""

from __future__ import annotations

import copy
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from edgecnn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgecnn.data import load_dataset, make_loader
from edgecnn.models import model_spec
from edgecnn.prune import complexity, layer_shapes, prune_channels
from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig
from edgecnn.train import evaluate, recalibrate_batchnorm, train

LATENCY_ROUNDS, LATENCY_RUNS = 7, 20


def _top1(model: torch.nn.Module, ckpt: Checkpoint, loader) -> float:
    return evaluate(model, loader, ckpt.preprocess, torch.device("cpu"))["top1"]


def int8_latency_ms(models: dict[str, tuple[torch.nn.Module, Checkpoint]], folder: Path) -> dict[str, float]:
    """Export each model to int8 .tflite and time them interleaved (A B A B ..., 1 thread, median)."""
    from edgecnn.export import ExportOptions, export
    from edgecnn.export.sources import ExportSource, dataset_images
    from edgecnn.runtime import load

    paths = {}
    for name, (model, ckpt) in models.items():
        source = ExportSource(model, ckpt.preprocess, ckpt.labels, ckpt.model, ckpt.width, ckpt.dataset)
        images = dataset_images(ckpt.dataset, "train", ckpt.preprocess, 100)
        artefact = export(source, ExportOptions(formats=("tflite",), int8=True, allow_float_ops=True),
                          folder / name, images, images.head(50), Console(file=io.StringIO()))[0]
        paths[name] = artefact.path
    backends = {name: load(path, threads=1).backend for name, path in paths.items()}
    samples = {name: np.zeros((1, *b.input.shape[1:]), b.input.dtype) for name, b in backends.items()}
    times: dict[str, list[float]] = {name: [] for name in backends}
    import time

    for _ in range(LATENCY_ROUNDS):
        for name, backend in backends.items():
            backend.run(samples[name])
            for _ in range(LATENCY_RUNS):
                start = time.perf_counter()
                backend.run(samples[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def prune_checkpoint(path: str | Path, ratio: float, out_dir: str | Path, *, global_pruning: bool = False,
                     round_to: int | None = 8, finetune_epochs: int = 0, lr: float = 0.01, batch_size: int = 64,
                     console: Console | None = None, measure_latency: bool = True) -> dict:
    console = console or Console()
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(path)
    original = ckpt.build()
    size = ckpt.preprocess.img_size
    dataset = load_dataset(ckpt.dataset)
    test_loader = make_loader(dataset.test, ckpt.preprocess, 256, train=False)
    before, accuracy_before = complexity(original, size), _top1(original, ckpt, test_loader)

    pruned = prune_channels(copy.deepcopy(original), model_spec(ckpt.model).head, size, ratio, global_pruning,
                            round_to)
    after = complexity(pruned, size)
    # Pruning leaves BatchNorm statistics of the removed channels' neighbours stale: re-estimate before scoring.
    train_loader = make_loader(dataset.train, ckpt.preprocess, batch_size, train=False)
    recalibrate_batchnorm(pruned, train_loader, ckpt.preprocess, torch.device("cpu"), 20)
    accuracy_pruned = _top1(pruned, ckpt, test_loader)
    console.print(f"pruned {ratio:.0%} of channels: MACs {before.macs:,} → {after.macs:,}, "
                  f"params {before.params:,} → {after.params:,}, top-1 {accuracy_before:.2%} → {accuracy_pruned:.2%}")

    accuracy_finetuned = None
    if finetune_epochs > 0:
        recipe = Recipe(name="prune", data=DataConfig(dataset=ckpt.dataset, img_size=size, batch_size=batch_size,
                                                      mean=list(ckpt.preprocess.mean), std=list(ckpt.preprocess.std),
                                                      crop=ckpt.preprocess.crop),
                        model=ModelConfig(ckpt.model, ckpt.width), train=TrainConfig(epochs=finetune_epochs, lr=lr))
        result = train(recipe, out_dir / "finetune", console=console, dataset=dataset, model=pruned)
        pruned = load_checkpoint(result.best_path).build()
        accuracy_finetuned = result.best_top1
    save_checkpoint(out_dir / "pruned.pt", Checkpoint(
        model=ckpt.model, width=ckpt.width, num_classes=ckpt.num_classes, labels=ckpt.labels,
        preprocess=ckpt.preprocess, dataset=ckpt.dataset, state_dict=pruned.state_dict(),
        metrics={"top1": accuracy_finetuned if accuracy_finetuned is not None else accuracy_pruned},
        recipe_hash=ckpt.recipe_hash, structure=layer_shapes(pruned),
    ))
    report = {
        "checkpoint": str(out_dir / "pruned.pt"), "ratio": ratio, "global": global_pruning, "round_to": round_to,
        "macs_before": before.macs, "macs_after": after.macs, "params_before": before.params,
        "params_after": after.params, "top1_before": accuracy_before, "top1_pruned": accuracy_pruned,
        "top1_finetuned": accuracy_finetuned, "finetune_epochs": finetune_epochs,
    }
    if measure_latency:
        with tempfile.TemporaryDirectory() as tmp:
            latency = int8_latency_ms({"before": (original, ckpt), "after": (pruned, ckpt)}, Path(tmp))
        report.update(int8_latency_ms_before=latency["before"], int8_latency_ms_after=latency["after"],
                      latency_method=f"int8 .tflite, 1 thread, median of {LATENCY_ROUNDS}×{LATENCY_RUNS} runs, "
                                     "before/after interleaved")
    return report
