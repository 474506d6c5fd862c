"""PyTorch → .tflite through litert-torch: float, or int8 via PT2E (strict export, per-channel weights).

The input is NHWC (a camera frame's layout); int8 models take int8 input and give int8 output, with the scale
and zero point the calibration chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output

SCHEME = "PT2E static int8: per-channel symmetric int8 weights, int8 activations (histogram calibration)"


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers PT2E quantizes with weights: the candidates to keep in float."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _quantizer(float_layers: Sequence[str], qat: bool = False):
    _litert_torch()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class PartialQuantizer(PT2EQuantizer):
        """PT2EQuantizer that leaves the named modules, and everything inside them, in float.

        litert-torch's own set_module_name() matches names rebuilt from nn_module_stack keys, which no longer
        carry the module path in torch 2.14; the stack's values do.
        """

        # Its conv+BN QAT annotators build their patterns with a torch.export call that torch 2.14 refuses;
        # edgecnn folds BatchNorm into the convolutions before QAT instead, so those patterns never occur.
        STATIC_QAT_ONLY_OPS: list[str] = []

        def _annotate_for_static_quantization_config(self, model):
            keep = {f"wrapped.{name}" for name in float_layers}

            def quantized(node) -> bool:
                return not keep.intersection(path for path, _ in node.meta.get("nn_module_stack", {}).values())

            self._annotate_all_static_patterns(model, self.global_config, quantized)
            return model

    return PartialQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def _litert_torch():
    """Import the converter stack with its first-import notices (absl, oneDNN, torch pytree) kept quiet."""
    with quiet_native_output():
        import litert_torch
        import litert_torch.quantize.quant_config  # noqa: F401  (pulls in jax and transformers)
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    return litert_torch


class NHWCInput(nn.Module):
    """Takes camera-layout (N, H, W, C) input; the converter folds the transpose into the first conv."""

    def __init__(self, wrapped: nn.Module):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(x.permute(0, 3, 1, 2))


def channels_last(model: nn.Module) -> nn.Module:
    return NHWCInput(model).eval()


def simulate_int8(
    model: nn.Module, img_size: int, calibration: torch.Tensor, float_layers: Sequence[str] = ()
) -> nn.Module:
    """The PT2E fake-quantized model (NHWC in), as the int8 .tflite will compute it, without converting."""
    _litert_torch()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.zeros(1, img_size, img_size, 3),)
    with quiet_native_output():  # torch.export and PT2E log deprecation notices through glog
        try:
            program = torch.export.export(channels_last(model), example, strict=True)
        except Exception as e:
            raise EdgeCNNError(f"torch.export (strict) cannot export the model: {first_line(e)}") from None
        prepared = prepare_pt2e(program.module(), _quantizer(float_layers))
        with torch.no_grad():
            for sample in calibration:
                prepared(sample[None].permute(0, 2, 3, 1))
        return convert_pt2e(prepared, fold_quantize=False)


def export_tflite(
    model: nn.Module, img_size: int, path: Path, calibration: torch.Tensor | None = None,
    float_layers: Sequence[str] = (),
) -> None:
    """Write `model` to `path`; int8 when `calibration` (normalised N×3×H×W samples) is given."""
    _litert_torch()
    if calibration is None:
        _convert(channels_last(model), img_size, path)
        return
    from litert_torch.quantize.quant_config import QuantConfig

    simulated = simulate_int8(model, img_size, calibration, float_layers)
    _convert(simulated, img_size, path, QuantConfig(pt2e_quantizer=_quantizer(float_layers)))


def _convert(module: nn.Module, img_size: int, path: Path, quant_config=None) -> None:
    litert_torch = _litert_torch()
    example = (torch.zeros(1, img_size, img_size, 3),)
    try:
        with quiet_native_output():
            flatbuffer = litert_torch.convert(module, example, quant_config=quant_config).model_content()
    except Exception as e:
        raise EdgeCNNError(f"litert-torch could not convert the model: {first_line(e)}") from None
    # Written here, not by the converter's .export(): its LLVM writer ends the whole process (exit 1, no message)
    # when the disk is full, where Python raises an OSError the export reports.
    path.write_bytes(flatbuffer)


class TFLiteBuilder:
    """The .tflite side of `edgecnn.export.export`: build with some layers in float, and rank layers."""

    def __init__(self, source, calibration: torch.Tensor | None):
        self.source, self.calibration = source, calibration

    def build(self, path: Path, float_layers: list[str]) -> str | None:
        """Write the artefact; return the int8 scheme (None for float)."""
        qat, size = self.source.qat, self.source.pre.img_size
        if qat:
            from edgecnn.export.qat import export_tflite_qat

            export_tflite_qat(qat, size, path)
            return qat.scheme_prefix + SCHEME
        export_tflite(self.source.model, size, path, self.calibration, float_layers)
        return None if self.calibration is None else SCHEME

    def candidates(self) -> dict[str, str]:
        """Layer id (what `build` takes) → the PyTorch module path shown to the user."""
        return {name: name for name in quantizable_layers(self.source.model)}

    def logits_with_float(self, layer: str, images) -> np.ndarray:
        """Simulated in PyTorch (PT2E fake-quant computes what the converter will) instead of one conversion
        per layer."""
        from edgecnn.loader import normalise_batch

        sim = simulate_int8(self.source.model, self.source.pre.img_size, self.calibration, [layer])
        x = normalise_batch(torch.from_numpy(images.pixels), self.source.pre, torch.device("cpu"))
        with torch.no_grad():
            return np.concatenate([sim(x[i : i + 1].permute(0, 2, 3, 1)).numpy() for i in range(len(x))])
