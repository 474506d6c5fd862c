"""Layer tables of .tflite/.onnx files: op, kernel, stride, shapes, parameters and MACs, read from the file.

The same `LayerRow` serves PyTorch models (`edgecnn.summary`); this module imports no torch. MACs count the
multiply-accumulates of convolutions and fully-connected layers (what the usual "FLOPs" tables report):
a convolution producing N×C_out×H×W from C_in channels with a K_h×K_w kernel costs N·H·W·C_out·(C_in/groups)·K_h·K_w.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.runtime.modelfile import model_format
from edgecnn.runtime.report import shown


@dataclass
class LayerRow:
    name: str
    type: str
    input: list[int] = field(default_factory=list)  # N, C, H, W (N, H, W, C for TFLite tensors)
    output: list[int] = field(default_factory=list)
    kernel: list[int] | None = None
    stride: list[int] | None = None
    padding: list[int] | str | None = None
    groups: int | None = None
    params: int = 0
    macs: int = 0
    dtype: str = ""  # the dtype it computes in (files), '' for PyTorch
    note: str = ""


def per_image(dims: list) -> int:
    """The product of an output's dimensions after the batch one; 0 (unknown) when one of them is symbolic."""
    rest = list(dims[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return 0
    return int(np.prod(rest)) if rest else 1


def conv_macs(output: list[int], in_channels: int, groups: int, kernel: list[int]) -> int:
    """Multiply-accumulates of one image (whatever the file's batch dimension says)."""
    return per_image(output) * (in_channels // groups) * int(np.prod(kernel))


def file_layers(path: str | Path, verify: bool = True) -> list[LayerRow]:
    """The layer table of a .tflite/.onnx file; with `verify`, a file that fails its content hash is refused."""
    return (_tflite_layers if model_format(path) == "tflite" else _onnx_layers)(Path(path), verify)


def _tflite_layers(path: Path, verify: bool) -> list[LayerRow]:
    from ai_edge_litert import schema_py_generated as schema

    from edgecnn.runtime.modelfile import _builtin_names, _layer_path, _tflite_dtype, read_model_file

    read_model_file(path, verify=verify)  # validates before the flatbuffer is walked
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph, names = model.Subgraphs(0), _builtin_names()
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]

    def shape(i: int) -> list[int]:
        t = graph.Tensors(i)
        return t.ShapeAsNumpy().tolist() if t.ShapeLength() else []

    def is_constant(i: int) -> bool:
        buffer = model.Buffers(graph.Tensors(i).Buffer())
        return buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)

    rows = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = codes[op.OpcodeIndex()]
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [i for i in op.InputsAsNumpy().tolist() if i >= 0] if op.InputsLength() else []
        outs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
        activation = next((i for i in ins if not is_constant(i)), None)
        name = _layer_path(graph.Tensors(outs[0]).Name().decode(errors="replace")) if outs else kind
        row = LayerRow(name, kind,
                       shape(activation) if activation is not None else [], shape(outs[0]) if outs else [],
                       dtype=_tflite_dtype(graph.Tensors(activation).Type()) if activation is not None else "")
        row.params = sum(int(np.prod(shape(i))) for i in ins if is_constant(i))
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(ins) > 1:
            weight = shape(ins[1])  # CONV_2D: O, kh, kw, I; DEPTHWISE: 1, kh, kw, C·multiplier
            row.kernel = weight[1:3]
            in_channels = row.input[-1] if row.input else 0
            groups = in_channels if kind == "DEPTHWISE_CONV_2D" else max(1, in_channels // max(1, weight[3]))
            row.groups = groups
            row.macs = conv_macs(row.output, in_channels, groups, row.kernel)
            options = (schema.Conv2DOptions if kind == "CONV_2D" else schema.DepthwiseConv2DOptions)()
            table = op.BuiltinOptions()
            if table is not None:
                options.Init(table.Bytes, table.Pos)
                row.stride = [options.StrideH(), options.StrideW()]
                row.padding = "same" if options.Padding() == schema.Padding.SAME else "valid"
        elif kind == "FULLY_CONNECTED" and len(ins) > 1:
            out_features, in_features = shape(ins[1])
            row.macs = per_image(row.output[:-1]) * out_features * in_features
        rows.append(row)
    return rows


def _onnx_layers(path: Path, verify: bool) -> list[LayerRow]:
    import onnx
    from onnx import numpy_helper, shape_inference

    from edgecnn.runtime.modelfile import onnx_layer_path, read_model_file

    info = read_model_file(path, verify=verify)
    try:  # weights in external data files are read here: one may be missing or unreadable
        model = onnx.load(path)
    except Exception as e:
        raise EdgeCNNError(f"{path}: cannot read its weights: {first_line(e)}") from None
    with contextlib.suppress(Exception):
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input, *graph.output]}
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    shapes.update({name: list(a.shape) for name, a in initializers.items()})
    produced_by = {out: node for node in graph.node for out in node.output}

    def constant(name: str):
        """The initializer behind `name`, following DequantizeLinear (QDQ weights)."""
        if name in initializers:
            return initializers[name]
        node = produced_by.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            return initializers[node.input[0]]
        return None

    rows = []
    for node, op in zip(graph.node, info.ops, strict=True):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        activation = next((i for i in node.input if i and constant(i) is None), "")
        row = LayerRow(onnx_layer_path(node), node.op_type, shapes.get(activation, []),
                       shapes.get(node.output[0], []) if node.output else [], dtype=op.dtype)
        consts = [c for c in (constant(i) for i in node.input if i) if c is not None]
        row.params = sum(int(c.size) for c in consts if c.ndim > 0)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = constant(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is not None and row.output:
            row.kernel, row.groups = list(weight.shape[2:]), int(attrs.get("group", 1))
            row.stride, row.padding = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
            row.macs = conv_macs(row.output, weight.shape[1] * row.groups, row.groups, row.kernel)
        elif node.op_type in ("Gemm", "MatMul") and row.output and consts:
            w = consts[0]
            if w.ndim == 2:
                row.macs = per_image(row.output[:-1]) * w.shape[0] * w.shape[1]
        rows.append(row)
    return rows


def _fmt(v) -> str:
    if v is None or v == []:
        return ""
    if isinstance(v, list):
        return "×".join(str(x) for x in v)
    return str(v)


def print_summary(console: Console, rows: list[LayerRow], title: str) -> None:
    table = Table(title=shown(title))
    for column in ("layer", "type", "kernel", "stride", "pad", "groups", "input", "output", "params", "MACs",
                   "note"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for r in rows:
        padding = r.padding if isinstance(r.padding, str) else _fmt(r.padding)
        table.add_row(shown(r.name), shown(r.type + (f" ({r.dtype})" if r.dtype else "")), _fmt(r.kernel),
                      _fmt(r.stride), shown(padding), _fmt(r.groups), _fmt(r.input), _fmt(r.output),
                      f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else "", shown(r.note))
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", "", f"{params:,}", f"{macs:,}", "")
    console.print(table)
    console.print(f"{params / 1e6:.2f} M parameters, {macs / 1e6:.1f} M MACs per image")


def summary_report(rows: list[LayerRow], title: str) -> dict:
    return {"title": title, "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
            "layers": [asdict(r) for r in rows]}
