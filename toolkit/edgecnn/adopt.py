"""`edgecnn adopt`: give a third-party model file an edgecnn card, so `info`, `bench`, the runtime and `watch`
treat it like an edgecnn export (torch-free).

The copy is sealed with a content hash like every export, and opened in its runtime (one inference) before it
takes its name: a card that does not fit the file (labels for another class count, anchors for another head) is
refused here, not on the camera.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn import __version__
from edgecnn.atomic import install_model, scratch_beside
from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess
from edgecnn.runtime.backends import TensorSpec, load_backend
from edgecnn.runtime.decoding import BoxCoding, anchors_from_corners, find_box_and_score_outputs
from edgecnn.runtime.formats import format_of, model_files
from edgecnn.runtime.model import layout_from_shape
from edgecnn.runtime.modelfile import TASK_FIELDS, embed_card, read_model_file
from edgecnn.runtime.tasks import load

ANCHOR_FORMATS = ("yxyx", "xyxy")  # corners: TF Object Detection API's order, and x first


@dataclass
class AdoptOptions:
    task: str
    labels: list[str] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in units of pixel / 255, as everywhere in edgecnn
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    color: str = "RGB"
    crop: float | None = None  # a classifier's centre crop; None: the whole frame, stretched
    interpolation: str = "linear"  # how third-party models were mostly trained (TensorFlow, MediaPipe)
    # Detection:
    anchors: Path | None = None  # .npy, (N, 4) corners normalised to the input
    anchor_format: str = "yxyx"
    box_order: str = "yxhw"
    box_scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score: str = "sigmoid"
    background: bool | None = None  # None: from the label count (one column more than labels)
    fit: str = "stretch"
    min_score: float = 0.5
    nms_iou: float = 0.6


def parse_input_range(text: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """"a,b" (pixel 0 → a, pixel 255 → b) as edgecnn's mean and std (over pixel / 255)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise EdgeCNNError(f"--input-range {text}: expected two numbers low,high, e.g. -1,1 or 0,255") from None
    if not np.isfinite([low, high]).all() or high <= low:
        raise EdgeCNNError(f"--input-range {text}: expected finite numbers with low < high")
    scale = high - low
    return (-low / scale,) * 3, (1 / scale,) * 3


def read_anchors(path: Path, layout: str) -> np.ndarray:
    """An (N, 4) anchor file as (cy, cx, h, w); one line naming the file when it is not one."""
    try:
        corners = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgeCNNError(f"--anchors {path}: not a readable .npy array ({e})") from None
    if corners.ndim != 2 or corners.shape[1] != 4 or not np.issubdtype(corners.dtype, np.floating):
        raise EdgeCNNError(f"--anchors {path}: expected a float (N, 4) array of corners, got {corners.dtype} "
                           f"{corners.shape}")
    if not np.isfinite(corners).all():
        raise EdgeCNNError(f"--anchors {path}: holds NaN or infinite values")
    anchors = anchors_from_corners(corners.astype(np.float32), layout)
    if (anchors[:, 2:] <= 0).any():
        raise EdgeCNNError(f"--anchors {path}: some anchors have no area (is --anchor-format {layout} right?)")
    return anchors


def _detect_section(options: AdoptOptions, outputs: list[TensorSpec]) -> tuple[dict, list[str] | None]:
    if options.anchors is None:
        raise EdgeCNNError("--task detect needs --anchors ANCHORS.npy: the boxes are encoded against them")
    anchors = read_anchors(options.anchors, options.anchor_format)
    try:
        box, score = (outputs[i] for i in find_box_and_score_outputs(outputs, {}, len(anchors)))
    except EdgeCNNError as e:
        raise EdgeCNNError(f"--anchors {options.anchors}: {e}") from None
    columns = score.shape[-1]
    background = options.background
    if background is None:
        background = columns > 1 if options.labels is None else len(options.labels) == columns - 1
    settings = {"outputs": {"boxes": box.name, "scores": score.name},
                "coding": BoxCoding(anchors, options.box_order, options.box_scales).to_card(),
                "score": options.score, "background": background, "fit": options.fit,
                "min_score": options.min_score, "nms_iou": options.nms_iou}
    labels = options.labels or [str(i) for i in range(columns - int(background))]
    return settings, labels


def adoption_card(source: Path, options: AdoptOptions) -> dict:
    """The card for `source`, from its tensors and the options."""
    model_file = read_model_file(source)
    engine = load_backend(source, 1)
    layout = layout_from_shape(engine.input.shape)
    height, width = engine.input.shape[1:3] if layout == "NHWC" else engine.input.shape[2:4]
    if height != width or height <= 0:
        raise EdgeCNNError(f"{source}: input {list(engine.input.shape)} is not a fixed square image; edgecnn feeds "
                           "square images of one size")
    pre = Preprocess(int(height), options.mean, options.std, options.color, options.crop, layout,
                     options.interpolation)
    card = {
        "edgecnn_version": __version__,
        "card_version": 2,
        "task": options.task,
        "preprocess": pre.to_dict(),
        "input": {**engine.input.to_card(), "layout": layout},
        "source": {"model": source.name, "width": None, "dataset": None, "from": f"adopted from {source.name}",
                   "recipe_hash": None},
        "quantization": {"int8": bool(model_file.int8_ops) and not model_file.float_ops,
                         "scheme": "third-party" if model_file.int8_ops else None, "calibration": None,
                         "float_layers": sorted({op.where for op in model_file.float_ops})},
    }
    if options.task == "detect":
        card["detect"], card["labels"] = _detect_section(options, engine.outputs)
    else:
        if options.anchors is not None:
            raise EdgeCNNError("--anchors belongs to --task detect")
        card["output"] = {**engine.outputs[0].to_card(), "kind": "logits"}
        card["labels"] = options.labels or [str(i) for i in range(engine.outputs[0].shape[-1])]
    return card


def adopt_model(source: Path, out: Path, options: AdoptOptions) -> dict:
    """Write a sealed copy of `source` with its card to `out` (same format); returns the card. The copy is
    opened as its task before it takes its name; `out` is replaced whole or left as it was."""
    if options.task not in TASK_FIELDS:
        raise EdgeCNNError(f"--task {options.task}: choose from {', '.join(TASK_FIELDS)}")
    fmt = format_of(source)
    if fmt.name == "executorch":
        raise EdgeCNNError(f"{source}: an ExecuTorch program cannot take a card after it was built; export it "
                           "with edgecnn, or adopt the .onnx/.tflite it came from")
    if format_of(out) is not fmt:
        raise EdgeCNNError(f"--out {out}: must be a {fmt.suffix} file like {source.name}")
    if out.resolve() == source.resolve():
        raise EdgeCNNError(f"--out {out}: is the file being adopted; write the sealed copy elsewhere")
    card = adoption_card(source, options)
    with scratch_beside(out) as scratch:
        work = scratch / out.name
        for original, copy in zip(model_files(source), model_files(work), strict=True):
            shutil.copyfile(original, copy)
        embed_card(work, card)
        model = load(work, 1, task=options.task)
        model.raw_outputs(np.zeros((1, *model.backend.input.shape[1:]), model.backend.input.dtype))
        install_model(work, out, sidecar=False)
    return card
