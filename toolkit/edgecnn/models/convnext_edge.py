"""convnext_edge: torchvision's ConvNeXt built small enough for an edge device.

Four stages of depth (2, 2, 4, 2) at (32, 64, 128, 256) channels × width, ~1.5 M parameters instead of
convnext_tiny's 28.6 M: the same blocks (7×7 depthwise conv, LayerNorm, 1×1 expansions with GELU, layer scale),
so it shows what ConvNeXt's LayerNorm and GELU mean for int8 export (they stay float) at a trainable size.
"""

from __future__ import annotations

from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from edgecnn.models.layers import scaled

STAGES = [(32, 2), (64, 2), (128, 4), (256, 2)]  # (channels, blocks)
LAYER_SCALE = 0.1  # torchvision's 1e-6 starts every block as identity, which a short run barely leaves


def convnext_edge(num_classes: int, width: float = 1.0) -> ConvNeXt:
    channels = [scaled(c, width) for c, _ in STAGES]
    setting = [CNBlockConfig(c, channels[i + 1] if i + 1 < len(channels) else None, n)
               for i, (c, (_, n)) in enumerate(zip(channels, STAGES, strict=True))]
    return ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=LAYER_SCALE, num_classes=num_classes)
