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

from edgecnn.errors import EdgeCNNError


def store_weights_as_uint8(path: Path) -> int:
    """Rewrite the QDQ model at `path`: every int8 constant a DequantizeLinear reads becomes uint8 (+128), with
    its zero point; returns how many constants changed."""
    model = onnx.load(path)
    constants = {t.name: t for t in model.graph.initializer}
    # Readers are found before anything changes: a constant read twice is shifted once, with both zero points.
    readers = [node for node in model.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in constants
               and constants[node.input[0]].data_type == onnx.TensorProto.INT8]
    names = set()
    for node in readers:
        if node.input[1] not in constants or (len(node.input) > 2 and node.input[2] and node.input[2] not in constants):
            raise EdgeCNNError(f"cannot store the .onnx weights as uint8: the scale or zero point of {node.input[0]} "
                               "is computed, not a constant")
        if len(node.input) < 3 or not node.input[2]:  # no zero point: 0, which becomes an explicit 128
            zero_name = f"{node.input[0]}_zero_point"
            if zero_name not in constants:
                scale = numpy_helper.to_array(constants[node.input[1]])
                constants[zero_name] = model.graph.initializer.add()
                constants[zero_name].CopyFrom(numpy_helper.from_array(np.zeros(scale.shape, np.int8), zero_name))
            del node.input[2:]
            node.input.append(zero_name)
        names.update(node.input[0::2])  # the values and their zero point
    for name in names:
        values = numpy_helper.to_array(constants[name]).astype(np.int16) + 128
        constants[name].CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
    onnx.save(model, path)
    return len(readers)
