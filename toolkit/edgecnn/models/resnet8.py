"""resnet8: the MLPerf Tiny image-classification reference network (CIFAR-10, 32×32).

A 16-channel stem and three stages of one residual block each (16, 32, 64 channels; stride 1, 2, 2),
with 1×1 convolutions on the shortcut where the shape changes, global pooling and a linear head.
"""

from __future__ import annotations

from torch import nn

from edgecnn.models.layers import ConvBNReLU, scaled

CONFIG = [(16, 1), (32, 2), (64, 2)]


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, out_ch, stride=stride)
        self.conv2 = ConvBNReLU(out_ch, out_ch, relu=False)
        self.shortcut = (
            nn.Identity() if stride == 1 and in_ch == out_ch else ConvBNReLU(in_ch, out_ch, 1, stride, relu=False)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        stem = scaled(16, width)
        self.stem = ConvBNReLU(3, stem)
        blocks, in_ch = [], stem
        for out_ch, stride in CONFIG:
            out_ch = scaled(out_ch, width)
            blocks.append(BasicBlock(in_ch, out_ch, stride))
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet8(num_classes: int = 10, width: float = 1.0) -> ResNet8:
    return ResNet8(num_classes, width)
