"""`edgecnn adopt`: seal a third-party .tflite/.onnx/.xml with an edgecnn card (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli.common import console, options_from, rgb
from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import INTERPOLATIONS
from edgecnn.runtime.modelfile import BOX_ORDERS, FITS, SCORE_FUNCTIONS, TASK_FIELDS


@click.command()
@click.argument("source", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(tuple(TASK_FIELDS)), required=True, help="What the model does.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The sealed copy (same format as FILE).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path),
              help="Class names, one per line (a detector's without its background class).")
@click.option("--input-range", help="What pixels 0 and 255 become at the input, e.g. -1,1 or 0,1 or 0,255.")
@click.option("--mean", help="Normalisation mean r,g,b over pixel/255 (instead of --input-range).")
@click.option("--std", help="Normalisation std r,g,b over pixel/255 (instead of --input-range).")
@click.option("--color", type=click.Choice(("RGB", "BGR")), default="RGB", show_default=True,
              help="Channel order the model takes.")
@click.option("--crop", type=click.FloatRange(0, 1, min_open=True),
              help="A classifier's centre crop (fraction of the shorter side) [default: whole frame].")
@click.option("--resize", "interpolation", type=click.Choice(INTERPOLATIONS), default="linear", show_default=True,
              help="How frames shrink to the input: as the model was trained (TensorFlow and MediaPipe: linear).")
@click.option("--anchors", type=click.Path(path_type=Path), help="Detector: (N, 4) anchor corners, .npy.")
@click.option("--anchor-format", type=click.Choice(("yxyx", "xyxy")), default="yxyx", show_default=True,
              help="Detector: order of the anchor corners (yxyx: TF Object Detection API).")
@click.option("--box-order", type=click.Choice(BOX_ORDERS), default="yxhw", show_default=True,
              help="Detector: order of the box encodings (yxhw: TF; xywh: torchvision).")
@click.option("--box-scales", default="10,10,5,5", show_default=True,
              help="Detector: divisors of the box encodings, in --box-order.")
@click.option("--score", type=click.Choice(SCORE_FUNCTIONS), default="sigmoid", show_default=True,
              help="Detector: how class outputs become scores.")
@click.option("--background/--no-background", default=None,
              help="Detector: whether score column 0 is background [default: from the label count].")
@click.option("--fit", type=click.Choice(FITS), default="stretch", show_default=True,
              help="Detector: how a frame is made square.")
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Detector: default score threshold.")
@click.option("--nms-iou", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="Detector: IoU above which the weaker of two boxes is suppressed.")
def adopt(source: Path, labels_file: Path | None, input_range: str | None, mean: str | None, std: str | None,
          box_scales: str, **params) -> None:
    """Give a third-party model FILE an edgecnn card (labels, preprocessing; a detector's anchors and box
    coding) and write it sealed to --out, so info, bench, the runtime and watch use it like an edgecnn export."""
    from edgecnn.adopt import AdoptOptions, adopt_model, parse_input_range
    from edgecnn.data import read_labels
    from edgecnn.runtime.report import shown

    if input_range and (mean or std):
        raise EdgeCNNError("--input-range and --mean/--std say the same thing: give one")
    normalise = {}
    if input_range:
        normalise["mean"], normalise["std"] = parse_input_range(input_range)
    for name, text in (("mean", mean), ("std", std)):
        if text:
            normalise[name] = rgb(text, f"--{name}")
    scales = parse_box_scales(box_scales)
    options = options_from(AdoptOptions, params, labels=read_labels(labels_file) if labels_file else None,
                           box_scales=scales, **normalise)
    card = adopt_model(source, params["out"], options)
    labels, size = card["labels"], card["preprocess"]["img_size"]
    console.print(shown(f"wrote {params['out']}: {card['task']}, {len(labels)} labels "
                        f"({', '.join(labels[:5])}{' ...' if len(labels) > 5 else ''}), input {size}×{size} "
                        f"{card['preprocess']['layout']}"))


def parse_box_scales(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(0 < v < float("inf") for v in values):
        raise EdgeCNNError(f"--box-scales {text}: expected four positive numbers, e.g. 10,10,5,5")
    return values
