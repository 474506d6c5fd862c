"""The x86-avx2-u8u8 scheme's .onnx: the same int8 weights, stored as uint8 with zero point 128.

Without VNNI, onnxruntime's u8 × s8 kernels add pairs of products in 16 bits, which saturates with 8-bit weights.
Given uint8 weights it runs its u8 × u8 kernels instead, which widen both operands to 16 bits first: the full
8-bit grid, computed exactly (checked on an emulated AVX2-only CPU), at the cost of more instructions per product.
Shifting every stored value and its zero point by 128 leaves each dequantized weight as it was, so AdaRound's
rounding, the bias correction and the layer report carry over unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def store_weights_as_uint8(path: Path) -> int:
    """Rewrite the QDQ model at `path`: every int8 constant a DequantizeLinear reads becomes uint8 (+128), with
    its zero point; returns how many constants changed."""
    model = onnx.load(path)
    constants = {t.name: t for t in model.graph.initializer}
    shifted: set[str] = set()

    def shift(name: str) -> None:
        if name not in shifted:
            values = numpy_helper.to_array(constants[name]).astype(np.int16) + 128
            constants[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
            shifted.add(name)

    changed = 0
    for node in model.graph.node:
        weight = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        if len(node.input) < 3 or not node.input[2]:  # no zero point: 0, which becomes an explicit 128
            scale = numpy_helper.to_array(constants[node.input[1]])
            zero = model.graph.initializer.add()
            zero.CopyFrom(numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{node.input[0]}_zero_point"))
            constants[zero.name] = zero
            del node.input[2:]
            node.input.append(zero.name)
        shift(node.input[0])
        shift(node.input[2])
        changed += 1
    onnx.save(model, path)
    return changed
