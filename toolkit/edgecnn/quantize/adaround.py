"""Learned rounding of the int8 weights (AdaRound, Nagel et al. 2020), behind `edgecnn export --int8 --adaround`.

    model, report = adaround(model, calibration)

Rounding each weight to its nearest int8 step is best for the weight, not for what the layer computes: a layer's
output errors add up over its inputs, and rounding some weights the other way cancels them. AdaRound learns, per
weight, whether to round down or up, minimising the error of the layer's output on calibration inputs (here: 2048
input patches of the float model, per layer), with a regulariser that drives every choice to a whole step.

BatchNorm is folded into the convolutions first: the rounding must be learned on the weights that get quantized.
The result is a model whose conv/linear weights already sit on the per-channel int8 grid the converters compute
(symmetric, ±127 steps, scale = the channel's largest |weight| / 127), each channel's largest weight kept where it
is, so every converter derives the same scales and keeps these steps. Biases absorb the mean output shift the
chosen rounding leaves on the calibration inputs.

Limits: a channel whose weights are all below 0.031 has PT2E's least step (2^-12), which onnxruntime does not
have: it steps such a channel more finely and rounds it again. An .onnx built for x86 without VNNI quantizes its
weights to 7 bits (reduce_range) and rounds every weight again.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line

ITERATIONS = 300  # per layer (the paper's 10,000 are GPU minutes per layer; 300 already remove most of the error)
LEARNING_RATE = 1e-2
PATCHES = 2048  # layer inputs sampled from the calibration images, per layer
BATCH = 512  # patches per step
WARMUP = 0.2  # the first fifth of the steps fits the output alone
REGULARISER = 0.01
BETA = (20.0, 2.0)  # the regulariser's exponent, annealed: late steps push every weight to a whole step
STEPS = 127  # int8 weights: symmetric, -127..127, as PT2E's and onnxruntime's weight quantizers use
LEAST_SCALE = 2**-12  # litert-torch's weight observer gives no channel a finer step (onnxruntime has no floor)
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` with every BatchNorm2d that alone reads a Conv2d folded into it (and replaced by Identity)."""
    model = copy.deepcopy(model).eval()
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise EdgeCNNError(f"--adaround cannot trace the model to fold its BatchNorm layers: {first_line(e)}") from None
    modules = dict(model.named_modules())
    for node in graph.graph.nodes:
        norm = modules.get(node.target) if node.op == "call_module" else None
        before = node.args[0] if norm is not None and node.args else None
        conv = modules.get(before.target) if getattr(before, "op", "") == "call_module" else None
        if not isinstance(norm, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d) or len(before.users) != 1:
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
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
            columns = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
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
    patches = torch.cat(taken)[:PATCHES]
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return patches.reshape(len(patches), groups, -1)


def _outputs(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The layer's outputs (without bias) for the patches: P × groups × (outputs per group)."""
    return torch.einsum("pgi,goi->pgo", patches, weights)


def _learn_rounding(layer: nn.Module, patches: torch.Tensor, generator: torch.Generator) -> tuple[float, float, float]:
    """Put the layer's weights on their int8 grid, each rounded down or up as learned; return the output error
    (mean squared) of rounding to nearest and of the learned rounding on the patches, and the fraction of weights
    rounded away from their nearest step."""
    weight = layer.weight.detach()
    groups = patches.shape[1]
    w = weight.reshape(groups, weight.shape[0] // groups, -1)
    # The converters' scale: each output channel's largest |weight| over 127, and PT2E's floor.
    scale = (w.abs().amax(2, keepdim=True) / STEPS).clamp(min=LEAST_SCALE)
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
        error = ((_outputs(patches[pick], scale * (floor + up).clamp(-STEPS, STEPS)) - target[pick]) ** 2)
        loss = error.sum((1, 2)).mean()
        if step >= warmup:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (step - warmup) / max(ITERATIONS - warmup, 1)
            loss = loss + REGULARISER * (1 - (2 * up - 1).abs() ** beta).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nearest = torch.round(w / scale).clamp(-STEPS, STEPS)
        learned = (floor + (v >= 0).float()).clamp(-STEPS, STEPS).reshape(weight.shape[0], -1)
        # Each channel's largest weight stays at ±127: the scale every converter derives from the weights is then
        # the one learned with.
        rows, top = torch.arange(weight.shape[0]), w.reshape(weight.shape[0], -1).abs().argmax(1)
        learned[rows, top] = nearest.reshape(weight.shape[0], -1)[rows, top]
        learned = learned.reshape(w.shape)
        error_nearest = float(((_outputs(patches, scale * nearest) - target) ** 2).mean())
        error_learned = float(((_outputs(patches, scale * learned) - target) ** 2).mean())
        if error_learned > error_nearest:  # a few hundred noisy steps can end worse: never ship that
            learned, error_learned = nearest, error_nearest
        rounded = scale * learned
        shift = torch.einsum("goi,gi->go", rounded - w, patches.mean(0)).reshape(-1)
        layer.weight.copy_(rounded.reshape(weight.shape))
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(weight.shape[0]))
        layer.bias.sub_(shift)
    return error_nearest, error_learned, float((learned != nearest).float().mean())


def adaround(model: nn.Module, calibration: torch.Tensor, seed: int = 0) -> tuple[nn.Module, dict]:
    """A copy of `model` (BatchNorm folded) whose conv/linear weights are rounded to int8 steps by AdaRound on the
    normalised calibration images (N×3×H×W), and what it did."""
    started = time.perf_counter()
    model = fold_batchnorm(model)
    generator = torch.Generator().manual_seed(seed)
    ratios, changed = [], []
    for layer in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        error_nearest, error_learned, moved = _learn_rounding(
            layer, _input_patches(model, layer, calibration, generator), generator)
        ratios.append(error_learned / error_nearest if error_nearest > 0 else 1.0)
        changed.append(moved)
    ratios.sort()
    return model, {
        "layers": len(ratios),
        "iterations": ITERATIONS,
        "seconds": round(time.perf_counter() - started, 1),
        # Per layer, the output error of the learned rounding over that of rounding to nearest (median, worst).
        "error_vs_nearest": {"median": round(ratios[len(ratios) // 2], 3) if ratios else None,
                             "worst": round(ratios[-1], 3) if ratios else None},
        "weights_rounded_the_other_way": round(sum(changed) / max(len(changed), 1), 4),
    }
