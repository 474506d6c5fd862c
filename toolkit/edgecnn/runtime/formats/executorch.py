"""ExecuTorch programs (.pte): the model card from the program's `edgecnn_card` method, ops as they will run
(each XNNPACK node with the datatype it computes in; an op left to the portable kernels is named as not
delegated), the layer table, and the engine.

Reading and running a .pte here needs the `executorch` package, whose Python bindings take torch tensors: on a
device this is the one format whose Python runtime brings torch along (its C++ runtime does not).

The card is the bytes `edgecnn-card:{json}   …:edgecnn-card-end` of a constant tensor the program returns from
`edgecnn_card()`: written at build time as a blank placeholder, filled in place (same length, so the program's
flatbuffer is untouched), and read back from those bytes.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output
from edgecnn.runtime.backends import TensorSpec, check_input_size
from edgecnn.runtime.modelfile import ModelFile, OpInfo

CARD_METHOD = "edgecnn_card"
CARD_START, CARD_END = b"edgecnn-card:", b":edgecnn-card-end"
PTE_MAGIC = b"ET"  # the program flatbuffer's identifier: ET12 today
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                11: "bool", 15: "bfloat16"}
XNN_DATATYPES = {"xnn_datatype_fp32": "float32", "xnn_datatype_fp16": "float16", "xnn_datatype_qint8": "int8",
                 "xnn_datatype_quint8": "uint8", "xnn_datatype_qint32": "int32", "xnn_datatype_qcint8": "int8",
                 "xnn_datatype_qcint32": "int32", "xnn_datatype_qdint8": "int8", "xnn_datatype_qcint4": "int4"}
NOT_DELEGATED = "not delegated"
NO_VALUE = 2**32 - 1  # XNN_INVALID_VALUE_ID: a node without that input (a convolution without bias)

# XNNPACK nodes that only move data or convert it between float and int8.
NOT_COMPUTE = {"XNNStaticTranspose", "XNNStaticReshape", "XNNStaticSlice", "XNNStaticConstantPad", "XNNCopy",
               "XNNConcatenate2", "XNNConcatenate3", "XNNConcatenate4", "XNNConcatenate5", "XNNConvert"}


def model_files(path: Path) -> list[Path]:
    return [path]


def card_placeholder(capacity: int) -> bytes:
    return CARD_START + b" " * (capacity - len(CARD_START) - len(CARD_END)) + CARD_END


def _card_region(data: bytes) -> tuple[int, int] | None:
    start = data.find(CARD_START)
    end = data.find(CARD_END, start)
    return None if start < 0 or end < 0 else (start, end + len(CARD_END))


def _card(data: bytes) -> dict | None:
    region = _card_region(data)
    if region is None:
        return None
    text = data[region[0] + len(CARD_START) : region[1] - len(CARD_END)].strip(b" ")
    return json.loads(text) if text else None


def embed_card(path: Path, card: dict) -> None:
    data = path.read_bytes()
    region = _card_region(data)
    if region is None:
        raise EdgeCNNError(f"{path}: the program has no {CARD_METHOD} method to carry an edgecnn card")
    start, end = region
    text = CARD_START + json.dumps(card).encode()
    if len(text) + len(CARD_END) > end - start:
        raise EdgeCNNError(f"{path}: the model card ({len(text)} bytes) does not fit the {end - start} bytes the "
                           "program reserved for it")
    filled = text + b" " * (end - start - len(text) - len(CARD_END)) + CARD_END
    path.write_bytes(data[:start] + filled + data[end:])


def _program(data: bytes):
    with quiet_native_output():
        from executorch.exir._serialize._program import deserialize_pte_binary

        program = deserialize_pte_binary(data)
    return getattr(program, "program", program)


def _xnnpack_graph(blob: bytes) -> dict:
    """An XNNPACK delegate's graph as JSON, decoded with the flatc and schema that ship with executorch."""
    import importlib.resources

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _flatc_decompile

    header = XNNHeader.from_bytes(blob[: XNNHeader.EXPECTED_LENGTH])
    schema = importlib.resources.files("executorch.backends.xnnpack.serialization") / "schema.fbs"
    with tempfile.TemporaryDirectory() as folder, importlib.resources.as_file(schema) as schema_path:
        graph = Path(folder) / "graph.bin"
        graph.write_bytes(blob[header.flatbuffer_offset : header.flatbuffer_offset + header.flatbuffer_size])
        try:
            _flatc_decompile(folder, str(schema_path), str(graph), ["--raw-binary"])
        except subprocess.CalledProcessError:
            raise EdgeCNNError("its XNNPACK delegate does not decode (corrupt?)") from None
        text = (Path(folder) / "graph.json").read_text()
    # flatc writes non-finite floats (a ReLU's output_max) as bare inf/nan, which JSON has no word for
    text = re.sub(r"([:,\[]\s*)(-?)inf\b", r"\1\2Infinity", text)
    return json.loads(re.sub(r"([:,\[]\s*)-?nan\b", r"\1NaN", text))


def _tensor_value(value: dict) -> dict:
    union = value["xvalue_union"]
    return union.get("tensor_value", union)


def _dims(graph: dict, value_id: int) -> list[int]:
    return list(_tensor_value(graph["xvalues"][value_id]).get("dims", []))


def _xnn_dtype(graph: dict, node: dict) -> str:
    fields = node["xnode_union"]
    first = next((fields[k] for k in ("input_id", "input1_id") if k in fields), None)
    if first is None:
        return "unknown"
    return XNN_DATATYPES.get(_tensor_value(graph["xvalues"][first]).get("datatype"), "unknown")


def _forward(data: bytes) -> tuple:
    """(program, the forward plan, [(kind, details)] per instruction: ('kernel', name, first tensor dtype) or
    ('xnnpack', graph))."""
    program = _program(data)
    plan = next((p for p in program.execution_plan if p.name == "forward"), None)
    if plan is None:
        raise EdgeCNNError("the program has no forward method")
    steps = []
    for instruction in (i for chain in plan.chains for i in chain.instructions):
        args = instruction.instr_args
        if type(args).__name__ == "KernelCall":
            op = plan.operators[args.op_index]
            tensors = [plan.values[i].val for i in args.args if type(plan.values[i].val).__name__ == "Tensor"]
            dtype = SCALAR_TYPES.get(int(tensors[0].scalar_type), "unknown") if tensors else "unknown"
            steps.append(("kernel", f"{op.name}.{op.overload}" if op.overload else op.name, dtype))
        elif type(args).__name__ == "DelegateCall":
            delegate = plan.delegates[args.delegate_index]
            reference = delegate.processed
            # deserialize_pte_binary has moved every delegate's data inline
            if delegate.id != "XnnpackBackend" or getattr(reference.location, "name", "") != "INLINE":
                steps.append(("delegate", delegate.id))
                continue
            steps.append(("xnnpack", _xnnpack_graph(program.backend_delegate_data[reference.index].data)))
    return program, plan, steps


def _io(plan, indices, prefix: str) -> list[dict]:
    tensors = [plan.values[i].val for i in indices]
    return [{"name": f"{prefix}{n}", "shape": list(t.sizes), "dtype": SCALAR_TYPES.get(int(t.scalar_type), "unknown")}
            for n, t in enumerate(tensors)]


def read(path: Path) -> ModelFile:
    data = path.read_bytes()
    if len(data) < 8 or data[4:6] != PTE_MAGIC:
        raise EdgeCNNError(f"{path}: not an ExecuTorch program (no ET identifier)")
    try:
        _, plan, steps = _forward(data)
    except EdgeCNNError as e:
        raise EdgeCNNError(f"{path}: {e}") from None
    ops = []
    for step in steps:
        if step[0] == "kernel":
            ops.append(OpInfo(step[1], step[2], step[1], delegated=False))
        elif step[0] == "delegate":
            ops.append(OpInfo(f"delegate:{step[1]}", "unknown", step[1], delegated=False))
        else:
            graph = step[1]
            ops += [OpInfo(node["xnode_union_type"], _xnn_dtype(graph, node), f"xnnpack#{node.get('debug_handle', k)}",
                           compute=node["xnode_union_type"] not in NOT_COMPUTE)
                    for k, node in enumerate(graph["xnodes"])]
    try:
        card = _card(data)
    except ValueError:
        raise EdgeCNNError(f"{path}: its edgecnn model card is not valid JSON (corrupt?)") from None
    return ModelFile(path, "executorch", ops, _io(plan, plan.inputs, "input"), _io(plan, plan.outputs, "output"),
                     card)


def layers(path: Path) -> list:
    """The layer table (`edgecnn.runtime.layers.LayerRow`s) of a file `read_model_file` accepted: the kernels
    left outside the delegate, and every XNNPACK node (NHWC shapes, as XNNPACK computes)."""
    from edgecnn.runtime.layers import LayerRow, conv_macs, per_image  # not needed on a device: no rich there

    rows = []
    for step in _forward(path.read_bytes())[2]:
        if step[0] != "xnnpack":
            rows.append(LayerRow(step[1], "kernel" if step[0] == "kernel" else "delegate",
                                 dtype=step[2] if step[0] == "kernel" else "", note=NOT_DELEGATED))
            continue
        graph = step[1]
        for k, node in enumerate(graph["xnodes"]):
            kind, fields = node["xnode_union_type"], node["xnode_union"]
            first = next((fields[f] for f in ("input_id", "input1_id") if f in fields), None)
            row = LayerRow(f"xnnpack#{node.get('debug_handle', k)}", kind.removeprefix("XNN"),
                           _dims(graph, first) if first is not None else [],
                           _dims(graph, fields["output_id"]) if "output_id" in fields else [],
                           dtype=_xnn_dtype(graph, node))
            weights = [_dims(graph, fields[f]) for f in ("filter_id", "bias_id") if fields.get(f, NO_VALUE) != NO_VALUE]
            row.params = sum(int(np.prod(w)) for w in weights if w)
            if kind in ("XNNConv2d", "XNNDepthwiseConv2d"):
                row.kernel = [fields["kernel_height"], fields["kernel_width"]]
                row.stride = [fields["subsampling_height"], fields["subsampling_width"]]
                row.padding = [fields[f"padding_{side}"] for side in ("top", "left", "bottom", "right")]
                row.groups = fields["groups"]
                row.macs = conv_macs(row.output, fields["group_input_channels"] * row.groups, row.groups, row.kernel)
            elif kind == "XNNFullyConnected" and weights and len(weights[0]) == 2:
                row.macs = per_image(row.output[:-1]) * int(np.prod(weights[0]))
            rows.append(row)
    return rows


def _spec(name: str, meta) -> TensorSpec:
    return TensorSpec(name, tuple(meta.sizes()), np.dtype(SCALAR_TYPES.get(int(meta.dtype()), "float32")))


class Engine:
    name = "executorch"

    def __init__(self, path: Path, threads: int | None, input_shape: tuple[int, ...] | None = None):
        self.path = path
        with quiet_native_output():
            import torch
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            if threads:  # one pool per process, shared by every program it loads
                portable_lib._unsafe_reset_threadpool(threads)
            try:
                self._method = Runtime.get().load_program(str(path)).load_method("forward")
            except (RuntimeError, ValueError) as e:
                raise EdgeCNNError(f"{path}: ExecuTorch cannot load it: {first_line(e)}") from None
        self._torch = torch
        meta = self._method.metadata
        self.input = _spec("input0", meta.input_tensor_meta(0))
        check_input_size(path, self.input, input_shape)
        if input_shape is not None and tuple(input_shape) != self.input.shape:
            raise EdgeCNNError(f"{path}: an ExecuTorch program's input shape is fixed at {self.input.shape}; "
                               f"{tuple(input_shape)} needs another export")
        self.outputs = [_spec(f"output{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            outputs = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(x))])
            return [out.numpy().copy() for out in outputs]
        except (RuntimeError, ValueError) as e:
            raise EdgeCNNError(f"{self.path}: ExecuTorch cannot run it: {first_line(e)}") from None
