"""PyTorch → .tflite through litert-torch: float, or int8 from edgecnn's calibrated PT2E graph.

The input is NHWC (a camera frame's layout); int8 models take int8 input and give int8 output, with the scale
and zero point the calibration chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output
from edgecnn.quantize import pt2e
from edgecnn.quantize.adaround import INT8, WeightGrid
from edgecnn.quantize.calibrate import Candidate

SCHEME = "PT2E static int8: per-channel symmetric int8 weights, int8 activations"


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers PT2E quantizes with weights: the candidates to keep in float."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def export_tflite(model: nn.Module, img_size: int, path: Path) -> None:
    """Write the float `model` to `path`."""
    convert(pt2e.channels_last(model), img_size, path)


def convert(module: nn.Module, img_size: int, path: Path, float_layers: Sequence[str] | None = None,
            qat: bool = False) -> None:
    """Convert an NHWC-input module; with `float_layers` given, it is a PT2E-quantized graph."""
    litert_torch = pt2e.litert_torch()
    quant_config = None
    if float_layers is not None:
        from litert_torch.quantize.quant_config import QuantConfig

        quant_config = QuantConfig(pt2e_quantizer=pt2e.quantizer(float_layers, qat=qat))
    example = (torch.zeros(1, img_size, img_size, 3),)
    try:
        with quiet_native_output():
            flatbuffer = litert_torch.convert(module, example, quant_config=quant_config).model_content()
    except Exception as e:
        raise EdgeCNNError(f"litert-torch could not convert the model: {first_line(e)}") from None
    # Written here, not by the converter's .export(): its LLVM writer ends the whole process (exit 1, no message)
    # when the disk is full, where Python raises an OSError the export reports.
    path.write_bytes(flatbuffer)


class Builder:
    """The .tflite side of `edgecnn.export.export`: build with some layers in float, and report layer errors.
    XNNPACK needs no CPU-specific scheme and litert-torch no scratch files: `scheme` and `scratch` go unused."""

    layout = "NHWC"  # of the graphs built and of the file's input
    fold_weights = False  # litert-torch quantizes float weights itself
    converts_qat_graph = True  # after QAT the fake-quantized graph itself is converted

    @staticmethod
    def weight_grid(scheme=None) -> WeightGrid:
        """The weight steps litert-torch computes (for every CPU), which --adaround learns on."""
        return INT8

    def __init__(self, source, calibration: torch.Tensor | None, scheme=None, scratch: Path | None = None):
        self.source, self.calibration = source, calibration
        self.candidate = Candidate("minmax")
        self.last_build: tuple[pt2e.Observed, torch.fx.GraphModule] | None = None  # the last int8 build's graph
        self._observed: pt2e.Observed | None = None  # of the fully int8 graph, reused by every candidate

    @property
    def _qat(self):
        return self.source.qat if self.converts_qat_graph else None

    @property
    def _model(self) -> nn.Module:
        """What post-training quantization starts from: after QAT without its graph, the QAT-tuned weights."""
        return self.source.qat.tuned if self.source.qat and not self._qat else self.source.model

    @property
    def method(self) -> str:
        return "learned in quantization-aware training" if self._qat else self.candidate.name

    def _observe(self, float_layers: list[str]) -> pt2e.Observed:
        if float_layers:
            return pt2e.observe(self._model, self.calibration, self.layout, float_layers)
        if self._observed is None:
            self._observed = pt2e.observe(self._model, self.calibration, self.layout)
        return self._observed

    def write(self, module: nn.Module, path: Path, float_layers: Sequence[str] | None, qat: bool = False) -> None:
        """Convert a module taking `layout` input (a PT2E-quantized graph when `float_layers` is given)."""
        convert(module, self.source.pre.img_size, path, float_layers, qat)

    def build(self, path: Path, float_layers: list[str]) -> str | None:
        """Write the artefact; return the int8 scheme (None for float)."""
        qat = self.source.qat
        if self._qat:
            self.write(qat.converted(), path, [], qat=True)
            return qat.scheme_prefix + SCHEME
        if self.calibration is None:
            self.write(pt2e.channels_last(self.source.model) if self.layout == "NHWC" else self.source.model.eval(),
                       path, None)
            return None
        observed = self._observe(float_layers)
        graph = observed.convert(self.candidate.method, self.fold_weights, searched=self.source.searched)
        self.last_build = (observed, graph)
        self.write(graph, path, float_layers)
        return (f"{qat.scheme_prefix if qat else ''}{SCHEME}, biases corrected for their rounding; activation "
                f"ranges: {self.candidate.name}")

    @property
    def layer_errors(self) -> list[dict]:
        """SQNR per quantized layer of the last int8 build, from its PT2E graph (what litert-torch converted)."""
        return [] if self.last_build is None else pt2e.layer_errors(*self.last_build, self.calibration)

    def target(self) -> dict:
        """The CPUs the int8 scheme suits, and why."""
        return {"target": "any", "reason": "XNNPACK's int8 kernels accumulate in 32 bits on x86 and Arm alike: "
                "one scheme for every CPU"}

    def candidates(self) -> dict[str, str]:
        """Layer id (what `build` takes) → the PyTorch module path shown to the user."""
        return {name: name for name in quantizable_layers(self.source.model)}

    def layer_id(self, layer: str) -> str:
        """What `build` takes to keep the layer of a `layer_errors` row in float."""
        return layer
