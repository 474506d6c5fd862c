"""Verbs that look inside a model: `summary` (layer table) and `info` (a file's card and ops)."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli.common import (
    IMG_SIZE,
    JSON_TO_STDOUT,
    NUM_CLASSES,
    console,
    json_option,
    no_verify_option,
    write_json_output,
)
from edgecnn.runtime.formats import BY_SUFFIX


@click.command()
@click.argument("model", metavar="MODEL_OR_FILE")
@click.option("--img-size", type=IMG_SIZE,
              help="Input size [default: the checkpoint's, else 32 as for `train` without --weights].")
@click.option("--num-classes", type=NUM_CLASSES,
              help="Classes of the head [default: 1000, or the checkpoint's].")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="A registry model's channel width multiplier.")
@json_option("the table")
@no_verify_option("A model file: skip the check against its content hash.")
def summary(model: str, img_size: int | None, num_classes: int | None, width: float, json_path: Path | None,
            no_verify: bool) -> None:
    """Layer-by-layer table of a registry model, checkpoint or model file (.tflite, .onnx, .xml): shapes, parameters,
    MACs."""
    from edgecnn.runtime.layers import file_layers, print_summary, summary_report

    if Path(model).suffix.lower() in BY_SUFFIX:  # torch-free
        rows = file_layers(model, verify=not no_verify)
        title = f"{Path(model).name} (shapes and op types from the file)"
    else:
        from edgecnn.checkpoint import existing_checkpoint, is_checkpoint_path
        from edgecnn.models import check_width

        # Checked before torch is imported: a wrong name or path fails at once.
        if is_checkpoint_path(model):
            existing_checkpoint(model)
        else:
            check_width(model, width)

        from edgecnn.summary import summarise

        rows, title = summarise(model, img_size, num_classes, width)
    if json_path != JSON_TO_STDOUT:
        print_summary(console, rows, title)
    write_json_output(json_path, summary_report(rows, title))


@click.command()
@click.argument("model_path", metavar="FILE", type=click.Path(path_type=Path))
@json_option("the card and op summary")
@no_verify_option("Show a file even if it does not match its content hash.")
def info(model_path: Path, json_path: Path | None, no_verify: bool) -> None:
    """Show a model file's embedded model card and an op summary (int8/float ops, I/O dtypes)."""
    from edgecnn.runtime.modelfile import read_model_file
    from edgecnn.runtime.report import model_summary, print_model_summary

    summary = model_summary(read_model_file(model_path, verify=not no_verify))
    if json_path != JSON_TO_STDOUT:
        print_model_summary(console, summary)
    write_json_output(json_path, summary)
