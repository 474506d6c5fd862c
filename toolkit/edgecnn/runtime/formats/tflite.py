"""TensorFlow Lite files (.tflite): the model card in the metadata buffer "edgecnn", ops from the flatbuffer,
the layer table, and the engine (ai-edge-litert with XNNPACK, or tflite-runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.native import quiet_native_output
from edgecnn.runtime.backends import TensorSpec, check_input_size
from edgecnn.runtime.modelfile import CARD_KEY, ModelFile, OpInfo

TFLITE_MAGIC = b"TFL3"

# Ops that only move, re-label or (de)quantize data: their dtype says nothing about where arithmetic happens.
NOT_COMPUTE = {"RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD", "PADV2", "CONCATENATION", "GATHER", "SLICE", "STRIDED_SLICE",
               "SPLIT", "SPLIT_V", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "QUANTIZE", "DEQUANTIZE"}


def model_files(path: Path) -> list[Path]:
    return [path]


def _tflite_schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _builtin_names() -> dict[int, str]:
    ops = _tflite_schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_")}


def _tflite_dtype(code: int) -> str:
    types = _tflite_schema().TensorType
    names = {v: k.lower() for k, v in vars(types).items() if not k.startswith("_")}
    return names.get(code, f"type{code}")


def read(path: Path) -> ModelFile:
    schema = _tflite_schema()
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise EdgeCNNError(f"{path}: not a TFLite file (no TFL3 identifier)")
    model = schema.Model.GetRootAs(data, 0)
    if model.SubgraphsLength() < 1:
        raise EdgeCNNError(f"{path}: TFLite file has no subgraph")
    names = _builtin_names()
    graph = model.Subgraphs(0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]

    def tensor(i: int) -> dict:
        t = graph.Tensors(i)
        shape = t.ShapeAsNumpy().tolist() if t.ShapeLength() else []
        return {"name": t.Name().decode(errors="replace"), "shape": shape, "dtype": _tflite_dtype(t.Type()),
                "buffer": t.Buffer()}

    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = codes[op.OpcodeIndex()]
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, f"OP{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{code.CustomCode().decode(errors='replace')}"
        ins = [tensor(i) for i in op.InputsAsNumpy().tolist() if i >= 0] if op.InputsLength() else []
        outs = [tensor(i) for i in op.OutputsAsNumpy().tolist()] if op.OutputsLength() else []
        # The activation input decides the compute type (weights may be int8 while math is float: hybrid ops).
        activation = ins[0]["dtype"] if ins else (outs[0]["dtype"] if outs else "unknown")
        where = _layer_path(outs[0]["name"]) if outs else ""
        ops.append(OpInfo(name, activation, where, compute=name not in NOT_COMPUTE))

    def io(indices: list[int]) -> list[dict]:
        return [{**{k: v for k, v in tensor(i).items() if k != "buffer"}, **_quantization(graph.Tensors(i))}
                for i in indices]

    card = None
    for m in range(model.MetadataLength()):
        meta = model.Metadata(m)
        if meta.Name() and meta.Name().decode() == CARD_KEY:
            card = json.loads(model.Buffers(meta.Buffer()).DataAsNumpy().tobytes().decode())
    return ModelFile(path, "tflite", ops, io(graph.InputsAsNumpy().tolist()), io(graph.OutputsAsNumpy().tolist()),
                     card)


def _quantization(t) -> dict:
    """Per-tensor scale and zero point of a quantized model input/output, {} for float tensors."""
    q = t.Quantization()
    if q is None or q.ScaleLength() != 1:
        return {}
    return {"scale": float(q.ScaleAsNumpy()[0]), "zero_point": int(q.ZeroPointAsNumpy()[0])}


def _layer_path(tensor_name: str) -> str:
    """litert-torch names tensors by module stack ('pkg.Net_wrapped/pkg.Sequential_features/..._0;...'):
    turn that into the PyTorch module path ('features.0'); other names pass through."""
    first = tensor_name.split(";")[0]
    parts = [p.rsplit(".", 1)[-1] for p in first.split("/")]
    if not all("_" in p for p in parts[1:]) or len(parts) < 2:
        return first
    attrs = [p.split("_", 1)[1] for p in parts[1:]]
    return ".".join(attrs[1:] if attrs and attrs[0] == "wrapped" else attrs)


def embed_card(path: Path, card: dict) -> None:
    """Rewrite `path` in place with `card` as its "edgecnn" metadata buffer (replacing an older one)."""
    import flatbuffers

    schema = _tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(card).encode(), dtype=np.uint8)
    old = [m for m in (model.metadata or []) if m.name.decode() == CARD_KEY]
    if old:  # the old card's buffer is reused: left behind, its hash entry would make the file look corrupt
        model.buffers[old[0].buffer] = buffer
    else:
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = CARD_KEY
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_MAGIC)
    path.write_bytes(builder.Output())



def layers(path: Path) -> list:
    """The layer table (`edgecnn.runtime.layers.LayerRow`s) of a file `read_model_file` accepted."""
    from edgecnn.runtime.layers import LayerRow, conv_macs, per_image  # not needed on a device: no rich there

    schema = _tflite_schema()
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



def _litert_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise EdgeCNNError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None


class Engine:
    def __init__(self, path: Path, threads: int | None, input_shape: tuple[int, ...] | None = None):
        interpreter_cls, self.name = _litert_interpreter()
        self.path = path
        try:
            with quiet_native_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
                self._interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
                detail = self._interpreter.get_input_details()[0]
                check_input_size(path, self._spec(detail), input_shape)  # before the runtime allocates it
                if input_shape is not None:
                    self._interpreter.resize_tensor_input(detail["index"], list(input_shape), strict=False)
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise EdgeCNNError(f"{path}: the TFLite runtime cannot load it: {str(e).strip().splitlines()[0]}") from None
        self._in = self._interpreter.get_input_details()[0]
        self._out = [d["index"] for d in self._interpreter.get_output_details()]
        self.input = self._spec(self._in)
        self.outputs = [self._spec(d) for d in self._interpreter.get_output_details()]

    @staticmethod
    def _spec(detail: dict) -> TensorSpec:
        scale, zero_point = detail["quantization"]
        shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
        return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]), float(scale), int(zero_point))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            self._interpreter.set_tensor(self._in["index"], x)
            self._interpreter.invoke()
        except (ValueError, RuntimeError) as e:  # a damaged file (--no-verify) can load and still not run
            raise EdgeCNNError(f"{self.path}: the TFLite runtime cannot run it: {first_line(e)}") from None
        return [self._interpreter.get_tensor(i) for i in self._out]


