"""Model registry: torchvision backbones plus edgecnn's small edge models, behind one `build_model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from edgecnn.errors import EdgeCNNError, closest
from edgecnn.models.convnext_edge import convnext_edge
from edgecnn.models.mobilenet_v3_edge import mobilenet_v3_large_edge, mobilenet_v3_small_edge
from edgecnn.models.resnet8 import resnet8
from edgecnn.models.tinycnn import tinycnn


@dataclass(frozen=True)
class TrainDefaults:
    """A model family's training settings, used where the recipe or command line leaves them unset (None)."""

    lr: float  # SGD with momentum 0.9, batch 32
    warmup_epochs: float
    adamw_lr: float = 1e-3


# Measured from scratch on digits (3 epochs, 32 px, batch 32): benchmarks/training_defaults.py. The small edge
# networks learn fastest at SGD's usual 0.1. The deep ImageNet networks diverge there on a small dataset (train loss
# 7-35 in the first epoch, top-1 15-50 % after three): they need a lower rate, reached through a one-epoch warm-up.
FAMILY_DEFAULTS: dict[str, TrainDefaults] = {
    "edge": TrainDefaults(lr=0.1, warmup_epochs=0.0),  # tinycnn, resnet8
    "mobilenet": TrainDefaults(lr=0.02, warmup_epochs=1.0),  # also ShuffleNet: depthwise blocks, BN everywhere
    "resnet": TrainDefaults(lr=0.01, warmup_epochs=1.0),  # 0.02 leaves resnet50 below 90 %
    "convnext": TrainDefaults(lr=0.01, warmup_epochs=1.0),
    "efficientnet": TrainDefaults(lr=0.01, warmup_epochs=1.0),
}


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[..., nn.Module]  # (num_classes, width) -> model, or (num_classes) when has_width is False
    head: str  # the final nn.Linear, replaced when pretrained weights have another class count
    has_width: bool
    torchvision_name: str | None = None  # whose torchvision weights fit this model
    family: str = "edge"  # its key in FAMILY_DEFAULTS


def _tv(name: str, width_kw: str | None = None) -> Callable[..., nn.Module]:
    builder = getattr(torchvision.models, name)
    if width_kw is None:
        return lambda num_classes: builder(num_classes=num_classes)
    return lambda num_classes, width: builder(num_classes=num_classes, **{width_kw: width})


def _efficientnet_b0(num_classes: int) -> nn.Module:
    """torchvision's EfficientNet-B0 with PyTorch's default initialisation of the classifier head.

    torchvision draws the head from U(±1/√num_classes), a scale meant for ImageNet's 1000 classes: with 10 classes the
    first logits have a standard deviation of ~4 (loss 5.8 where chance is 2.3) and a 3-epoch run from scratch on
    digits stalls below 90 %. Pretrained weights overwrite or replace the head either way."""
    model = torchvision.models.efficientnet_b0(num_classes=num_classes)
    model.classifier[1].reset_parameters()
    return model


MODELS: dict[str, ModelSpec] = {
    "tinycnn": ModelSpec(tinycnn, "classifier", True),
    "resnet8": ModelSpec(resnet8, "fc", True),
    "mobilenet_v2": ModelSpec(_tv("mobilenet_v2", "width_mult"), "classifier.1", True, "mobilenet_v2", "mobilenet"),
    "mobilenet_v3_small": ModelSpec(_tv("mobilenet_v3_small", "width_mult"), "classifier.3", True,
                                    "mobilenet_v3_small", "mobilenet"),
    "mobilenet_v3_large": ModelSpec(_tv("mobilenet_v3_large", "width_mult"), "classifier.3", True,
                                    "mobilenet_v3_large", "mobilenet"),
    "mobilenet_v3_small_edge": ModelSpec(mobilenet_v3_small_edge, "classifier.3", True, "mobilenet_v3_small",
                                         "mobilenet"),
    "mobilenet_v3_large_edge": ModelSpec(mobilenet_v3_large_edge, "classifier.3", True, "mobilenet_v3_large",
                                         "mobilenet"),
    "resnet18": ModelSpec(_tv("resnet18"), "fc", False, "resnet18", "resnet"),
    "resnet34": ModelSpec(_tv("resnet34"), "fc", False, "resnet34", "resnet"),
    "resnet50": ModelSpec(_tv("resnet50"), "fc", False, "resnet50", "resnet"),
    "convnext_tiny": ModelSpec(_tv("convnext_tiny"), "classifier.2", False, "convnext_tiny", "convnext"),
    "convnext_edge": ModelSpec(convnext_edge, "classifier.2", True, family="convnext"),
    "shufflenet_v2_x0_5": ModelSpec(_tv("shufflenet_v2_x0_5"), "fc", False, "shufflenet_v2_x0_5", "mobilenet"),
    "efficientnet_b0": ModelSpec(_efficientnet_b0, "classifier.1", False, "efficientnet_b0", "efficientnet"),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise EdgeCNNError(f"unknown model '{name}'{closest(name, MODELS)}; available: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    spec = model_spec(name)
    if num_classes < 2:
        raise EdgeCNNError(f"a classifier needs at least 2 classes, got {num_classes}")
    if width <= 0:
        raise EdgeCNNError(f"width must be positive, got {width}")
    if spec.has_width:
        return spec.build(num_classes, width)
    if width != 1.0:
        raise EdgeCNNError(f"model '{name}' has no width option; drop width (torchvision has none for it)")
    return spec.build(num_classes)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a `.pth` file, an edgecnn checkpoint or a torchvision reference checkpoint."""
    if not path.is_file():
        raise EdgeCNNError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeCNNError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgeCNNError(f"{path} holds no state_dict of tensors")
    return obj


def download_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """torchvision's pretrained weights by name ('DEFAULT', 'IMAGENET1K_V1', or the full enum name)."""
    tv_name = model_spec(name).torchvision_name
    if tv_name is None:
        raise EdgeCNNError(f"model '{name}' has no torchvision weights; pass a local .pth file")
    enum = torchvision.models.get_model_weights(tv_name)
    key = weights.rsplit(".", 1)[-1]
    try:
        entry = enum[key] if key != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = [w.name for w in enum]
        raise EdgeCNNError(
            f"'{weights}' is neither a file nor torchvision weights for {tv_name}{closest(key, names)}; "
            f"choose from {', '.join(names)}"
        ) from None
    try:
        return entry.get_state_dict(progress=True)
    except Exception as e:
        raise EdgeCNNError(
            f"could not download {enum.__name__}.{entry.name} ({e}); download it elsewhere and pass --weights FILE.pth"
        ) from None


def weights_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """`weights` is a file (.pth/.pt or any existing path) or a torchvision weights name."""
    path = Path(weights)
    is_file = path.suffix in (".pth", ".pt") or path.exists()
    return read_state_dict(path) if is_file else download_state_dict(name, weights)


def head_classes(name: str, state: dict[str, torch.Tensor]) -> int | None:
    """How many classes the weights' classifier head predicts, if the state_dict has that head."""
    weight = state.get(model_spec(name).head + ".weight")
    return None if weight is None else int(weight.shape[0])


def load_pretrained(model: nn.Module, name: str, weights: str, state: dict | None = None) -> str:
    """Load `weights` (a file or a torchvision name) into `model`; return a one-line note of what was done.

    The classifier head is kept only if its shape fits; everything else must match exactly.
    """
    state = weights_state_dict(name, weights) if state is None else state
    head = model_spec(name).head + "."
    own = model.state_dict()
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    dropped = [k for k in mismatched if k.startswith(head)]
    bad = [k for k in mismatched if not k.startswith(head)]
    if bad:
        k = bad[0]
        raise EdgeCNNError(
            f"weights {weights} do not fit {name}: {k} is {tuple(state[k].shape)} in the file but "
            f"{tuple(own[k].shape)} in the model (wrong model name or width?)"
        )
    missing = [k for k in own if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise EdgeCNNError(f"weights {weights} do not fit {name}: {detail} (wrong model name?)")
    model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=not dropped)
    if dropped:
        return f"loaded {weights}; new classifier head ({model.get_submodule(head[:-1]).out_features} classes)"
    return f"loaded {weights}"
