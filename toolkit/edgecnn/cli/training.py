"""Verbs that make and change checkpoints: `run` (a recipe), `train`, `eval`, `prune`."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.table import Table

from edgecnn.cli.common import IMG_SIZE, console, json_option, write_json_output
from edgecnn.errors import EdgeCNNError

DEVICE_HELP = "Where PyTorch runs: auto (cuda when present), cpu or cuda."


@click.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Output folder [default: runs/<recipe name>].")
@click.option("--force", is_flag=True, help="Re-run every stage even if its inputs did not change.")
def run(recipe_path: Path, out_dir: Path | None, force: bool) -> None:
    """Run a recipe's stages in order (train, prune, export) and write OUT/report.json."""
    from edgecnn.recipe import load_recipe

    recipe = load_recipe(recipe_path)  # checked before the workflows (and torch) are imported

    from edgecnn.workflows.recipe import run_recipe

    out_dir = out_dir or Path("runs") / recipe.name
    report = run_recipe(recipe, out_dir, console, force=force)
    table = Table(title=f"{recipe.name} → {out_dir}")
    for column in ("stage", "status", "seconds", "results"):
        table.add_column(column)
    for name, entry in report["stages"].items():
        results = ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.get("metrics", {}).items()
        )
        table.add_row(name, entry["status"], f"{entry.get('seconds', 0):.1f}", results)
    console.print(table)
    console.print(f"report: {out_dir / 'report.json'}")


@click.command(name="train")
@click.option("--model", "model_name", required=True, help="Registry model name, e.g. tinycnn, mobilenet_v2.")
@click.option("--dataset", required=True, help="digits, fashion-mnist[:DIR], cifar10[:DIR] or imagefolder:DIR.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Writes best.pt, last.pt.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True, help="Passes over the data.")
@click.option("--img-size", type=IMG_SIZE,
              help="[default: 224 with --weights (their pretraining size), else 32]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate [default: the model family's: 0.1 tinycnn/resnet8, 0.02 MobileNet/ShuffleNet, "
                   "0.01 ResNet/ConvNeXt/EfficientNet; 1e-3 with --optimizer adamw].")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
              help="SGD with momentum 0.9, or AdamW.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Channel width multiplier of the registry model (0.5 = half the channels).")
@click.option("--weights", help="Pretrained weights: a local .pth state_dict or a torchvision name (DEFAULT).")
@click.option("--augment", default="", help="Comma-separated: flip, crop.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0),
              help="Epochs over which the learning rate rises linearly to --lr [default: the model family's: 0 for "
                   "tinycnn/resnet8, else 1, at most a third of --epochs].")
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Share of the target spread over the other classes.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Data-loading processes (0 loads in the training process).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights, shuffling and augmentation.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--freeze", type=click.Choice(["none", "backbone"]), default="none", show_default=True,
              help="Train only the head (with --weights), until --unfreeze-at.")
@click.option("--unfreeze-at", type=click.IntRange(min=1), help="Epoch (0-based) from which backbone blocks train.")
@click.option("--unfreeze-blocks", type=click.IntRange(min=0), default=0, show_default=True,
              help="How many top backbone blocks --unfreeze-at unfreezes (0 = all).")
@click.option("--backbone-lr", type=click.FloatRange(min=0, min_open=True), help="Backbone learning rate [--lr].")
@click.option("--val", help="A detector's held-out dataset (coco:PATH or yolo:PATH), scored each epoch.")
@json_option("the training history")
def train_cmd(model_name: str, dataset: str, out_dir: Path, epochs: int, img_size: int | None, batch_size: int,
              lr: float | None, optimizer: str, width: float, weights: str | None, augment: str,
              warmup_epochs: float | None, label_smoothing: float, workers: int, seed: int, device: str, resume: bool,
              freeze: str, unfreeze_at: int | None, unfreeze_blocks: int, backbone_lr: float | None,
              val: str | None, json_path: Path | None) -> None:
    """Train a model on a dataset; writes OUT/best.pt and OUT/last.pt and prints a per-epoch table. A detector
    (--model ssdlite_...) trains on a COCO or YOLO dataset and is scored on --val."""
    from edgecnn.models import DETECTORS
    from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig, UnfreezeConfig, validate

    detect = model_name in DETECTORS
    recipe = validate(
        Recipe(
            name="train",
            task="detect" if detect else "classify",
            seed=seed,
            data=DataConfig(dataset=dataset, img_size=img_size, batch_size=batch_size, workers=workers,
                            augment=[a for a in augment.split(",") if a], val=val),
            model=ModelConfig(name=model_name, width=width, weights=weights),
            train=TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr, warmup_epochs=warmup_epochs,
                              label_smoothing=label_smoothing, device=device, freeze=freeze, backbone_lr=backbone_lr,
                              unfreeze=UnfreezeConfig(unfreeze_at, unfreeze_blocks) if unfreeze_at else None),
        )
    )
    if detect:
        from edgecnn.detection.train import train_detector as train
    else:
        from edgecnn.train import train
    result = train(recipe, out_dir, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"best {result.metric} {result.best:.4f} → {result.best_path}; last → {result.last_path}")
        write_json_output(json_path, {f"best_{result.metric}": result.best, f"last_{result.metric}": result.last,
                                      "lr": recipe.train.lr, "warmup_epochs": recipe.train.warmup_epochs,
                                      "seconds": result.seconds, "history": result.history})


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", help="Dataset to evaluate on [default: the one the checkpoint was trained on].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which part of the dataset.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per step.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@json_option("{top1, top5, samples, ...}; a detector's {map50, map, samples, ...}")
def eval_cmd(checkpoint: Path, dataset: str | None, split: str, batch_size: int, device: str,
             json_path: Path | None) -> None:
    """Evaluate a checkpoint: top-1 and top-5 accuracy on a dataset split; a detector's mAP@0.5 and
    mAP@0.5:0.95 on a COCO or YOLO dataset (its held-out one by default)."""
    from edgecnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)

    from edgecnn.data import load_dataset, recorded_dataset
    from edgecnn.loader import make_loader
    from edgecnn.train import evaluate, resolve_device

    if ckpt.task == "detect":
        _eval_detector(checkpoint, ckpt, dataset, batch_size, resolve_device(device), json_path)
        return
    with recorded_dataset(dataset):
        data = load_dataset(dataset or ckpt.dataset)
    if len(data.classes) != ckpt.num_classes:
        raise EdgeCNNError(
            f"{checkpoint} predicts {ckpt.num_classes} classes but {data.name} has {len(data.classes)}"
        )
    dev = resolve_device(device)
    model = ckpt.build().to(dev)
    loader = make_loader(data.split(split), ckpt.preprocess, batch_size, train=False)
    metrics = evaluate(model, loader, ckpt.preprocess, dev, show_progress=console.is_terminal)
    table = Table(title=f"{checkpoint} on {data.name} ({split})")
    for column in ("top-1", "top-5", "samples"):
        table.add_column(column, justify="right")
    table.add_row(f"{metrics['top1']:.4f}", f"{metrics['top5']:.4f}", str(metrics["samples"]))
    console.print(table)
    write_json_output(json_path, {**metrics, "checkpoint": str(checkpoint), "dataset": data.name, "split": split})


def _eval_detector(path: Path, ckpt, dataset: str | None, batch_size: int, device, json_path: Path | None) -> None:
    from edgecnn.detection.data import load_box_dataset
    from edgecnn.detection.train import evaluate, make_box_loader

    spec = dataset or ckpt.val_dataset
    if not spec:
        raise EdgeCNNError(f"{path}: no held-out dataset recorded; give --dataset coco:PATH or yolo:PATH")
    data = load_box_dataset(spec)
    if data.classes != ckpt.labels:
        raise EdgeCNNError(f"{path} detects {', '.join(ckpt.labels)} but {spec} labels {', '.join(data.classes)}")
    loader = make_box_loader(data, ckpt.preprocess, min(batch_size, 32), train=False)  # 320 px images: 32 is plenty
    metrics = evaluate(ckpt.build().to(device), loader, ckpt.preprocess, device, len(data.classes))
    table = Table(title=f"{path} on {spec}")
    for column in ("mAP@0.5", "mAP@0.5:0.95", "images", "boxes"):
        table.add_column(column, justify="right")
    table.add_row(f"{metrics['map50']:.4f}", f"{metrics['map']:.4f}", str(len(data)), str(metrics["truth_boxes"]))
    console.print(table)
    write_json_output(json_path, {**metrics, "samples": len(data), "checkpoint": str(path), "dataset": spec})


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--ratio", required=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of channels to remove, in (0, 1).")
@click.option("--global", "global_pruning", is_flag=True, help="Rank channels across layers, not per layer.")
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True,
              help="Keep channel counts multiples of this (odd widths run slowly in XNNPACK/onnxruntime).")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Prune iteratively in this many rounds, fine-tuning after each.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True, help="Per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Fine-tuning learning rate.")
@click.option("--no-latency", is_flag=True, help="Skip the int8 latency measurement (it exports both models).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Writes OUT/pruned.pt.")
@json_option("the report (MACs, parameters, top-1 and int8 latency before and after)")
def prune(checkpoint: Path, ratio: float, global_pruning: bool, round_to: int, steps: int, finetune_epochs: int,
          lr: float, no_latency: bool, out_dir: Path, json_path: Path | None) -> None:
    """Remove channels (structured pruning), fine-tune, and report MACs, accuracy and int8 latency."""
    from edgecnn.checkpoint import existing_checkpoint

    existing_checkpoint(checkpoint)

    from edgecnn.workflows.prune import prune_checkpoint

    report = prune_checkpoint(checkpoint, ratio, out_dir, steps=steps, global_pruning=global_pruning, round_to=round_to,
                              finetune_epochs=finetune_epochs, lr=lr, console=console,
                              measure_latency=not no_latency)
    table = Table(title=f"{checkpoint} → {report['checkpoint']}")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    table.add_row("MACs", f"{report['macs_before']:,}", f"{report['macs_after']:,}")
    table.add_row("parameters", f"{report['params_before']:,}", f"{report['params_after']:,}")
    finetuned = report["top1_finetuned"]
    table.add_row("top-1", f"{report['top1_before']:.2%}",
                  f"{report['top1_pruned']:.2%} pruned" + (f", {finetuned:.2%} fine-tuned" if finetuned else ""))
    if "int8_latency_ms_before" in report:
        table.add_row("int8 latency (ms)", f"{report['int8_latency_ms_before']:.3f}",
                      f"{report['int8_latency_ms_after']:.3f}")
    console.print(table)
    write_json_output(json_path, report)
