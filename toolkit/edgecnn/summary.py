"""`edgecnn summary`: what a model does, layer by layer — kernel, stride, padding, groups, input → output shape,
parameters and MACs — for registry models, checkpoints (pruned ones too) and .tflite/.onnx files.

For PyTorch models the shapes are those of a real forward pass (hooks on every leaf module), so the table is
what the model does, not what a formula expects; the formulas — O = ⌊(I − K + 2P) / S⌋ + 1 and
(K·K·C_in/groups + 1)·C_out parameters — are checked against it in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.layers import LayerRow

# Layer types that a format cannot run in int8 (measured: `benchmarks/int8_status.py`): int8 exports keep them
# in float, which `edgecnn export --int8` reports as float ops left.
NOT_INT8 = {
    nn.LayerNorm: "LayerNorm stays float in int8 TFLite and ONNX",
    nn.GELU: "GELU stays float in int8 TFLite and ONNX",
    nn.Hardsigmoid: "Hardsigmoid stays float in int8 TFLite (use the *_edge model)",
}


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """O = ⌊(I + 2P − D·(K − 1) − 1) / S⌋ + 1, i.e. ⌊(I − K + 2P) / S⌋ + 1 without dilation."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [v, v]


def _describe(name: str, module: nn.Module, inputs: tuple, output) -> LayerRow:
    shape_in = list(inputs[0].shape) if inputs and isinstance(inputs[0], torch.Tensor) else []
    shape_out = list(output.shape) if isinstance(output, torch.Tensor) else []
    row = LayerRow(name, type(module).__name__, shape_in, shape_out,
                   params=sum(p.numel() for p in module.parameters(recurse=False)))
    if isinstance(module, nn.Conv2d):
        row.kernel, row.stride = list(module.kernel_size), list(module.stride)
        row.padding = module.padding if isinstance(module.padding, str) else list(module.padding)
        row.groups = module.groups
        row.macs = shape_out[0] * shape_out[2] * shape_out[3] * module.out_channels * \
            (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    elif isinstance(module, nn.Linear):
        row.macs = (output.numel() // module.out_features) * module.in_features * module.out_features
    elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        row.kernel, row.stride, row.padding = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
    note = next((text for kind, text in NOT_INT8.items() if isinstance(module, kind)), "")
    row.note = note
    return row


def model_layers(model: nn.Module, img_size: int, channels: int = 3) -> list[LayerRow]:
    """Run one image through `model` and describe every leaf module in the order it ran."""
    rows: list[LayerRow] = []
    entered: list[tuple[str, nn.Module, list[int]]] = []
    hooks = []
    for name, module in model.named_modules():
        if list(module.children()) or name == "":
            continue
        hooks.append(module.register_forward_pre_hook(
            lambda m, args, name=name: entered.append((name, m, list(args[0].shape) if args else []))))
        hooks.append(module.register_forward_hook(
            lambda m, args, out, name=name: rows.append(_describe(name, m, args, out))))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, channels, img_size, img_size))
    except RuntimeError as e:
        raise EdgeCNNError(_forward_failure(entered, img_size, e)) from None
    finally:
        for hook in hooks:
            hook.remove()
    params_in_rows = sum(r.params for r in rows)
    total = sum(p.numel() for p in model.parameters())
    if params_in_rows != total:  # parameters held by non-leaf modules (e.g. layer scales): one row for them
        rows.append(LayerRow("(parameters of container modules)", "Parameter", params=total - params_in_rows))
    return rows


def _forward_failure(entered: list, img_size: int, error: RuntimeError) -> str:
    """Which layer a failed forward pass died in, with its input shape, and why (too small, wrong channels)."""
    if not entered:
        return f"forward pass failed: {str(error).splitlines()[0]}"
    name, module, shape = entered[-1]
    detail = str(error).strip().splitlines()[0]
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size, module.stride, module.padding
        if isinstance(p, tuple) and len(shape) == 4:
            out = [conv_output_size(shape[2 + i], k[i], s[i], p[i], module.dilation[i]) for i in range(2)]
            if min(out) < 1:
                return (f"input {img_size}×{img_size} is too small for this network: layer {name} (Conv2d kernel "
                        f"{k[0]}×{k[1]}, stride {s[0]}, padding {p[0]}) gets {shape} and would output "
                        f"{out[0]}×{out[1]}; use a larger --img-size")
        if len(shape) == 4 and shape[1] != module.in_channels:
            return (f"layer {name} (Conv2d) expects {module.in_channels} input channels but gets {shape}: "
                    f"{detail}")
    return f"layer {name} ({type(module).__name__}) failed on input {shape}: {detail}"


@dataclass
class Complexity:
    macs: int
    params: int


def complexity(model: nn.Module, img_size: int) -> Complexity:
    """Conv and linear multiply-accumulates of one image, counted as `edgecnn summary` and the .tflite/.onnx
    layer tables count them (torch-pruning's counter adds BatchNorm and activations: +6 % on MobileNetV2), so
    checkpoints, cards, files and the device profiles' calibration all use one measure."""
    layers = model_layers(model, img_size)
    return Complexity(sum(layer.macs for layer in layers), sum(p.numel() for p in model.parameters()))


def summarise(target: str, img_size: int | None, num_classes: int | None, width: float) -> tuple[list[LayerRow], str]:
    """(rows, title) for a registry model name or an edgecnn checkpoint."""
    from edgecnn.checkpoint import is_checkpoint_path, load_checkpoint

    path = Path(target)
    if is_checkpoint_path(path):
        ckpt = load_checkpoint(path)
        if num_classes is not None and num_classes != ckpt.num_classes:
            from edgecnn.models import model_spec

            head = model_spec(ckpt.model).head
            shape = tuple(ckpt.state_dict[head + ".weight"].shape)
            raise EdgeCNNError(f"{path}: head {head} is {shape} ({ckpt.num_classes} classes) but --num-classes is "
                               f"{num_classes}: a head for {num_classes} classes would be ({num_classes}, {shape[1]})")
        size = img_size or ckpt.preprocess.img_size
        return model_layers(ckpt.build(), size), f"{path.name}: {ckpt.model} at {size}×{size}"
    from edgecnn.models.build import build_model
    from edgecnn.recipe import DEFAULT_IMG_SIZE

    size = img_size or DEFAULT_IMG_SIZE  # as `edgecnn train` without pretrained weights
    model = build_model(target, num_classes or 1000, width)
    return model_layers(model, size), f"{target} (width {width}, {num_classes or 1000} classes) at {size}×{size}"
