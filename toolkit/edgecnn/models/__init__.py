"""Model registry: torchvision backbones, edgecnn's small edge models and SSDLite detectors, by name.

Only names and settings live here, without torch: recipes and command lines are checked against the registry
before anything heavy is imported, so a misspelt model fails in a fraction of a second. Building a model and
loading its weights: `edgecnn.models.build`; detectors: `edgecnn.models.ssdlite`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecnn.errors import EdgeCNNError, closest


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
    builder: str  # "module:function", called with num_classes= and, where width_kw is set, the width under that name
    head: str  # the final nn.Linear, replaced when pretrained weights have another class count
    width_kw: str | None  # the builder's channel-width keyword; None: the model has no width option
    torchvision_name: str | None = None  # whose torchvision weights fit this model
    family: str = "edge"  # its key in FAMILY_DEFAULTS

    @property
    def has_width(self) -> bool:
        return self.width_kw is not None


def _tv(name: str, head: str, width_kw: str | None, family: str) -> ModelSpec:
    return ModelSpec(f"torchvision.models:{name}", head, width_kw, name, family)


MODELS: dict[str, ModelSpec] = {
    "tinycnn": ModelSpec("edgecnn.models.tinycnn:tinycnn", "classifier", "width"),
    "resnet8": ModelSpec("edgecnn.models.resnet8:resnet8", "fc", "width"),
    "mobilenet_v2": _tv("mobilenet_v2", "classifier.1", "width_mult", "mobilenet"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small", "classifier.3", "width_mult", "mobilenet"),
    "mobilenet_v3_large": _tv("mobilenet_v3_large", "classifier.3", "width_mult", "mobilenet"),
    "mobilenet_v3_small_edge": ModelSpec("edgecnn.models.mobilenet_v3_edge:mobilenet_v3_small_edge", "classifier.3",
                                         "width", "mobilenet_v3_small", "mobilenet"),
    "mobilenet_v3_large_edge": ModelSpec("edgecnn.models.mobilenet_v3_edge:mobilenet_v3_large_edge", "classifier.3",
                                         "width", "mobilenet_v3_large", "mobilenet"),
    "resnet18": _tv("resnet18", "fc", None, "resnet"),
    "resnet34": _tv("resnet34", "fc", None, "resnet"),
    "resnet50": _tv("resnet50", "fc", None, "resnet"),
    "convnext_tiny": _tv("convnext_tiny", "classifier.2", None, "convnext"),
    "convnext_edge": ModelSpec("edgecnn.models.convnext_edge:convnext_edge", "classifier.2", "width",
                               family="convnext"),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5", "fc", None, "mobilenet"),
    # PyTorch's default initialisation of the head: see edgecnn.models.build.efficientnet_b0.
    "efficientnet_b0": ModelSpec("edgecnn.models.build:efficientnet_b0", "classifier.1", None, "efficientnet_b0",
                                 "efficientnet"),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise EdgeCNNError(f"unknown model '{name}'{closest(name, MODELS)}; available: {', '.join(MODELS)}")
    return MODELS[name]


def check_width(name: str, width: float) -> None:
    """A registry model `name` and a width multiplier it can be built with."""
    spec = model_spec(name)
    if width <= 0:
        raise EdgeCNNError(f"width must be positive, got {width}")
    if width != 1.0 and not spec.has_width:
        raise EdgeCNNError(f"model '{name}' has no width option; drop width (torchvision has none for it)")


@dataclass(frozen=True)
class SSDLiteConfig:
    backbone: str  # the classifier in MODELS whose ImageNet weights the backbone takes
    reduced_tail: bool = False  # torchvision's ssdlite320 halves the last blocks' channels (no ImageNet weights fit)
    # Anchor sizes run from min_scale to 0.95 of the input over the 6 feature maps. torchvision's 0.2 suits COCO;
    # a camera's people are smaller (vtest.avi at 320 px: 15×44 px, best anchor IoU 0.16 with 0.2, 0.47 with 0.1).
    min_scale: float = 0.1


DETECTORS: dict[str, SSDLiteConfig] = {
    "ssdlite_mobilenet_v2": SSDLiteConfig("mobilenet_v2"),
    "ssdlite_mobilenet_v3_small_edge": SSDLiteConfig("mobilenet_v3_small_edge"),
    "ssdlite_mobilenet_v3_large_edge": SSDLiteConfig("mobilenet_v3_large_edge"),
    # Exactly torchvision's ssdlite320_mobilenet_v3_large, for users who have its COCO weights.
    "ssdlite_mobilenet_v3_large": SSDLiteConfig("mobilenet_v3_large", reduced_tail=True, min_scale=0.2),
}
