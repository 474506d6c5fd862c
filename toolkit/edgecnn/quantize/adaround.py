"""Learned rounding of the int8 weights (AdaRound, Nagel et al. 2020), behind `edgecnn export --int8 --adaround`.

    model, report = adaround(model, calibration)

Rounding each weight to its nearest int8 step is best for the weight, not for what the layer computes: a layer's
output errors add up over its inputs, and rounding some weights the other way cancels them. AdaRound learns, per
weight, whether to round down or up, minimising the error of the layer's output on calibration inputs (here: 2048
input patches per layer, taken with the layers before it already rounded, as in the paper), with a regulariser that
drives every choice to a whole step. A fifth of the patches is held out: a layer whose learned rounding does worse
there than rounding to nearest keeps nearest, as does a layer with too few inputs to learn from (a classifier reads
one vector per image).

BatchNorm is folded into the convolutions first: the rounding must be learned on the weights that get quantized.
The result is a model whose conv/linear weights already sit on the per-channel grid a converter computes
(`WeightGrid`: symmetric, ±127 steps for int8, ±64 for onnxruntime's 7-bit `reduce_range`; scale = the channel's
largest |weight| / steps), each channel's largest weight kept where it is, so the converter derives the same scales
and keeps these steps. Biases absorb the mean output shift the chosen rounding leaves on the calibration inputs.

Limit: on the int8 grid a channel whose weights are all below 0.031 has PT2E's least step (2^-12), which
onnxruntime does not have: it steps such a channel more finely and rounds it again.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edgecnn.errors import EdgeCNNError, first_line

ITERATIONS = 300  # per layer (the paper's 10,000 are GPU minutes per layer; 300 already remove most of the error)
LEARNING_RATE = 1e-2
PATCHES = 2048  # layer inputs sampled from the calibration images, per layer
BATCH = 512  # patches per step
WARMUP = 0.2  # the first fifth of the steps fits the output alone
REGULARISER = 0.01
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed: late steps push every weight to a whole step
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch
HELD_OUT = 0.2  # of the patches: what decides between learned and nearest
SAMPLES_PER_INPUT = 2  # fewer patches than this per weight of an output channel: nothing to learn from



@dataclass(frozen=True)
class WeightGrid:
    """Per-channel symmetric weight steps as a converter computes them: scale = the channel's largest |weight| /
    `steps`, never below `least_scale`."""

    steps: int
    least_scale: float
    name: str


# PT2E (litert-torch, ExecuTorch) and onnxruntime's int8 weights: -127..127; litert-torch's weight observer gives no
# channel a finer step than 2^-12.
INT8 = WeightGrid(127, 2**-12, "int8")
# onnxruntime's reduce_range (x86 without VNNI): -64..64, no floor but float32's least normal number (an all-zero
# channel stays zero instead of 0/0).
INT8_REDUCED_RANGE = WeightGrid(64, torch.finfo(torch.float32).tiny, "7-bit (reduce_range)")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BatchNorm2d that alone reads a Conv2d folded into it (and replaced by Identity):
    each called once, the BatchNorm with running statistics, the convolution's weight a plain parameter."""
    model = copy.deepcopy(model).eval()
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise EdgeCNNError(f"--adaround cannot trace the model to fold its BatchNorm layers: {first_line(e)}") from None
    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.graph.nodes if n.op == "call_module")
    for node in graph.graph.nodes:
        norm = modules.get(node.target) if node.op == "call_module" else None
        before = node.args[0] if norm is not None and node.args else None
        conv = modules.get(before.target) if getattr(before, "op", "") == "call_module" else None
        if (not isinstance(norm, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d) or len(before.users) != 1
                or calls[node.target] != 1 or calls[before.target] != 1 or norm.running_var is None
                or parametrize.is_parametrized(conv)):
            continue
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                      norm.eps, norm.weight, norm.bias)
        parent, _, name = node.target.rpartition(".")
        setattr(modules[parent] if parent else model, name, nn.Identity())
    return model


class _Enough(Exception):
    """Raised by the sampling hook: nothing after the layer needs to run."""


def _input_patches(model: nn.Module, layer: nn.Module, calibration: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """PATCHES random inputs of `layer` on the calibration images: P × groups × (inputs per group) — for a
    convolution the receptive fields (what one output position reads), for a linear layer its input vectors."""
    batches = range(0, len(calibration), 8)
    per_batch = math.ceil(PATCHES / len(batches))
    taken = []

    def sample(module, args, output):
        x = args[0]
        if isinstance(module, nn.Conv2d):
            # The convolution's own padding ('same' and reflect, replicate, circular included), then plain windows.
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
            columns = F.unfold(x, module.kernel_size, module.dilation, 0, module.stride)
            x = columns.transpose(1, 2).reshape(-1, columns.shape[1])
        else:
            x = x.reshape(-1, x.shape[-1])
        taken.append(x[torch.randperm(len(x), generator=generator)[:per_batch]])
        raise _Enough

    handle = layer.register_forward_hook(sample)
    try:
        with torch.no_grad():
            for start in batches:
                with contextlib.suppress(_Enough):
                    model(calibration[start:start + 8])
    finally:
        handle.remove()
    if not taken:  # a module whose weights the model uses without calling it
        return torch.empty(0)
    patches = torch.cat(taken)[:PATCHES]
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return patches.reshape(len(patches), groups, -1)


def _outputs(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The layer's outputs (without bias) for the patches: P × groups × (outputs per group)."""
    return torch.einsum("pgi,goi->pgo", patches, weights)


def _learn_rounding(layer: nn.Module, patches: torch.Tensor, generator: torch.Generator, grid: WeightGrid) -> dict:
    """Put the layer's weights on their int8 grid, each rounded down or up as learned on most of the patches (or to
    nearest where the held-out patches say learning did not pay); return the held-out output errors (mean squared)
    of both roundings and how many weights were rounded away from their nearest step."""
    weight = layer.weight.detach()
    groups = patches.shape[1]
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    # The converter's scale: each output channel's largest |weight| over its steps, and its floor.
    scale = (w.abs().amax(2, keepdim=True) / grid.steps).clamp(min=grid.least_scale)
    nearest = torch.round(w / scale).clamp(-grid.steps, grid.steps)
    patches = patches[torch.randperm(len(patches), generator=generator)]
    held_out = max(1, int(len(patches) * HELD_OUT))
    check, train = patches[:held_out], patches[held_out:]
    learned = nearest
    if len(train) >= SAMPLES_PER_INPUT * w.shape[2]:
        learned = _learned_steps(w, scale, nearest, train, generator, grid.steps)
    with torch.no_grad():
        target = _outputs(check, w)
        error_nearest = float(((_outputs(check, scale * nearest) - target) ** 2).mean())
        error_learned = float(((_outputs(check, scale * learned) - target) ** 2).mean())
        if error_learned > error_nearest:  # over-fitted, or a few hundred noisy steps ended worse: never ship that
            learned, error_learned = nearest, error_nearest
        rounded = scale * learned
        shift = torch.einsum("goi,gi->go", rounded - w, patches.mean(0)).reshape(-1)
        layer.weight.copy_(rounded.reshape(weight.shape))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(weight.shape[0]))
        layer.bias.sub_(shift)
    return {"nearest": error_nearest, "learned": error_learned, "moved": int((learned != nearest).sum()),
            "weights": learned.numel()}


def _learned_steps(w: torch.Tensor, scale: torch.Tensor, nearest: torch.Tensor, patches: torch.Tensor,
                   generator: torch.Generator, steps: int) -> torch.Tensor:
    """AdaRound's steps (-steps..steps) for the weights `w` (groups × outputs × inputs) on their grid `scale`
    (`nearest`: the steps rounding to nearest gives)."""
    floor = torch.floor(w / scale)
    rest = w / scale - floor
    # Start where rounding is the float weight's own fraction: h(v) = rest.
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA).clamp(min=1e-6) - 1)).clamp(-20, 20).requires_grad_(True)
    target = _outputs(patches, w)
    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    warmup = int(ITERATIONS * WARMUP)
    for step in range(ITERATIONS):
        pick = torch.randint(0, len(patches), (min(BATCH, len(patches)),), generator=generator)
        up = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        error = ((_outputs(patches[pick], scale * (floor + up).clamp(-steps, steps)) - target[pick]) ** 2)
        loss = error.sum((1, 2)).mean()
        if step >= warmup:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (step - warmup) / max(ITERATIONS - warmup, 1)
            loss = loss + REGULARISER * (1 - (2 * up - 1).abs() ** beta).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = (floor + (v >= 0).float()).clamp(-steps, steps).reshape(len(w) * w.shape[1], -1)
        # Each channel's largest weight stays at ±steps: the scale the converter derives from the weights is then
        # the one learned with.
        rows, top = torch.arange(len(learned)), w.reshape(len(learned), -1).abs().argmax(1)
        learned[rows, top] = nearest.reshape(len(learned), -1)[rows, top]
    return learned.reshape(w.shape)


def adaround(model: nn.Module, calibration: torch.Tensor, seed: int = 0,
             grid: WeightGrid = INT8) -> tuple[nn.Module, dict]:
    """A copy of `model` (BatchNorm folded) whose conv/linear weights are rounded to the steps of `grid` by
    AdaRound on the normalised calibration images (N×3×H×W), and what it did."""
    started = time.perf_counter()
    model = fold_batchnorm(model)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        patches = _input_patches(model, layer, calibration, generator)
        if len(patches):
            layers.append(_learn_rounding(layer, patches, generator, grid))
    ratios = sorted(r["learned"] / r["nearest"] if r["nearest"] > 0 else 1.0 for r in layers)
    return model, {
        "layers": len(layers),
        "learned": sum(r["learned"] < r["nearest"] for r in layers),  # the others kept rounding to nearest
        "weight_grid": grid.name,
        "iterations": ITERATIONS,
        "seconds": round(time.perf_counter() - started, 1),
        # Per layer, on held-out patches: the output error of the rounding kept over that of rounding to nearest.
        "error_vs_nearest": {"median": round(ratios[len(ratios) // 2], 3) if ratios else None,
                             "worst": round(ratios[-1], 3) if ratios else None},
        "weights_rounded_the_other_way": round(sum(r["moved"] for r in layers)
                                               / max(sum(r["weights"] for r in layers), 1), 4),
    }
