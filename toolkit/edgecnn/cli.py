"""The `edgecnn` command: thin click verbs that parse options and call the modules that do the work.

Heavy imports (torch) happen inside the verbs, so `edgecnn --help` stays fast and the runtime verbs work
without torch installed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgecnn import __version__
from edgecnn.atomic import write_json
from edgecnn.errors import EdgeCNNError

# Tables keep their columns in logs and pipes too (rich would otherwise assume 80 columns).
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


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
@click.option("--img-size", type=click.IntRange(min=8),
              help="[default: 224 with --weights (their pretraining size), else 32]")
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
@click.option("--freeze", type=click.Choice(["none", "backbone"]), default="none", show_default=True,
              help="Train only the head (with --weights), until --unfreeze-at.")
@click.option("--unfreeze-at", type=click.IntRange(min=1), help="Epoch (0-based) from which backbone blocks train.")
@click.option("--unfreeze-blocks", type=click.IntRange(min=0), default=0, show_default=True,
              help="How many top backbone blocks --unfreeze-at unfreezes (0 = all).")
@click.option("--backbone-lr", type=click.FloatRange(min=0, min_open=True), help="Backbone learning rate [--lr].")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the training history as JSON.")
def train_cmd(model_name, dataset, out_dir, epochs, img_size, batch_size, lr, optimizer, width, weights, augment,
              warmup_epochs, label_smoothing, workers, seed, device, resume, freeze, unfreeze_at, unfreeze_blocks,
              backbone_lr, json_path) -> None:
    """Train a model on a dataset; writes OUT/best.pt and OUT/last.pt and prints a per-epoch table."""
    from edgecnn.recipe import DataConfig, ModelConfig, Recipe, TrainConfig, UnfreezeConfig, validate
    from edgecnn.train import train

    recipe = validate(
        Recipe(
            name="train",
            seed=seed,
            data=DataConfig(dataset=dataset, img_size=img_size, batch_size=batch_size, workers=workers,
                            augment=[a for a in augment.split(",") if a]),
            model=ModelConfig(name=model_name, width=width, weights=weights),
            train=TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr or (0.1 if optimizer == "sgd" else 1e-3),
                              warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, device=device,
                              freeze=freeze, backbone_lr=backbone_lr,
                              unfreeze=UnfreezeConfig(unfreeze_at, unfreeze_blocks) if unfreeze_at else None),
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
    from edgecnn.data import load_dataset
    from edgecnn.loader import make_loader
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


@cli.command()
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
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def prune(checkpoint, ratio, global_pruning, round_to, steps, finetune_epochs, lr, no_latency, out_dir,
          json_path) -> None:
    """Remove channels (structured pruning), fine-tune, and report MACs, accuracy and int8 latency."""
    from edgecnn.prune_workflow import prune_checkpoint

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
    _write_json(json_path, report)


@cli.command(name="export")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="Registry model for --weights (instead of a checkpoint).")
@click.option("--weights", help="A torchvision-style .pth state_dict for --model.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--img-size", type=click.IntRange(min=8), help="Input size for --weights [default: 224].")
@click.option("--format", "formats", default="tflite,onnx", show_default=True, help="Comma-separated: tflite, onnx.")
@click.option("--int8", is_flag=True, help="Quantize to int8 (calibrated, verified).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--calib-images", type=click.Path(path_type=Path), help="Folder of unlabelled calibration images.")
@click.option("--dataset", help="Labelled data to calibrate and verify on [default: the checkpoint's].")
@click.option("--eval-samples", type=click.IntRange(min=1), help="Verify on at most N held-out images [all].")
@click.option("--target", default="host", show_default=True,
              help="CPU the int8 scheme is for: host (this machine's ISA), x86-avx2, x86-vnni, arm (pi4, pi5).")
@click.option("--calibration", "calibration_method", default="auto", show_default=True,
              help="Activation ranges: auto (best agreement on the calibration images), minmax, percentile, mse, "
                   "entropy.")
@click.option("--calib-video", type=click.Path(path_type=Path), help="Calibrate on frames of a camera's own video.")
@click.option("--calib-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --calib-video: every Nth frame.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), help="Fail above this top-1 drop (points).")
@click.option("--no-fallback", is_flag=True, help="Do not keep sensitive layers in float to meet the budget.")
@click.option("--allow-float-ops", is_flag=True, help="Accept an int8 model with float compute ops left.")
@click.option("--sha256", "sidecar", is_flag=True, help="Also write FILE.sha256 (sha256sum -c checks it).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help='Write {"artifacts": [...]}.')
def export_cmd(checkpoint, model_name, weights, labels_file, width, img_size, formats, int8, calib_samples,
               calib_images, dataset, eval_samples, target, calibration_method, calib_video,
               calib_every, max_accuracy_drop, no_fallback, allow_float_ops, sidecar, out_dir, json_path) -> None:
    """Export a checkpoint (or --model + --weights) to verified .tflite/.onnx, float or --int8."""
    from edgecnn.data import read_labels
    from edgecnn.export import ExportOptions, export, parse_formats
    from edgecnn.export.report import export_report, print_export_table
    from edgecnn.export.sources import export_images, source_from_checkpoint, source_from_weights
    from edgecnn.quantize.calibrate import parse_calibration
    from edgecnn.quantize.doctor import examine
    from edgecnn.quantize.target import scheme_for

    scheme_for(target)  # an unknown name fails before any work
    options = ExportOptions(formats=parse_formats(formats), int8=int8, target=target,
                            max_accuracy_drop=max_accuracy_drop, fallback=not no_fallback,
                            allow_float_ops=allow_float_ops, sidecar=sidecar,
                            calibration=parse_calibration(calibration_method))
    if checkpoint is not None and (model_name or weights):
        raise EdgeCNNError("give either a checkpoint or --model with --weights, not both")
    if checkpoint is not None:
        source = source_from_checkpoint(checkpoint)
    elif model_name and weights:
        labels = read_labels(labels_file) if labels_file else None
        source = source_from_weights(model_name, weights, labels, img_size, width)
    else:
        raise EdgeCNNError("nothing to export: give a checkpoint, or --model NAME --weights FILE.pth")
    calibration, verification = export_images(source, dataset, calib_images, calib_video, calib_every,
                                              calib_samples, eval_samples, int8)
    doctor = None
    if not int8:
        calibration = None
    elif calibration is not None:
        console.print(f"calibrating on {len(calibration)} images: {calibration.description}")
        # Two splits of one labelled dataset may share images by the dataset's making: warn, do not refuse.
        one_dataset = bool(dataset or source.dataset) and not calib_images and not calib_video
        doctor = examine(calibration.pixels, verification.pixels, refuse_overlap=not one_dataset)
        for warning in doctor["warnings"]:
            console.print(f"[yellow]calibration images: {warning}[/yellow]")
    artefacts = export(source, options, out_dir, calibration, verification, console)
    print_export_table(console, artefacts, verification)
    report = export_report(artefacts, calibration, verification, doctor)
    _write_json(json_path, report)
    failed = [a for a in artefacts if a.status != "ok"]
    if failed:
        raise EdgeCNNError("; ".join(f"{a.format}: {a.status} ({_failure(a, options)})" for a in failed))


def _failure(artefact, options) -> str:
    if artefact.status == "export failed":
        return artefact.error
    if artefact.status == "float ops left":
        return f"float ops: {', '.join(artefact.float_ops[:5])}; --allow-float-ops accepts them"
    return f"top-1 drop {artefact.drop:.2f} points > --max-accuracy-drop {options.max_accuracy_drop}"


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeCNNError(f"{option} {text}: expected comma-separated whole numbers, e.g. 1,2,4") from None
    if not values or min(values) < 1:
        raise EdgeCNNError(f"{option} {text}: expected positive whole numbers, e.g. 1,2,4")
    return values


@cli.command()
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", default="1", show_default=True, help="Comma-separated thread counts, e.g. 1,2,4.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs (at least).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--min-seconds", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keep timing until this many seconds have passed too.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure every variant this many times in turns (A B A B ...), each in a fresh process.")
@click.option("--dataset", help="Held-out data for accuracy and agreement: digits, fashion-mnist, imagefolder:DIR ...")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Folder of unlabelled photos for top-1 agreement only (instead of --dataset).")
@click.option("--samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out images used with --dataset / --images.")
@click.option("--reference", type=click.Path(path_type=Path),
              help="Float model for top-1 agreement [default: the first checkpoint, else the first float model].")
@click.option("--input-shape", help="Input shape for models with dynamic dimensions, e.g. 1,3,224,224.")
@click.option("--profile", is_flag=True, help="Per-op times (onnxruntime profiler; benchmark_model on adb).")
@click.option("--device", default="local", show_default=True,
              help="local, cuda, ssh://[user@]host[:port], adb[:SERIAL] or arm64-emu[:cortex-a72|cortex-a76] "
                   "(an emulated Pi 4/Pi 5 userland: functional runs compared with x86, no timing).")
@click.option("--estimate", "estimate_profiles",
              help="Also estimate latency on devices that are not attached: pi4,pi5,phone-a76,phone-a55 or all "
                   "(see `edgecnn device list`).")
@click.option("--all-formats", is_flag=True,
              help="For a checkpoint: export ONNX and TFLite, float32 and int8, and benchmark them all with it.")
@click.option("--export-dir", type=click.Path(path_type=Path),
              help="Where --all-formats writes the artefacts [default: CHECKPOINT_DIR/bench-export].")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0),
              help="--all-formats: an int8 export losing more top-1 points fails the accuracy gate.")
@click.option("--int8-target", "target", default="host", show_default=True,
              help="--all-formats: CPU the int8 scheme is for: host, x86-avx2, x86-vnni, arm.")
@click.option("--remote-python", default="python3", show_default=True, help="ssh: the device's Python.")
@click.option("--ssh-key", type=click.Path(path_type=Path), help="ssh: identity file.")
@click.option("--ssh-config", type=click.Path(path_type=Path), help="ssh: config file (ssh -F).")
@click.option("--ssh-insecure", is_flag=True, help="ssh: do not check the host key (throwaway test boards only).")
@click.option("--benchmark-model", type=click.Path(path_type=Path), help="adb: TensorFlow Lite benchmark_model.")
@click.option("--cores", help="adb: CPU mask to pin to, e.g. f0 for cores 4-7.")
@click.option("--timeout", type=click.FloatRange(min=1), default=900, show_default=True,
              help="Seconds one measurement may take.")
@click.option("--no-verify", is_flag=True, help="Do not check edgecnn files against their content hash.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help='Write {"machine": ..., "results": [...]}.')
@click.option("--csv", "csv_path", type=click.Path(path_type=Path))
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Latency-vs-accuracy PNG.")
def bench(models, threads, runs, warmup, min_seconds, batch, rounds, dataset, images_dir, samples, reference,
          input_shape, profile, device, estimate_profiles, all_formats, export_dir, max_accuracy_drop, target,
          remote_python, ssh_key, ssh_config, ssh_insecure, benchmark_model, cores, timeout, no_verify, json_path,
          csv_path, md_path, plot_path) -> None:
    """Latency (median, p90, p99 ...), size, memory and accuracy of .tflite/.onnx files and checkpoints."""
    from edgecnn.bench import BenchOptions, benchmark, make_target
    from edgecnn.bench.harness import estimate_rows
    from edgecnn.bench.profiles import parse_profiles
    from edgecnn.bench.report import print_bench_table, require_matplotlib, write_outputs

    if plot_path:
        require_matplotlib()  # before minutes of measuring, not after
    profiles = parse_profiles(estimate_profiles) if estimate_profiles else []

    options = BenchOptions(_int_list(threads, "--threads"), runs, warmup, min_seconds, batch, rounds, dataset,
                           images_dir, samples, _int_list(input_shape, "--input-shape") if input_shape else None,
                           profile, reference, verify=not no_verify)
    target_device = make_target(device, python=remote_python, key=ssh_key, config=ssh_config, insecure=ssh_insecure,
                                benchmark_model=benchmark_model, cores=cores, timeout=timeout)
    models, failed_exports = list(models), []
    if all_formats:
        from edgecnn.bench.matrix import export_all_formats

        if len(models) != 1 or models[0].suffix not in (".pt", ".pth"):
            raise EdgeCNNError("--all-formats takes one edgecnn checkpoint (.pt)")
        if device != "local":
            raise EdgeCNNError("--all-formats measures PyTorch, ONNX and TFLite on this machine (--device local); "
                               "bench the exported files on other devices")
        out = export_dir or models[0].parent / "bench-export"
        exported, failed_exports = export_all_formats(models[0], out, dataset, samples, max_accuracy_drop, target,
                                                      console)
        models += exported
        options.dataset = options.dataset or (None if images_dir else _checkpoint_dataset(models[0]))
    rows, machine = benchmark(models, options, target_device, console)
    rows += failed_exports + estimate_rows(rows, profiles)
    notes = []
    if (options.dataset or options.images) and all(r.agreement is None for r in rows):
        notes.append("agreement: no float reference among these models; give --reference FLOAT_MODEL")
    if machine.get("peak") and any(r.efficiency is not None for r in rows):
        notes.append(f"eff.: peak = {machine['peak']}")
    print_bench_table(console, rows, machine, notes)
    options_record = {"threads": list(options.threads), "runs": runs, "warmup": warmup, "min_seconds": min_seconds,
                      "batch": batch, "rounds": rounds, "dataset": options.dataset,
                      "images": str(images_dir) if images_dir else None, "samples": samples,
                      "device": device, "estimate": [p.name for p in profiles]}
    for path in write_outputs(rows, machine, options_record, notes, json_path, csv_path, md_path, plot_path):
        console.print(f"wrote {path}")
    broken = [r for r in rows if r.status.startswith("failed")]
    if broken:
        raise EdgeCNNError(f"{len(broken)} of {len(rows)} measurements failed: "
                           + "; ".join(f"{r.model}: {r.status.removeprefix('failed: ')}" for r in broken))


def _checkpoint_dataset(path: Path) -> str | None:
    from edgecnn.checkpoint import load_checkpoint

    return load_checkpoint(path).dataset


@cli.command()
@click.argument("source")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="A .tflite/.onnx classifier.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--img-size", type=click.IntRange(min=8), help="Input size, for files without an edgecnn card.")
@click.option("--mean", help="Normalisation mean r,g,b (0..1), for files without a card.")
@click.option("--std", help="Normalisation std r,g,b, for files without a card.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, help="Classify every N-th frame.")
@click.option("--max-fps", type=click.FloatRange(min=0, min_open=True), help="Classify at most this many frames/s.")
@click.option("--roi", help="Classify only this region: x,y,w,h in pixels.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after classifying N frames.")
@click.option("--alert", "alert_labels", help="Comma-separated labels that make an event.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--min-frames", type=click.IntRange(min=1), default=3, show_default=True,
              help="Frames in a row a label must hold to make an event (and be absent to re-arm).")
@click.option("--events", "events_path", type=click.Path(path_type=Path),
              help="Append one JSON line per event here; snapshots go to <name>_snapshots/.")
@click.option("--save", "save_path", type=click.Path(path_type=Path), help="Write the annotated video (.mp4, .avi).")
@click.option("--show", is_flag=True, help="Show the annotated frames in a window (when a display exists).")
@click.option("--stats-json", type=click.Path(path_type=Path), help="Write the pipeline statistics at the end.")
@click.option("--realtime", is_flag=True, help="Play a video file at its own frame rate, as a camera would deliver it.")
@click.option("--give-up-after", type=click.FloatRange(min=0), help="Stop when a stream stays down this many seconds.")
@click.option("--no-verify", is_flag=True, help="Do not check an edgecnn file against its content hash.")
def watch(source, model_path, threads, img_size, mean, std, labels_file, every, max_fps, roi, max_frames,
          alert_labels, threshold, min_frames, events_path, save_path, show, stats_json, realtime,
          give_up_after, no_verify) -> None:
    """Classify a video file, camera index or rtsp://, http:// stream as it plays (torch-free)."""
    import signal
    import threading

    import cv2

    from edgecnn.data import read_labels
    from edgecnn.runtime import load
    from edgecnn.watch import WatchOptions, parse_roi, run_watch

    labels = read_labels(labels_file) if labels_file else None
    classifier = load(model_path, threads, img_size=img_size, mean=_floats(mean, "--mean"),
                      std=_floats(std, "--std"), labels=labels, verify=not no_verify)
    for note in classifier.notes:
        console.print(note)
    alerts = tuple(a.strip() for a in alert_labels.split(",") if a.strip()) if alert_labels else ()
    unknown = [a for a in alerts if a not in classifier.labels]
    if unknown:
        raise EdgeCNNError(f"--alert {','.join(unknown)}: not a label of {model_path} "
                           f"(labels: {', '.join(classifier.labels[:20])})")
    options = WatchOptions(every, max_fps, parse_roi(roi) if roi else None, max_frames, alerts, threshold,
                           min_frames, events_path, save_path, show, stats_json, realtime, give_up_after)
    # A reconnecting stream makes OpenCV and FFmpeg log every failed try; the status lines say what matters.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    summary = run_watch(source, classifier, options, stop, report=console.print)
    latency = summary["latency_ms"] or {"p50": float("nan"), "p90": float("nan")}
    console.print(f"{summary['frames_classified']} frames classified of {summary['frames_captured']} captured "
                  f"({summary['frames_dropped']} dropped, {summary['bad_frames']} bad, {summary['reconnects']} "
                  f"reconnects); inference {summary['inference_fps']:.1f} fps, capture {summary['capture_fps']:.1f} "
                  f"fps; latency p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms; {summary['events']} events")


def _floats(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise EdgeCNNError(f"{option} {text}: expected three numbers r,g,b, e.g. 0.485,0.456,0.406")
    return values


@cli.command()
@click.argument("target", metavar="MODEL_OR_FILE")
@click.option("--img-size", type=click.IntRange(min=1), help="Input size [default: the checkpoint's, else 224].")
@click.option("--num-classes", type=click.IntRange(min=2),
              help="Classes of the head [default: 1000, or the checkpoint's].")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the table as JSON.")
@click.option("--no-verify", is_flag=True, help="A .tflite/.onnx file: skip the check against its content hash.")
def summary(target: str, img_size: int | None, num_classes: int | None, width: float, json_path: Path | None,
            no_verify: bool) -> None:
    """Layer-by-layer table of a registry model, checkpoint or .tflite/.onnx file: shapes, parameters, MACs."""
    from edgecnn.runtime.layers import file_layers, print_summary, summary_report

    if target.lower().endswith((".tflite", ".onnx")):  # torch-free
        rows = file_layers(target, verify=not no_verify)
        title = f"{Path(target).name} (shapes and op types from the file)"
    else:
        from edgecnn.summary import summarise

        rows, title = summarise(target, img_size, num_classes, width)
    print_summary(console, rows, title)
    _write_json(json_path, summary_report(rows, title))


@cli.command()
@click.argument("model_path", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the card and op summary as JSON.")
@click.option("--no-verify", is_flag=True, help="Show a file even if it does not match its content hash.")
def info(model_path: Path, as_json: bool, no_verify: bool) -> None:
    """Show a .tflite/.onnx file's embedded model card and an op summary (int8/float ops, I/O dtypes)."""
    from edgecnn.runtime.modelfile import read_model_file
    from edgecnn.runtime.report import model_summary, print_model_summary

    summary = model_summary(read_model_file(model_path, verify=not no_verify))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_model_summary(console, summary)


@cli.group()
def device() -> None:
    """Devices to run on: the emulated Pi userland, and the profiles behind `bench --estimate`."""


@device.command(name="setup")
@click.argument("name", type=click.Choice(["arm64-emu"]))
@click.option("--folder", type=click.Path(path_type=Path),
              help="Where the userland lives [default: $EDGECNN_CACHE or ~/.cache/edgecnn, /arm64-emu].")
@click.option("--mirror", help="Debian mirror [default: http://deb.debian.org/debian].")
@click.option("--from-tarball", type=click.Path(path_type=Path), help="Restore a userland saved with --save-tarball.")
@click.option("--save-tarball", type=click.Path(path_type=Path), help="Also save the userland as a .tar.gz.")
@click.option("--rebuild", is_flag=True, help="Build it again even when one exists.")
def device_setup(name: str, folder: Path | None, mirror: str | None, from_tarball: Path | None,
                 save_tarball: Path | None, rebuild: bool) -> None:
    """Build (or restore) the emulated Raspberry Pi OS userland: Debian bookworm arm64, Python 3.11 and the
    edgecnn runtime with its Arm wheels, run by qemu-user as a Cortex-A72 (Pi 4) or Cortex-A76 (Pi 5)."""
    from edgecnn.bench.arm64_emu import DEFAULT_MIRROR, setup_userland

    userland = setup_userland(folder, mirror=mirror or DEFAULT_MIRROR, from_tarball=from_tarball,
                              save_tarball=save_tarball, rebuild=rebuild, log=console.print)
    console.print(f"ready in {userland.folder}: edgecnn bench MODEL --device arm64-emu[:cortex-a76] --dataset NAME")


@device.command(name="list")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the profiles as JSON.")
def device_list(json_path: Path | None) -> None:
    """Device profiles: peak int8/fp32 MAC rates, the published measurement each estimate is calibrated on."""
    from dataclasses import asdict

    from edgecnn.bench.machine import machine_info
    from edgecnn.bench.profiles import MOBILENET_V2_MACS, PROFILES, measured_profile

    threads = max(p.cores for p in PROFILES.values())
    table = Table(title=f"device profiles (bench --estimate NAME); MobileNetV2 estimates at {threads} threads")
    for column in ("name", "device", "peak fp32", "peak int8", "MobileNetV2 fp32", "int8", "basis"):
        table.add_column(column, overflow="fold")
    for p in PROFILES.values():
        estimates = [p.estimate_ms(MOBILENET_V2_MACS, kind, p.cores) for kind in ("float32", "int8")]
        table.add_row(p.name, p.title, f"{p.peak_macs_per_s('float32', p.cores) / 1e9:.1f} GMAC/s",
                      f"{p.peak_macs_per_s('int8', p.cores) / 1e9:.1f} GMAC/s",
                      *(f"≈{ms:.1f} ms" for ms in estimates), p.basis())
    host = measured_profile(machine_info())
    if host is not None:
        table.add_row("(this host)", host.title, f"{host.peak_macs_per_s('float32', host.cores) / 1e9:.1f} GMAC/s",
                      f"{host.peak_macs_per_s('int8', host.cores) / 1e9:.1f} GMAC/s", "measure it:", "edgecnn bench",
                      host.describe())
    console.print(table)
    cores = {p.core.name: p.core for p in PROFILES.values()}.values()
    console.print("peak = cores × GHz × MACs/cycle/core; per-cycle rates: "
                  + "; ".join(f"{c.name}: {c.source}" for c in cores))
    _write_json(json_path, {name: {**asdict(p), "basis": p.basis(), "int8_speedup": p.int8_speedup,
                                   "mobilenet_v2_ms": {kind: p.estimate_ms(MOBILENET_V2_MACS, kind, p.cores)
                                                       for kind in ("float32", "int8")}}
                            for name, p in PROFILES.items()})


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
