"""Registry models built by name, and their pretrained weights loaded (the registry itself: `edgecnn.models`)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torchvision
from torch import nn

from edgecnn.errors import EdgeCNNError, closest
from edgecnn.models import check_width, model_spec


def efficientnet_b0(num_classes: int) -> nn.Module:
    """torchvision's EfficientNet-B0 with PyTorch's default initialisation of the classifier head.

    torchvision draws the head from U(±1/√num_classes), a scale meant for ImageNet's 1000 classes: with 10 classes the
    first logits have a standard deviation of ~4 (loss 5.8 where chance is 2.3) and a 3-epoch run from scratch on
    digits stalls below 90 %. Pretrained weights overwrite or replace the head either way."""
    model = torchvision.models.efficientnet_b0(num_classes=num_classes)
    model.classifier[1].reset_parameters()
    return model


def build_model(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    spec = model_spec(name)
    if num_classes < 2:
        raise EdgeCNNError(f"a classifier needs at least 2 classes, got {num_classes}")
    check_width(name, width)
    module, function = spec.builder.split(":")
    builder = getattr(importlib.import_module(module), function)
    return builder(num_classes=num_classes, **({spec.width_kw: width} if spec.has_width else {}))


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
