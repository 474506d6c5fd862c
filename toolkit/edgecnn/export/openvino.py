"""PyTorch → OpenVINO IR (.xml + .bin), float or int8, through the ONNX builder's graph.

int8 comes from the same calibrated QDQ graph as the .onnx (edgecnn's activation ranges, the same `auto` search and
layer fallback); OpenVINO reads each QuantizeLinear/DequantizeLinear pair as a FakeQuantize and its CPU plugin runs
the convolutions between them in int8. NNCF would calibrate again with its own ranges: two formats from one model
would then differ by more than their kernels, and the range search and per-layer report would not apply to it.
The ONNX scheme for the target carries over (7-bit weights on x86 without VNNI: OpenVINO's AVX2 int8
convolutions add u8×s8 pairs in 16 bits like onnxruntime's), but for the uint8 weights of x86-avx2-u8u8: OpenVINO
runs convolutions with uint8 weights in float (measured on MobileNetV2: 52 of 52 in f32/bf16), so its IR keeps
x86-avx2's 7-bit int8 weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.export import onnx
from edgecnn.quantize.adaround import WeightGrid
from edgecnn.quantize.target import SCHEMES, Scheme


def _telemetry_only_if_opted_in() -> None:
    """OpenVINO's converter reports usage to Google Analytics unless its user opted out: with no recorded choice
    it assumes consent. edgecnn sets the converter's telemetry up first, with the library's own opt-in mode, so
    that nothing is sent unless the user opted in (`opt_in_out --opt_in`); the converter then reuses that setup."""
    try:
        from openvino.tools.ovc import telemetry_utils
    except ImportError:
        return
    telemetry_utils.init_telemetry_class(telemetry_utils.get_tid(), "OVC", telemetry_utils.get_rt_version(), "ga4",
                                         enable_opt_in_dialog=True, disable_in_ci=True)


def convert(onnx_path: Path, path: Path) -> None:
    """Write the IR of an ONNX file: `path` (.xml) and its .bin; weights stay f32 (no f16 compression)."""
    try:
        import openvino as ov
    except ImportError:
        raise EdgeCNNError("--format openvino needs OpenVINO: pip install 'edgecnn[openvino]'") from None
    _telemetry_only_if_opted_in()
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(path), compress_to_fp16=False)
    except Exception as e:  # the frontends raise their own types (OpConversionFailure, GeneralFailure, ...)
        raise EdgeCNNError(f"OpenVINO could not convert the model: {first_line(e)}") from None


def _int8_weights(scheme: Scheme | None) -> Scheme | None:
    if not scheme or scheme.onnx_weights != "uint8":
        return scheme
    fallback = SCHEMES["x86-avx2"]
    return replace(fallback, reason=f"{scheme.target} asked for, whose uint8 weights OpenVINO would run in float: "
                                    f"{fallback.reason}")


class Builder(onnx.Builder):
    """The OpenVINO side of `edgecnn.export.export`: the ONNX builder's graph, converted. Layer errors and the
    fallback's layer names are the QDQ graph's, measured in onnxruntime."""

    runtime = "OpenVINO"

    @staticmethod
    def weight_grid(scheme: Scheme) -> WeightGrid:
        return onnx.Builder.weight_grid(_int8_weights(scheme))

    def __init__(self, source, calibration, scheme: Scheme | None, scratch: Path):
        super().__init__(source, calibration, _int8_weights(scheme), scratch)

    def build(self, path: Path, float_nodes: list[str]) -> str | None:
        graph = path.with_name(f"{path.stem}.source.onnx")
        scheme = super().build(graph, float_nodes)
        convert(graph, path)
        return scheme
