"""`edgecnn export`: a checkpoint, or registry model + weights, to verified model files (.tflite, .onnx, ...)."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli.common import IMG_SIZE, calibration_option, console, json_option, write_json_output
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.formats import DEFAULT_FORMATS, FORMATS


@click.command(name="export")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--model", "model_name", help="Registry model for --weights (instead of a checkpoint).")
@click.option("--weights", help="A torchvision-style .pth state_dict for --model.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option("--width", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="With --weights: the registry model's channel width multiplier.")
@click.option("--img-size", type=IMG_SIZE, help="Input size for --weights [default: 224].")
@click.option("--format", "formats", default=",".join(DEFAULT_FORMATS), show_default=True,
              help=f"Comma-separated: {', '.join(FORMATS)} (openvino: pip install 'edgecnn[openvino]').")
@click.option("--int8", is_flag=True, help="Quantize to int8 (calibrated, verified).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="Calibration images used (at most).")
@click.option("--calib-images", type=click.Path(path_type=Path), help="Folder of unlabelled calibration images.")
@click.option("--calib-video", type=click.Path(path_type=Path), help="Calibrate on frames of a camera's own video.")
@click.option("--calib-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --calib-video: every Nth frame.")
@click.option("--dataset", help="Labelled data to calibrate and verify on [default: the checkpoint's].")
@click.option("--eval-samples", type=click.IntRange(min=1), help="Verify on at most N held-out images [all].")
@click.option("--target", default="host", show_default=True,
              help="CPU the int8 scheme is for: host (this machine's ISA), x86-avx2 (7-bit .onnx weights), "
                   "x86-avx2-u8u8 (8-bit, slower kernels), x86-vnni, arm (pi4, pi5).")
@calibration_option()
@click.option("--no-equalize", is_flag=True,
              help="Quantize the channels as trained (default: rescale them so one int8 range fits all).")
@click.option("--adaround", is_flag=True,
              help="Learn how each int8 weight is rounded (AdaRound) on the calibration images: slower (~80 s for "
                   "a MobileNetV2 on 2 cores, twice that when a 7-bit .onnx for x86-avx2 is exported beside a "
                   ".tflite), less weight error.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), help="Fail above this top-1 drop (points).")
@click.option("--no-fallback", is_flag=True, help="Do not keep sensitive layers in float to meet the budget.")
@click.option("--allow-float-ops", is_flag=True, help="Accept an int8 model with float compute ops left.")
@click.option("--sha256", "sidecar", is_flag=True, help="Also write FILE.sha256 (sha256sum -c checks it).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the artefacts.")
@json_option('the report {"artifacts": [...]}')
def export_cmd(checkpoint: Path | None, model_name: str | None, weights: str | None, labels_file: Path | None,
               out_dir: Path, json_path: Path | None, **params) -> None:
    """Export a checkpoint (or --model + --weights) to verified .tflite/.onnx, float or --int8."""
    from edgecnn.checkpoint import existing_checkpoint
    from edgecnn.cli.common import options_from
    from edgecnn.data import read_labels
    from edgecnn.export import ExportOptions
    from edgecnn.export.sources import (
        calibration_video,
        check_calibration_sources,
        export_images,
        source_from_checkpoint,
        source_from_weights,
    )
    from edgecnn.models import check_width
    from edgecnn.quantize.calibrate import parse_calibration
    from edgecnn.quantize.target import scheme_for
    from edgecnn.runtime.formats import parse_formats
    from edgecnn.workflows.export import examine_calibration, export_verified, raise_failures

    # What the command line alone can get wrong fails before torch (which loads the model) and the converters.
    scheme_for(params["target"])
    formats, ranges = parse_formats(params["formats"]), parse_calibration(params["calibration"])
    if checkpoint is not None and (model_name or weights):
        raise EdgeCNNError("give either a checkpoint or --model with --weights, not both")
    if checkpoint is None and not (model_name and weights):
        raise EdgeCNNError("nothing to export: give a checkpoint, or --model NAME --weights FILE.pth")
    if checkpoint is not None:
        existing_checkpoint(checkpoint)
    else:
        check_width(model_name, params["width"])
    options = options_from(ExportOptions, params, formats=formats, fallback=not params["no_fallback"],
                           equalize=not params["no_equalize"], calibration=ranges)
    dataset, calib_images, calib_video = params["dataset"], params["calib_images"], params["calib_video"]
    check_calibration_sources(calib_images, calib_video)
    if calib_video:
        calibration_video(calib_video)

    if checkpoint is not None:
        source = source_from_checkpoint(checkpoint)
    else:
        labels = read_labels(labels_file) if labels_file else None
        source = source_from_weights(model_name, weights, labels, params["img_size"], params["width"])
    calibration, verification = export_images(source, dataset, calib_images, calib_video, params["calib_every"],
                                              params["calib_samples"], params["eval_samples"], options.int8)
    doctor = None
    if not options.int8:
        calibration = None
    elif calibration is not None:
        # Two splits of one labelled dataset may share images by the dataset's making: warn, do not refuse.
        one_dataset = bool(dataset or source.dataset) and not calib_images and not calib_video
        doctor = examine_calibration(calibration, verification, not one_dataset, console)
    artefacts, report = export_verified(source, options, out_dir, calibration, verification, console, doctor)
    write_json_output(json_path, report)
    raise_failures(artefacts, options)
