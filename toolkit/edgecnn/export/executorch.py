"""PyTorch → ExecuTorch program (.pte), delegated to XNNPACK, float or int8.

int8 is the .tflite's PT2E graph (the same quantizer config as XNNPACKQuantizer: per-channel symmetric int8
weights, int8 activations, edgecnn's activation ranges, range search and layer fallback), lowered with
`to_edge_transform_and_lower` and the XNNPACK partitioner instead of converted by litert-torch. The input is
NCHW (see `Builder.layout`); after QAT the tuned weights are quantized post-training, as for the .onnx.

The model card travels in the program as a second method, `edgecnn_card`, that returns it as bytes: a constant
tensor reserved at build time (`card_capacity`) and filled in place afterwards, so the file stays
self-describing without rebuilding it (see edgecnn.runtime.formats.executorch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.export import tflite
from edgecnn.native import quiet_native_output
from edgecnn.runtime.formats.executorch import CARD_METHOD, card_placeholder


class CardMethod(nn.Module):
    """`edgecnn_card()`: the reserved bytes, returned as a uint8 tensor."""

    def __init__(self, capacity: int):
        super().__init__()
        self.register_buffer("card", torch.frombuffer(bytearray(card_placeholder(capacity)), dtype=torch.uint8))

    def forward(self) -> torch.Tensor:
        return self.card.clone()


def card_capacity(labels: Sequence[str]) -> int:
    """Bytes reserved for the card: its labels (JSON-escaped, with room for \\u escapes) and 32 KiB for the rest
    (preprocessing, source, quantization and up to hundreds of float-layer names)."""
    return 2 * len(json.dumps(list(labels))) + 32768


def lower(module: nn.Module, img_size: int, path: Path, capacity: int) -> None:
    """Write `module` (NCHW input; a PT2E-quantized graph or a float model) as an XNNPACK-delegated program."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise EdgeCNNError("--format executorch needs ExecuTorch: pip install 'edgecnn[executorch]'") from None
    example = (torch.zeros(1, 3, img_size, img_size),)
    try:
        with quiet_native_output():
            methods = {"forward": torch.export.export(module, example),
                       CARD_METHOD: torch.export.export(CardMethod(capacity), ())}
            program = to_edge_transform_and_lower(methods, partitioner=[XnnpackPartitioner()]).to_executorch()
    except Exception as e:  # torch.export and the lowering passes raise many types
        raise EdgeCNNError(f"ExecuTorch could not lower the model: {first_line(e)}") from None
    path.write_bytes(program.buffer)


class Builder(tflite.Builder):
    """The .pte side of `edgecnn.export.export`: the .tflite builder's graphs, lowered by ExecuTorch."""

    # NCHW: graphs traced from an NHWC input carry channels-last strides, and a flatten on those becomes an
    # as_strided copy XNNPACK does not take (measured: tinycnn split in two delegates around it).
    layout = "NCHW"
    fold_weights = True  # the XNNPACK partitioner takes int8 weight constants, not a quantize op on float ones
    converts_qat_graph = False  # that graph takes NHWC input: its tuned weights are quantized like any model's

    def write(self, module: nn.Module, path: Path, float_layers: Sequence[str] | None, qat: bool = False) -> None:
        lower(module, self.source.pre.img_size, path, card_capacity(self.source.labels))
