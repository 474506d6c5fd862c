"""Reading and writing what a model file says about itself, without running it and without torch.

Two things live here, for `.tflite` and `.onnx` alike:
- the model card: edgecnn's metadata (labels, input size, layout, colour order, mean/std, input/output
  quantization, source recipe, version), stored as JSON in the TFLite metadata buffer "edgecnn" or the ONNX
  `metadata_props` key "edgecnn";
- the op summary: every op with the dtype it computes in, so a float op left in an int8 model can be named.
"""

from __future__ import annotations

import ast
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.integrity import HASH_KEY, PLACEHOLDER, Integrity, check_integrity, require_sealed_card, seal

CARD_KEY = "edgecnn"
TFLITE_MAGIC = b"TFL3"
FORMATS = {".tflite": "tflite", ".onnx": "onnx"}

# Ops that only move or re-label data: their dtype says nothing about where arithmetic happens.
DATA_MOVEMENT = {
    "RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD", "PADV2", "CONCATENATION", "GATHER", "SLICE", "STRIDED_SLICE",
    "SPLIT", "SPLIT_V", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Shape", "Gather", "Concat", "Slice",
    "Pad", "Cast", "Constant", "Split", "Expand", "DepthToSpace", "SpaceToDepth",
}
QUANT_BOUNDARY = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear"}
# ONNX ops onnxruntime computes in int8 when they sit between DequantizeLinear and QuantizeLinear (its
# QLinearOpsRegistry). Any other op there — LayerNormalization, HardSigmoid, Erf (GELU), Div — runs in float.
ONNX_INT8_KERNELS = {
    "Add", "ArgMax", "AveragePool", "Clip", "Concat", "Conv", "Gemm", "GlobalAveragePool", "LeakyRelu", "MatMul",
    "MaxPool", "Mul", "Relu", "Resize", "Sigmoid", "Softmax", "Where",
}


@dataclass
class OpInfo:
    name: str  # TFLite builtin name or ONNX op_type
    dtype: str  # the dtype the op computes in: 'int8', 'uint8', 'float32', ...
    where: str  # the op's output tensor (TFLite) or node name (ONNX): points at the layer


@dataclass
class ModelFile:
    path: Path
    format: str
    ops: list[OpInfo]
    inputs: list[dict]  # name, shape, dtype
    outputs: list[dict]
    card: dict | None = None
    notes: list[str] = field(default_factory=list)
    integrity: Integrity | None = None  # None: not checked (verify=False)

    @property
    def compute_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if op.name not in DATA_MOVEMENT | QUANT_BOUNDARY]

    @property
    def float_ops(self) -> list[OpInfo]:
        return [op for op in self.compute_ops if op.dtype.startswith("float")]

    @property
    def int8_ops(self) -> list[OpInfo]:
        return [op for op in self.compute_ops if op.dtype in ("int8", "uint8")]


def model_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise EdgeCNNError(f"{path}: unknown model format '{suffix}'; edgecnn reads .tflite and .onnx files")
    return FORMATS[suffix]


def read_model_file(path: str | Path, verify: bool = True) -> ModelFile:
    """Parse a .tflite or .onnx file's structure; a truncated or foreign file is a clear error. With `verify`,
    an edgecnn artefact whose bytes do not match its content hash (or its .sha256 sidecar) is refused."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCNNError(f"model file not found: {path}")
    fmt = model_format(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeCNNError(f"cannot read {path}: {e.strerror or e}") from None
    integrity = check_integrity(path, data) if verify else None
    try:
        model_file = _read_tflite(path, data) if fmt == "tflite" else _read_onnx(path, data)
    except EdgeCNNError:
        raise
    except Exception as e:  # flatbuffers/protobuf raise many types on garbage input
        raise EdgeCNNError(f"{path}: not a valid {fmt} model (corrupt or truncated: {type(e).__name__})") from None
    require_sealed_card(path, model_file.card, integrity)
    if model_file.card is not None and (problem := card_problem(model_file.card)):
        raise EdgeCNNError(f"{path}: its edgecnn model card is damaged ({problem}); re-export it")
    model_file.integrity = integrity
    if integrity is not None and not integrity.verified:
        model_file.notes.append(f"{path.name}: {integrity.detail}")
    return model_file


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _tensor(v) -> bool:
    return isinstance(v, dict) and isinstance(v.get("dtype"), str) and _number(v.get("scale")) \
        and isinstance(v.get("zero_point"), int)


# What the runtime and `edgecnn info` read from a card, and the shape each must have. A sealed card always has
# it; a card read with --no-verify may not, and must then be an error, not a KeyError deep in the runtime.
CARD_FIELDS = {
    "edgecnn_version": lambda v: isinstance(v, str),
    "labels": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "preprocess": lambda v: isinstance(v, dict) and isinstance(v.get("img_size"), int) and v["img_size"] > 0
    and all(isinstance(v.get(k), list) and len(v[k]) == 3 and all(map(_number, v[k])) for k in ("mean", "std"))
    and v.get("color") in ("RGB", "BGR") and v.get("layout") in ("NHWC", "NCHW")
    and (v.get("crop") is None or _number(v["crop"]) and 0 < v["crop"] <= 1),
    "input": _tensor,
    "output": _tensor,
    "source": lambda v: isinstance(v, dict) and all(k in v for k in ("model", "width", "dataset", "from",
                                                                     "recipe_hash")),
    "quantization": lambda v: isinstance(v, dict) and isinstance(v.get("float_layers"), list)
    and all(isinstance(x, str) for x in v["float_layers"]) and "scheme" in v
    and (v.get("calibration") is None or isinstance(v["calibration"], dict) and "samples" in v["calibration"]
         and "images" in v["calibration"]),
}


def card_problem(card) -> str | None:
    """The first card field that is missing or malformed, or None."""
    if not isinstance(card, dict):
        return "not a JSON object"
    return next((f"field '{k}'" for k, ok in CARD_FIELDS.items() if not ok(card.get(k))), None)


# --- TFLite -------------------------------------------------------------------------------------------------

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


def _read_tflite(path: Path, data: bytes) -> ModelFile:
    schema = _tflite_schema()
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
        ops.append(OpInfo(name, activation, _layer_path(outs[0]["name"]) if outs else ""))

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


def embed_tflite_card(path: Path, card: dict) -> None:
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


# --- ONNX ---------------------------------------------------------------------------------------------------

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64"}


def _read_onnx(path: Path, data: bytes) -> ModelFile:
    import onnx
    from onnx import shape_inference

    model = onnx.load_model_from_string(data)
    if not model.graph.node:
        raise EdgeCNNError(f"{path}: ONNX file has no graph nodes (not an ONNX model?)")
    with contextlib.suppress(Exception):  # an op without a shape function: some edge dtypes stay unknown
        model = shape_inference.infer_shapes(model)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = {t.name for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}

    def activation_dtype(node) -> str:
        # In a QDQ graph every quantized op reads DequantizeLinear outputs: that is int8 arithmetic once
        # onnxruntime fuses the pattern. A float activation not fed by DequantizeLinear is float arithmetic.
        for name in node.input:
            if not name or name in constants:
                continue
            source = produced_by.get(name)
            if source is not None and source.op_type == "Constant":
                continue
            if source is not None and source.op_type == "DequantizeLinear":
                if node.op_type not in ONNX_INT8_KERNELS:
                    return "float32"  # dequantized, computed in float, quantized again
                zp = source.input[2] if len(source.input) > 2 else ""
                return _ONNX_DTYPES.get(types.get(zp, 3), "int8")
            return _ONNX_DTYPES.get(types.get(name, 0), "unknown")
        return "unknown"

    ops = [OpInfo(n.op_type, activation_dtype(n), onnx_layer_path(n)) for n in graph.node]

    def io(values) -> list[dict]:
        inits = {t.name for t in graph.initializer}
        return [
            {"name": v.name, "dtype": _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "unknown"),
             "shape": [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1)
                       for d in v.type.tensor_type.shape.dim]}
            for v in values if v.name not in inits
        ]

    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY]) if CARD_KEY in props else None
    return ModelFile(path, "onnx", ops, io(graph.input), io(graph.output), card)


def onnx_layer_path(node) -> str:
    """The PyTorch module a node came from (torch's exporter records name scopes), else the node's name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2 and scopes[-2]:
                return scopes[-2]
    return node.name or (node.output[0] if node.output else "")


def embed_onnx_card(path: Path, card: dict) -> None:
    import onnx

    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != CARD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CARD_KEY, value=json.dumps(card))
    onnx.save(model, path)


def embed_card(path: Path, card: dict) -> None:
    """Embed `card` and seal the file with its content hash (see edgecnn.runtime.integrity)."""
    path = Path(path)
    (embed_tflite_card if model_format(path) == "tflite" else embed_onnx_card)(path, {**card, HASH_KEY: PLACEHOLDER})
    path.write_bytes(seal(path.read_bytes()))
