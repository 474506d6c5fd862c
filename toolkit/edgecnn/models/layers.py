"""Building blocks shared by edgecnn's own model families."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Channels × width, rounded to a multiple of `divisor` (odd widths run slowly in XNNPACK/onnxruntime)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, relu: bool = True):
        layers = [
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
