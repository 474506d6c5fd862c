"""The `edgecnn` command: thin click verbs that parse options and call the modules that do the work.

Heavy imports (torch) happen inside the verbs, so `edgecnn --help` stays fast and the runtime verbs work
without torch installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgecnn import __version__
from edgecnn.atomic import write_json
from edgecnn.errors import EdgeCNNError

console = Console(highlight=False, soft_wrap=True)


def _write_json(path: Path | None, obj) -> None:
    if path is not None:
        write_json(path, obj)
        console.print(f"wrote {path}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecnn")
def cli() -> None:
    """edgecnn: train compact image classifiers and ship them as verified int8 .tflite/.onnx files."""


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Output folder [default: runs/<recipe name>].")
@click.option("--force", is_flag=True, help="Re-run every stage even if its inputs did not change.")
def run(recipe_path: Path, out_dir: Path | None, force: bool) -> None:
    """Run a recipe's stages in order (train, ...) and write OUT/report.json."""
    from edgecnn.pipeline import run_recipe
    from edgecnn.recipe import load_recipe

    recipe = load_recipe(recipe_path)
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


@cli.command(name="train")
@click.option("--model", "model_name", required=True, help="Registry model name, e.g. tinycnn, mobilenet_v2.")
@click.option("--dataset", required=True, help="digits, fashion-mnist[:DIR], cifar10[:DIR] or imagefolder:DIR.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Writes best.pt, last.pt.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--img-size", type=click.IntRange(min=8), default=32, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[default: 0.1 for sgd, 1e-3 for adamw]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--weights", help="Pretrained weights: a local .pth state_dict or a torchvision name (DEFAULT).")
@click.option("--augment", default="", help="Comma-separated: flip, crop.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the training history as JSON.")
def train_cmd(model_name, dataset, out_dir, epochs, img_size, batch_size, lr, optimizer, width, weights, augment,
              warmup_epochs, label_smoothing, workers, seed, device, resume, json_path) -> None:
    """Train a model on a dataset; writes OUT/best.pt and OUT/last.pt and prints a per-epoch table."""
    from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig, validate
    from edgecnn.train import train

    recipe = validate(
        Recipe(
            name="train",
            seed=seed,
            data=DataConfig(dataset=dataset, img_size=img_size, batch_size=batch_size, workers=workers,
                            augment=[a for a in augment.split(",") if a]),
            model=ModelConfig(name=model_name, width=width, weights=weights),
            train=TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr or (0.1 if optimizer == "sgd" else 1e-3),
                              warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, device=device),
        )
    )
    result = train(recipe, out_dir, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"best top-1 {result.best_top1:.4f} → {result.best_path}; last → {result.last_path}")
        _write_json(json_path, {"best_top1": result.best_top1, "last_top1": result.last_top1,
                                "seconds": result.seconds, "history": result.history})


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--dataset", help="Dataset to evaluate on [default: the one the checkpoint was trained on].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write {top1, top5, samples, ...}.")
def eval_cmd(checkpoint: Path, dataset: str | None, split: str, batch_size: int, device: str,
             json_path: Path | None) -> None:
    """Evaluate a checkpoint: top-1 and top-5 accuracy on a dataset split."""
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.data import load_dataset, make_loader
    from edgecnn.train import evaluate, resolve_device

    ckpt = load_checkpoint(checkpoint)
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
    _write_json(json_path, {**metrics, "checkpoint": str(checkpoint), "dataset": data.name, "split": split})


def main() -> None:
    """Entry point: one clear line and a non-zero exit for bad input, never a traceback."""
    sys.stdout.reconfigure(line_buffering=True)  # per-epoch rows reach a log file as they happen
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("edgecnn: interrupted", file=sys.stderr)
        sys.exit(130)
    except EdgeCNNError as e:
        print(f"edgecnn: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("EDGECNN_DEBUG"):
            raise
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"edgecnn: internal error: {type(e).__name__}: {detail} (EDGECNN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
