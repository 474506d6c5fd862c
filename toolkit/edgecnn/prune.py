"""Structured pruning with torch-pruning: whole channels are removed, so the exported model is really smaller
and faster (unstructured masks change nothing on a device).

torch-pruning's dependency graph keeps residual, depthwise and squeeze-excite blocks consistent; the classifier
head keeps its outputs. A pruned model is stored as a plain state_dict plus its layer shapes
(`layer_shapes`), and rebuilt with `apply_layer_shapes` before a `weights_only=True` load — never by unpickling
modules.
"""

from __future__ import annotations

import traceback

import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, shorten

SHAPED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Conv: [in, out, groups]; Linear: [in, out]; BatchNorm: [features] — all a rebuild needs."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            shapes[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = [m.num_features]
    return shapes


def _resized(m: nn.Module, shape: list[int]) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        in_ch, out_ch, groups = shape
        return nn.Conv2d(in_ch, out_ch, m.kernel_size, m.stride, m.padding, m.dilation, groups,
                         bias=m.bias is not None, padding_mode=m.padding_mode)
    if isinstance(m, nn.Linear):
        return nn.Linear(shape[0], shape[1], bias=m.bias is not None)
    return type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                   track_running_stats=m.track_running_stats)


def apply_layer_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Give `model`'s layers the stored shapes (in place): a pruned checkpoint's state_dict then fits."""
    for name, shape in shapes.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise EdgeCNNError(f"checkpoint structure names layer '{name}', which this model does not have "
                               "(a checkpoint of another architecture?)") from None
        if not isinstance(m, SHAPED):
            raise EdgeCNNError(f"checkpoint structure: layer '{name}' is a {type(m).__name__}, not a conv/linear/BN")
        if layer_shapes_of(m) == shape:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, _resized(m, shape))
    return model


def layer_shapes_of(m: nn.Module) -> list[int]:
    return layer_shapes(nn.Sequential(m))["0"]


def prune_channels(model: nn.Module, head: str, img_size: int, ratio: float, global_pruning: bool = False,
                   round_to: int | None = 8) -> nn.Module:
    """Remove `ratio` of the channels (per layer, or ranked across layers with `global_pruning`) by L2 group
    magnitude, keeping `head` (the classifier) whole. Modifies and returns `model`."""
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise EdgeCNNError(f"pruning ratio must be in (0, 1), got {ratio}")
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, img_size, img_size), importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio, global_pruning=global_pruning, round_to=round_to,
            ignored_layers=[model.get_submodule(head)],
        )
        pruner.step()
    except EdgeCNNError:
        raise
    except Exception as e:
        raise EdgeCNNError(f"torch-pruning cannot prune {type(model).__name__}: {_where(e)}") from None
    return model


def _where(e: Exception) -> str:
    """The torch-pruning step that failed, in words a user can act on."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "torch_pruning" in f.filename]
    step = frames[-1].name if frames else "?"
    text = shorten(str(e), 160)
    hint = ""
    if "reshape" in step:
        hint = " — a view/reshape mixes channels between layers (e.g. ShuffleNet's channel shuffle)"
    return f"{type(e).__name__} {text} in {step}{hint}".replace("  ", " ")
