"""Quantization-friendly MobileNetV3: torchvision's network with an int8-friendly squeeze-excite gate.

torchvision's squeeze-excite gate is `nn.Hardsigmoid`, which the TFLite int8 path leaves in float. The edge
variant computes the same function as ReLU6(x + 3) / 6, which quantizes, so torchvision's pretrained weights
load unchanged and give the same outputs.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation


class HardSigmoidReLU6(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(x + 3.0) * (1.0 / 6.0)


def make_edge(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, SqueezeExcitation):
            module.scale_activation = HardSigmoidReLU6()
    return model


def mobilenet_v3_small_edge(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    return make_edge(torchvision.models.mobilenet_v3_small(num_classes=num_classes, width_mult=width))


def mobilenet_v3_large_edge(num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    return make_edge(torchvision.models.mobilenet_v3_large(num_classes=num_classes, width_mult=width))
