"""tinycnn: three conv blocks and a linear head, small enough to train in seconds on a CPU."""

from __future__ import annotations

from torch import nn

from edgecnn.models.layers import ConvBNReLU, scaled

# (output channels, stride) per block, before width scaling.
CONFIG = [(16, 1), (32, 2), (64, 2), (128, 2)]


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, in_ch = [], 3
        for out_ch, stride in CONFIG:
            out_ch = scaled(out_ch, width)
            layers.append(ConvBNReLU(in_ch, out_ch, stride=stride))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def tinycnn(num_classes: int = 10, width: float = 1.0) -> TinyCNN:
    return TinyCNN(num_classes, width)
