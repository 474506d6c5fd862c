"""Recipes: YAML files describing a whole run (data → model → train → ...), validated on load.

Each section is a dataclass; its fields are the valid keys, their type hints the valid types and their
defaults the defaults. The `edgecnn train` command builds the same dataclasses from its options, so a recipe
and a command line are checked by the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from edgecnn.errors import EdgeCNNError, closest, printable, shorten


@dataclass
class DataConfig:
    dataset: str = "digits"
    img_size: int | None = None  # None: the pretraining's size with model.weights (224), else DEFAULT_IMG_SIZE
    batch_size: int = 32
    augment: list[str] = field(default_factory=list)
    workers: int = 0
    # Normalisation; None means the dataset's own (or ImageNet's for pretrained torchvision weights).
    mean: list[float] | None = None
    std: list[float] | None = None
    crop: float | None = None
    # Detection: the held-out dataset scored each epoch and verified on at export (classification datasets
    # carry their own split).
    val: str | None = None


@dataclass
class ModelConfig:
    name: str = "tinycnn"
    width: float = 1.0
    weights: str | None = None


@dataclass
class UnfreezeConfig:
    at_epoch: int = 1  # 0-based epoch from which ...
    blocks: int = 0  # ... the top N backbone blocks train too; 0 = all of them


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # lr and warmup_epochs: None takes the model family's default (edgecnn.models.FAMILY_DEFAULTS); validate()
    # and train() fill them in through with_train_defaults.
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    # Batches used to re-estimate BatchNorm statistics after each epoch; 0 turns it off.
    bn_recalibration_batches: int = 20
    device: str = "auto"
    amp: bool = True
    # Transfer learning (edgecnn.transfer): a frozen backbone first, then its upper blocks.
    freeze: Literal["none", "backbone"] = "none"
    unfreeze: UnfreezeConfig | None = None
    backbone_lr: float | None = None  # learning rate of the backbone; None: train.lr (the head always uses lr)


@dataclass
class PruneConfig:
    ratio: float = 0.0  # fraction of channels removed; 0: no prune stage
    steps: int = 1  # iterative pruning: rounds of prune + fine-tune
    global_pruning: bool = False
    round_to: int = 8
    finetune_epochs: int = 1  # per step
    lr: float = 0.01


@dataclass
class QuantizeConfig:
    method: Literal["none", "ptq", "qat"] = "none"
    calib_samples: int = 200
    # The CPU the int8 scheme is for (edgecnn.quantize.target).
    target: Literal["host", "x86", "x86-avx2", "x86-avx2-u8u8", "x86-vnni", "arm"] = "host"
    # Top-1 points the int8 artefacts may lose against the float model; over it the export fails (after the
    # fallback has tried keeping the most sensitive layers in float).
    max_accuracy_drop: float | None = None
    fallback: bool = True
    # Quantization-aware training (method: qat): epochs of fine-tuning with fake-quantized weights/activations.
    epochs: int = 1
    lr: float = 0.001


@dataclass
class ExportConfig:
    # empty: no export stage
    formats: list[Literal["tflite", "onnx", "openvino", "executorch"]] = field(default_factory=list)
    eval_samples: int | None = None
    allow_float_ops: bool = False


@dataclass
class Recipe:
    name: str = "recipe"
    task: Literal["classify", "detect"] = "classify"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def section_hash(self, *names: str) -> str:
        """A digest of the named sections (and the seed): what a stage's output depends on."""
        payload = {"seed": self.seed, **{n: dataclasses.asdict(getattr(self, n)) for n in names}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def hash(self) -> str:
        sections = [f.name for f in dataclasses.fields(self) if dataclasses.is_dataclass(getattr(self, f.name))]
        return self.section_hash(*sections)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _is_scalar(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):  # YAML's true/false are not numbers here
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float)) or _float_text(value) is not None
    return hint in (int, str) and isinstance(value, hint)


FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _float_text(value: Any) -> float | None:
    """'1e-3' as a number: YAML 1.1 (PyYAML) reads exponents without a dot as strings, while --help and every
    paper write learning rates that way."""
    if not isinstance(value, str) or not FLOAT_TEXT.fullmatch(value.strip()):
        return None
    return float(value)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as type `hint`, or an EdgeCNNError naming the key, the expected type and what was found."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return load_section(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        specific = None
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except EdgeCNNError as e:  # the option that took the type says best what is wrong (e.g. not finite)
                specific = specific or (e if _is_scalar(value, option) else None)
        if specific:
            raise specific
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, typing.get_args(hint)[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif _is_scalar(value, hint):
        return _finite(value, where) if hint is float else value
    raise EdgeCNNError(f"{where}: expected {_type_name(hint)}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value in an error message: at most one short line, whatever a recipe expands to."""
    return printable(shorten(repr(value), 80))


def _finite(value: int | float, where: str) -> float:
    """YAML's .nan and .inf (or an integer beyond float range) would pass every range check: refuse them."""
    try:
        number = float(value) if not isinstance(value, str) else _float_text(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise EdgeCNNError(f"{where}: expected a finite number, got {value!r}")
    return number


def load_section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EdgeCNNError(f"{where}: expected a mapping of keys, got {_shown(data)}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in valid:
            raise EdgeCNNError(
                f"{where}.{key}: unknown key{closest(str(key), valid)}; valid keys: {', '.join(valid)}"
                if where
                else f"{key}: unknown section or key{closest(str(key), valid)}; valid: {', '.join(valid)}"
            )
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()})


DEFAULT_IMG_SIZE = 32
PRETRAINED_IMG_SIZE = 224  # torchvision's ImageNet weights


def input_size(recipe: Recipe) -> int:
    """The training (and so export and runtime) input size: data.img_size, else what the weights were
    pretrained at, else 32."""
    if recipe.data.img_size is not None:
        return recipe.data.img_size
    return PRETRAINED_IMG_SIZE if recipe.model.weights else DEFAULT_IMG_SIZE


def with_train_defaults(recipe: Recipe) -> Recipe:
    """`recipe` with its unset (None) train.lr and train.warmup_epochs taken from the model family's defaults; the
    values a user set are kept. A family's warm-up is cut to a third of a shorter run, so that the rate still decays.
    """
    t = recipe.train
    if t.lr is not None and t.warmup_epochs is not None:
        return recipe
    from edgecnn.models import DETECTORS, FAMILY_DEFAULTS, model_spec

    name = recipe.model.name
    family = FAMILY_DEFAULTS[model_spec(DETECTORS[name].backbone if name in DETECTORS else name).family]
    lr = t.lr if t.lr is not None else family.lr if t.optimizer == "sgd" else family.adamw_lr
    warmup = t.warmup_epochs if t.warmup_epochs is not None else min(family.warmup_epochs, t.epochs / 3)
    return dataclasses.replace(recipe, train=dataclasses.replace(t, lr=lr, warmup_epochs=warmup))


def validate(recipe: Recipe) -> Recipe:
    """Checks beyond types: ranges, names and files; returns the recipe with its training defaults filled in.
    Raises EdgeCNNError naming the key."""
    from edgecnn.data import AUGMENTATIONS, parse_dataset, resolved_dataset
    from edgecnn.models import check_width, model_spec

    if recipe.task == "detect":
        return _validate_detection(recipe)
    model_spec(recipe.model.name)
    if recipe.data.val is not None:
        raise EdgeCNNError("data.val: only detection recipes (task: detect) name a separate held-out dataset")
    recipe = with_train_defaults(recipe)
    positive = {
        "data.img_size": input_size(recipe),
        "data.batch_size": recipe.data.batch_size,
        "train.epochs": recipe.train.epochs,
        "train.lr": recipe.train.lr,
        "model.width": recipe.model.width,
    }
    for key, value in positive.items():
        if value <= 0:
            raise EdgeCNNError(f"{key} must be positive, got {value}")
    check_width(recipe.model.name, recipe.model.width)
    t = recipe.train
    if t.unfreeze is not None and t.freeze != "backbone":
        raise EdgeCNNError("train.unfreeze: needs train.freeze: backbone (nothing is frozen to unfreeze)")
    if t.unfreeze is not None and not 0 < t.unfreeze.at_epoch < t.epochs:
        raise EdgeCNNError(f"train.unfreeze.at_epoch must be between 1 and train.epochs - 1 ({t.epochs - 1}), "
                           f"got {t.unfreeze.at_epoch}")
    if t.unfreeze is not None and t.unfreeze.blocks < 0:
        raise EdgeCNNError(f"train.unfreeze.blocks must be ≥ 0 (0 = all), got {t.unfreeze.blocks}")
    if t.backbone_lr is not None and t.backbone_lr <= 0:
        raise EdgeCNNError(f"train.backbone_lr must be positive, got {t.backbone_lr}")
    if input_size(recipe) < 8:
        raise EdgeCNNError(f"data.img_size must be at least 8, got {input_size(recipe)}")
    for key in ("workers",):
        if getattr(recipe.data, key) < 0:
            raise EdgeCNNError(f"data.{key} must be >= 0")
    for op in recipe.data.augment:
        if op not in AUGMENTATIONS:
            raise EdgeCNNError(f"data.augment: unknown augmentation '{op}'{closest(op, AUGMENTATIONS)}")
    for key in ("mean", "std"):
        values = getattr(recipe.data, key)
        if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
            raise EdgeCNNError(f"data.{key} must be three numbers (R, G, B){' > 0' if key == 'std' else ''}")
    if recipe.data.crop is not None and not 0 < recipe.data.crop <= 1:
        raise EdgeCNNError(f"data.crop must be in (0, 1], got {recipe.data.crop}")
    for key, value in {"quantize.calib_samples": recipe.quantize.calib_samples,
                       "quantize.epochs": recipe.quantize.epochs, "quantize.lr": recipe.quantize.lr}.items():
        if value <= 0:
            raise EdgeCNNError(f"{key} must be positive, got {value}")
    if not 0 <= recipe.prune.ratio < 1:
        raise EdgeCNNError(f"prune.ratio must be in [0, 1) (0 skips pruning), got {recipe.prune.ratio}")
    for key in ("steps", "round_to"):
        if getattr(recipe.prune, key) < 1:
            raise EdgeCNNError(f"prune.{key} must be at least 1")
    if recipe.quantize.method != "none" and not recipe.export.formats:
        raise EdgeCNNError("quantize.method is set but export.formats is empty: add export: {formats: [tflite, onnx]}")
    if not 0 <= recipe.train.label_smoothing < 1:
        raise EdgeCNNError(f"train.label_smoothing must be in [0, 1), got {recipe.train.label_smoothing}")
    name, path = parse_dataset(recipe.data.dataset)
    if path is not None and name == "imagefolder" and not Path(path).is_dir():
        raise EdgeCNNError(f"data.dataset: folder not found: {path}")
    if not _one_path_component(recipe.name):
        raise EdgeCNNError(f"name {_shown(recipe.name)}: a run is written to runs/<name>, so the name must be one "
                           "folder name (no '/', '..' or leading '-')")
    weights = recipe.model.weights
    if weights and (Path(weights).suffix in (".pth", ".pt") or "/" in weights) and not Path(weights).is_file():
        raise EdgeCNNError(f"model.weights: file not found: {weights}")
    # Stored resolved in checkpoints, so that eval and export find the data from any directory.
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data,
                                                                dataset=resolved_dataset(recipe.data.dataset)))


def _validate_detection(recipe: Recipe) -> Recipe:
    """A detection recipe: a registry detector, COCO or YOLO train and held-out datasets, stages detectors have."""
    from edgecnn.models import DETECTORS

    if recipe.model.name not in DETECTORS:
        raise EdgeCNNError(f"model.name: '{recipe.model.name}' is not a detector{closest(recipe.model.name, DETECTORS)}"
                           f"; task: detect takes {', '.join(DETECTORS)}")
    for key in ("dataset", "val"):
        spec = getattr(recipe.data, key)
        if not spec or spec.partition(":")[0] not in ("coco", "yolo") or not Path(spec.partition(":")[2]).exists():
            raise EdgeCNNError(f"data.{key}: {_shown(spec)} is not coco:PATH or yolo:PATH to an existing dataset "
                               "(task: detect trains on data.dataset and scores on data.val)")
    unsupported = {"prune.ratio": recipe.prune.ratio > 0, "quantize.method: qat": recipe.quantize.method == "qat",
                   "train.freeze": recipe.train.freeze != "none", "data.crop": recipe.data.crop is not None,
                   "data.augment": bool(recipe.data.augment)}
    for key, used in unsupported.items():
        if used:
            raise EdgeCNNError(f"{key}: not available for detectors yet (task: detect)")
    if recipe.quantize.method != "none" and not recipe.export.formats:
        raise EdgeCNNError("quantize.method is set but export.formats is empty: add export: {formats: [tflite, onnx]}")
    if not _one_path_component(recipe.name):
        raise EdgeCNNError(f"name {_shown(recipe.name)}: a run is written to runs/<name>, so the name must be one "
                           "folder name (no '/', '..' or leading '-')")
    recipe = with_train_defaults(recipe)
    for key, value in {"data.batch_size": recipe.data.batch_size, "train.epochs": recipe.train.epochs,
                       "train.lr": recipe.train.lr, "model.width": recipe.model.width,
                       "data.img_size": recipe.data.img_size or 320}.items():
        if value <= 0:
            raise EdgeCNNError(f"{key} must be positive, got {value}")
    # Stored resolved in checkpoints, so that eval and export find the data from any directory.
    absolute = {key: f"{kind}:{Path(path).resolve()}" for key in ("dataset", "val")
                for kind, _, path in [getattr(recipe.data, key).partition(":")]}
    return dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **absolute))


def _one_path_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not name.startswith("-") and not any(
        c in "/\\" or not c.isprintable() for c in name)


MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000  # scalars after YAML aliases are expanded: a recipe has a few dozen


def _check_expansion(path: Path, root: yaml.Node | None) -> None:
    """Refuse a YAML alias bomb (a few hundred bytes of nested aliases expanding to billions of values) before it
    is constructed or walked: count the values the node graph expands to, each shared node once."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a node that contains itself counts once
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            sizes[id(node)] = min(1 + sum(size(child) for child in children), MAX_RECIPE_VALUES + 1)
        return sizes[id(node)]

    if root is not None and size(root) > MAX_RECIPE_VALUES:
        raise EdgeCNNError(f"{path}: expands to more than {MAX_RECIPE_VALUES:,} values (nested YAML aliases?): "
                           "not a recipe")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise EdgeCNNError(f"{path}: {path.stat().st_size:,} bytes is too large for a recipe "
                               f"(at most {MAX_RECIPE_BYTES:,})")
        text = path.read_text()
    except FileNotFoundError:
        raise EdgeCNNError(f"recipe not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeCNNError(f"cannot read recipe {path}: {e}") from None
    try:
        _check_expansion(path, yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except RecursionError:  # PyYAML parses nesting recursively: '[[[[...' a thousand deep exhausts the stack
        raise EdgeCNNError(f"{path}: YAML nested too deeply to be a recipe") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EdgeCNNError(f"{path}: YAML syntax error{where}: {getattr(e, 'problem', None) or e}") from None
    try:
        recipe = load_section(Recipe, data, "")
        if recipe.name == "recipe" and not (isinstance(data, dict) and "name" in data):
            recipe.name = path.stem
        return validate(recipe)
    except EdgeCNNError as e:
        raise EdgeCNNError(f"{path}: {e}") from None
