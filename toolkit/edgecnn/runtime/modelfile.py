"""Reading and writing what a model file says about itself, without running it and without torch.

Two things live here, for every format in `edgecnn.runtime.formats`:
- the model card: edgecnn's metadata (labels, input size, layout, colour order, mean/std, input/output
  quantization, source recipe, version), stored as JSON inside the file (each format says where);
- the op summary: every op with the dtype it computes in, so a float op left in an int8 model can be named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.formats import format_of, model_files
from edgecnn.runtime.integrity import HASH_KEY, PLACEHOLDER, Integrity, check_integrity, require_sealed_card, seal

CARD_KEY = "edgecnn"

@dataclass
class OpInfo:
    name: str  # as the format names it: TFLite builtin, ONNX op_type, OpenVINO layer type, XNNPACK node
    dtype: str  # the dtype the op computes in: 'int8', 'uint8', 'float32', ...
    where: str  # the op's output tensor, node or layer: points at the layer
    compute: bool = True  # False: it only moves, re-labels or (de)quantizes data, so its dtype says nothing
    delegated: bool = True  # False: an ExecuTorch op left to the portable kernels (slow, and not int8)


@dataclass
class ModelFile:
    path: Path
    format: str
    ops: list[OpInfo]
    inputs: list[dict]  # name, shape, dtype
    outputs: list[dict]
    card: dict | None = None
    notes: list[str] = field(default_factory=list)
    integrity: Integrity | None = None  # None: not checked (verify=False)

    @property
    def compute_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if op.compute]

    @property
    def float_ops(self) -> list[OpInfo]:
        """Compute ops not running in int8 kernels: float ones, and ops an accelerator delegate did not take."""
        return [op for op in self.compute_ops if op.dtype.startswith("float") or not op.delegated]

    @property
    def int8_ops(self) -> list[OpInfo]:
        return [op for op in self.compute_ops if op.dtype in ("int8", "uint8")]


def read_model_file(path: str | Path, verify: bool = True) -> ModelFile:
    """Parse a model file's structure; a truncated or foreign file is a clear error. With `verify`, an edgecnn
    artefact whose bytes do not match its content hash (or its .sha256 sidecar) is refused."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    fmt = format_of(path)
    files = fmt.runtime.model_files(path)
    try:
        parts = {f: f.read_bytes() for f in files}
    except OSError as e:
        raise EdgeCNNError(f"cannot read {e.filename or path}: {e.strerror or e}") from None
    integrity = check_integrity(path, parts) if verify else None
    fmt.require()
    try:
        model_file = fmt.runtime.read(path)
    except EdgeCNNError:
        raise
    except Exception as e:  # flatbuffers/protobuf/XML parsers raise many types on garbage input
        raise EdgeCNNError(f"{path}: not a valid {fmt.name} model (corrupt or truncated: {type(e).__name__})") from None
    require_sealed_card(path, model_file.card, integrity)
    if model_file.card is not None and (problem := card_problem(model_file.card)):
        raise EdgeCNNError(f"{path}: its edgecnn model card is damaged ({problem}); re-export it")
    model_file.integrity = integrity
    if integrity is not None and not integrity.verified:
        model_file.notes.append(f"{path.name}: {integrity.detail}")
    return model_file


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _tensor(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("dtype"), str) and _number(v.get("scale")) \
        and isinstance(v.get("zero_point"), int)


def _fraction(v) -> bool:
    return _number(v) and 0 <= v <= 1


# What a detector card may say (edgecnn.runtime.detector decodes by it).
BOX_ORDERS = ("yxhw", "xywh")  # of the box encodings: TF Object Detection API; torchvision
SCORE_FUNCTIONS = ("sigmoid", "softmax")
FITS = ("stretch", "letterbox")  # how a frame is made square: stretched, or centred between bars


def _detect(v) -> bool:
    coding = v.get("coding") if isinstance(v, dict) else None
    return isinstance(coding, dict) and isinstance(coding.get("anchors"), dict) \
        and isinstance(coding["anchors"].get("count"), int) and isinstance(coding["anchors"].get("float32"), str) \
        and coding.get("order") in BOX_ORDERS and isinstance(coding.get("scales"), list) \
        and len(coding["scales"]) == 4 and all(_number(x) and x > 0 for x in coding["scales"]) \
        and v.get("score") in SCORE_FUNCTIONS and isinstance(v.get("background"), bool) and v.get("fit") in FITS \
        and _fraction(v.get("min_score")) and _fraction(v.get("nms_iou")) and isinstance(v.get("outputs"), dict)


# What the runtime and `edgecnn info` read from a card, and the shape each must have. A sealed card always has
# it; a card read with --no-verify may not, and must then be an error, not a KeyError deep in the runtime.
CARD_FIELDS = {
    "edgecnn_version": lambda v: isinstance(v, str),
    "labels": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "preprocess": lambda v: isinstance(v, dict) and isinstance(v.get("img_size"), int) and v["img_size"] > 0
    and all(isinstance(v.get(k), list) and len(v[k]) == 3 and all(map(_number, v[k])) for k in ("mean", "std"))
    and v.get("color") in ("RGB", "BGR") and v.get("layout") in ("NHWC", "NCHW")
    and (v.get("crop") is None or _number(v["crop"]) and 0 < v["crop"] <= 1)
    and v.get("interpolation", "area") in ("area", "linear"),
    "input": _tensor,
    "source": lambda v: isinstance(v, dict) and all(k in v for k in ("model", "width", "dataset", "from",
                                                                     "recipe_hash")),
    "quantization": lambda v: isinstance(v, dict) and isinstance(v.get("float_layers"), list)
    and all(isinstance(x, str) for x in v["float_layers"]) and "scheme" in v
    and (v.get("calibration") is None or isinstance(v["calibration"], dict) and "samples" in v["calibration"]
         and "images" in v["calibration"]),
}
# What each task adds: a classifier's one logits tensor; a detector's anchors, box coding and thresholds.
TASK_FIELDS = {
    "classify": {"output": _tensor},
    "detect": {"detect": _detect},
}
# Cards written before detection existed name classification this way.
TASK_ALIASES = {"image-classification": "classify"}


def task_of(card: dict | None) -> str:
    """The task a card names; a file without a card is taken for a classifier (the only task such a file can be
    used for without anchors)."""
    task = (card or {}).get("task", "classify")
    return TASK_ALIASES.get(task, task)


def card_problem(card) -> str | None:
    """The first card field that is missing or malformed, or None."""
    if not isinstance(card, dict):
        return "not a JSON object"
    task = task_of(card)
    if task not in TASK_FIELDS:
        return f"field 'task' ({task!r} is not one of {', '.join(TASK_FIELDS)})"
    fields = {**CARD_FIELDS, **TASK_FIELDS[task]}
    return next((f"field '{k}'" for k, ok in fields.items() if not ok(card.get(k))), None)


def embed_card(path: Path, card: dict) -> None:
    """Embed `card` and seal the model with its content hash (see edgecnn.runtime.integrity)."""
    path = Path(path)
    format_of(path).runtime.embed_card(path, {**card, HASH_KEY: PLACEHOLDER})
    entry = path.read_bytes()  # the card is in the entry file; the others only enter the hash
    sealed = seal(entry + b"".join(f.read_bytes() for f in model_files(path)[1:]))
    path.write_bytes(sealed[: len(entry)])
