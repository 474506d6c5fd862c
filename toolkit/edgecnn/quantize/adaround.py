"""Learned weight rounding (AdaRound, Nagel et al. 2020) for `--adaround`.

Rounding every weight to its nearest int8 step is not what keeps a layer's output closest to float: AdaRound
learns, per weight, whether to round up or down so that the layer's output on the calibration images moves least.
The result is handed to the converters as float weights that already sit on the int8 grid (BatchNorm folded
first, each channel's largest weight kept at ±127 steps so the converter derives the very same scale): litert-
torch and onnxruntime then quantize them to exactly the learned integers, with no converter-specific hook.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgecnn.errors import EdgeCNNError

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
EPS = 2**-12  # the smallest scale the PT2E observers allow: channels below it are left alone
POSITIONS = 2048  # output positions sampled per layer


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BatchNorm that follows a convolution folded into it."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as e:
        raise EdgeCNNError(f"folding BatchNorm into the convolutions needs torch.fx to trace the model, and it "
                           f"could not: {str(e).splitlines()[0][:200]}") from None


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _layer_inputs(model: nn.Module, layers: dict[str, nn.Module], calibration: torch.Tensor) -> dict:
    """Each layer's input on the calibration images, as (positions × fan-in) patch rows (sampled)."""
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, torch.Tensor] = {}

    def hook(name, module):
        def capture(_, args, __):
            x = args[0].detach()
            if isinstance(module, nn.Conv2d):
                patches = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
                x = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (N·L) × (C_in·k·k)
            x = x.reshape(-1, x.shape[-1])
            pick = torch.randperm(len(x), generator=generator)[:POSITIONS]
            rows[name] = torch.cat([rows[name], x[pick]]) if name in rows else x[pick]
        return capture

    handles = [m.register_forward_hook(hook(name, m)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(calibration), 16):
                model(calibration[i : i + 16])
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _round_layer(module: nn.Module, x: torch.Tensor, levels: int, iterations: int) -> None:
    """Learn the rounding of one layer's weights against its float output on `x`; write the snapped weights."""
    weight = module.weight.detach()
    out_channels = weight.shape[0]
    flat = weight.reshape(out_channels, -1)
    scale = flat.abs().amax(1, keepdim=True) / levels
    usable = (scale >= EPS).squeeze(1)
    scale = scale.clamp_min(EPS)
    floor = torch.floor(flat / scale)
    rest = flat / scale - floor
    v = torch.log(((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4) /
                  (1 - ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4))).requires_grad_()
    groups = getattr(module, "groups", 1)

    def output(w: torch.Tensor) -> torch.Tensor:
        if groups == 1:
            return x @ w.T
        # Depthwise: each output channel sees only its own group's slice of the patch row.
        per_group = w.shape[1]
        xs = x.reshape(len(x), groups, per_group)
        ws = w.reshape(groups, out_channels // groups, per_group)
        return torch.einsum("ngk,gok->ngo", xs, ws).reshape(len(x), out_channels)

    with torch.no_grad():
        target = output(flat)
    optimizer = torch.optim.Adam([v], lr=1e-2)
    for step in range(iterations):
        beta = 20 - (20 - 2) * step / max(iterations - 1, 1)
        h = _h(v)
        w = torch.clamp(floor + h, -levels, levels) * scale
        loss = ((output(w) - target) ** 2).mean()
        regular = (1 - (2 * h - 1).abs().pow(beta)).sum() if step > iterations // 5 else 0.0
        optimizer.zero_grad()
        (loss + 0.01 * loss.detach() / max(flat.numel(), 1) * regular).backward()
        optimizer.step()
    with torch.no_grad():
        snapped = torch.clamp(floor + (v >= 0).float(), -levels, levels) * scale
        nearest = torch.clamp(torch.round(flat / scale), -levels, levels) * scale
        chosen = torch.where(usable[:, None], snapped, flat)
        if ((output(chosen) - target) ** 2).mean() > ((output(nearest) - target) ** 2).mean():
            chosen = torch.where(usable[:, None], nearest, flat)
        module.weight.copy_(chosen.reshape(weight.shape))


def adaround(model: nn.Module, calibration: torch.Tensor, levels: int = 127, iterations: int = 200) -> nn.Module:
    """A BatchNorm-folded copy of `model` whose conv/linear weights sit on the int8 grid (±`levels` steps per
    channel; 63 for 7-bit reduce_range weights) with learned rounding."""
    folded = fold_batchnorm(model)
    layers = {name: m for name, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    inputs = _layer_inputs(folded, layers, calibration)
    for name, module in layers.items():
        _round_layer(module, inputs.pop(name), levels, iterations)
    return folded
