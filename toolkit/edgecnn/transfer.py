"""Fine-tuning a pretrained backbone: which blocks are frozen in which epoch, and what the pretraining expects.

    train:
      freeze: backbone                      # only the new head learns at first ...
      unfreeze: {at_epoch: 3, blocks: 2}    # ... then the top 2 backbone blocks join it (blocks: 0 = all)
      backbone_lr: 0.01                     # the backbone's learning rate (the head uses train.lr)

A frozen block's parameters get no gradient (requires_grad off: its backward pass is skipped too) and its
BatchNorm layers keep their pretrained statistics (eval mode), which is what small fine-tuning sets need.
"""

from __future__ import annotations

from torch import nn

from edgecnn.models import DETECTORS, model_spec
from edgecnn.preprocess import IMAGENET_MEAN, IMAGENET_STD
from edgecnn.recipe import PRETRAINED_IMG_SIZE, Recipe, input_size


def backbone_blocks(model: nn.Module, name: str) -> list[tuple[str, list[nn.Module]]]:
    """The backbone as (name, modules) blocks from input to output; the classifier head is not among them."""
    head_root = model_spec(name).head.split(".")[0]
    if hasattr(model, "layer4"):  # torchvision ResNets: the stem, then four stages
        stem = [m for n, m in model.named_children() if n in ("conv1", "bn1")]
        return [("stem", stem)] + [(f"layer{i}", [getattr(model, f"layer{i}")]) for i in range(1, 5)]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):  # MobileNet, EfficientNet, ConvNeXt, tinycnn
        return [(f"features.{n}", [m]) for n, m in features.named_children()]
    return [(n, [m]) for n, m in model.named_children() if n != head_root and any(True for _ in m.parameters())]


def frozen_blocks(recipe: Recipe, epoch: int, blocks: list[tuple[str, list[nn.Module]]]) -> list[str]:
    """Names of the backbone blocks frozen during `epoch` (0-based)."""
    cfg = recipe.train
    if cfg.freeze != "backbone":
        return []
    names = [n for n, _ in blocks]
    if cfg.unfreeze is None or epoch < cfg.unfreeze.at_epoch:
        return names
    thawed = len(names) if cfg.unfreeze.blocks == 0 else min(cfg.unfreeze.blocks, len(names))
    return names[: len(names) - thawed]


def apply_freeze(blocks: list[tuple[str, list[nn.Module]]], frozen: list[str]) -> list[nn.Module]:
    """Switch gradients off in the frozen blocks (on elsewhere); returns their modules, whose BatchNorm layers
    the training loop keeps in eval mode."""
    modules = []
    for name, parts in blocks:
        for module in parts:
            for p in module.parameters():
                p.requires_grad_(name not in frozen)
            if name in frozen:
                modules.append(module)
    return modules


def keep_frozen_batchnorm(modules: list[nn.Module]) -> None:
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def head_parameters(model: nn.Module, name: str) -> set[int]:
    """ids of the parameters of the layers new on a pretrained backbone (they get train.lr, the rest
    train.backbone_lr): a classifier's head; a detector's head and extra feature layers."""
    from edgecnn.models.ssdlite import NEW_LAYERS

    heads = NEW_LAYERS if name in DETECTORS else (model_spec(name).head,)
    return {id(p) for head in heads for p in model.get_submodule(head).parameters()}


def pretraining_warning(recipe: Recipe) -> str | None:
    """What the recipe contradicts in the pretraining of its weights (size, normalisation), or None."""
    if not recipe.model.weights:
        return None
    data, problems, size = recipe.data, [], input_size(recipe)
    if size != PRETRAINED_IMG_SIZE:
        problems.append(f"trains at {size}×{size}")
    if data.mean is not None and tuple(data.mean) != IMAGENET_MEAN or data.std is not None and tuple(
            data.std) != IMAGENET_STD:
        problems.append(f"normalises with mean {data.mean} std {data.std}")
    if not problems:
        return None
    size = PRETRAINED_IMG_SIZE
    return (f"warning: {recipe.model.weights} was pretrained at {size}×{size} with ImageNet "
            f"mean {list(IMAGENET_MEAN)} / std {list(IMAGENET_STD)}; this recipe {' and '.join(problems)} "
            "(the checkpoint, its exports and the runtime will use the recipe's values)")
