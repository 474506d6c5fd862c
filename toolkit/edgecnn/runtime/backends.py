"""Inference engines behind one small interface: ai-edge-litert (XNNPACK), tflite-runtime, onnxruntime.

A backend runs one raw input tensor and returns the raw output: it knows nothing of images or labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgecnn.errors import EdgeCNNError, first_line, printable, shorten
from edgecnn.native import quiet_native_output
from edgecnn.runtime.modelfile import model_format, read_model_file


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 where the model leaves a dimension open
    dtype: np.dtype
    scale: float = 0.0  # 0 for float tensors
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0


# One input sample larger than this is a damaged or hostile file, not a model for a small device: refused before
# anything allocates it (a declared 1×3×100000×100000 input asked for 224 GiB).
MAX_INPUT_BYTES = 1 << 30


def check_input_size(path: Path, spec: TensorSpec, shape: tuple[int, ...] | None = None) -> None:
    shape = tuple(shape or spec.shape)
    size = int(np.prod([max(d, 1) for d in shape], dtype=np.float64)) * spec.dtype.itemsize
    if size > MAX_INPUT_BYTES:
        raise EdgeCNNError(f"{path}: input {printable(spec.name)} of shape {shape} would take {size / 2**30:.1f} GiB "
                           f"per inference (more than {MAX_INPUT_BYTES / 2**30:.0f} GiB): refused")


class Backend(Protocol):
    name: str
    input: TensorSpec
    output: TensorSpec

    def run(self, x: np.ndarray) -> np.ndarray: ...


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


class LiteRTBackend:
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
        self._out = self._interpreter.get_output_details()[0]
        self.input, self.output = self._spec(self._in), self._spec(self._out)

    @staticmethod
    def _spec(detail: dict) -> TensorSpec:
        scale, zero_point = detail["quantization"]
        shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
        return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]), float(scale), int(zero_point))

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            self._interpreter.set_tensor(self._in["index"], x)
            self._interpreter.invoke()
        except (ValueError, RuntimeError) as e:  # a damaged file (--no-verify) can load and still not run
            raise EdgeCNNError(f"{self.path}: the TFLite runtime cannot run it: {first_line(e)}") from None
        return self._interpreter.get_tensor(self._out["index"])


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None, input_shape: tuple[int, ...] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = path
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgeCNNError(f"{path}: onnxruntime cannot load it: {shorten(str(e), 200)}") from None
        self.input = self._spec(self._session.get_inputs()[0], input_shape)
        self.output = self._spec(self._session.get_outputs()[0])
        check_input_size(path, self.input)

    @staticmethod
    def _spec(arg, shape: tuple[int, ...] | None = None) -> TensorSpec:
        dtypes = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                  "tensor(float16)": np.float16}
        if arg.type not in dtypes:
            raise EdgeCNNError(f"unsupported tensor type {arg.type} for '{arg.name}'")
        shape = shape or tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(arg.name, tuple(shape), np.dtype(dtypes[arg.type]))

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._session.run(None, {self.input.name: x})[0]
        except Exception as e:  # onnxruntime's own error types (Fail, InvalidArgument, ...): a damaged graph
            raise EdgeCNNError(f"{self.path}: onnxruntime cannot run it: {first_line(e)}") from None


def load_backend(path: str | Path, threads: int | None = None, input_shape: tuple[int, ...] | None = None) -> Backend:
    """Load a model in its runtime, trusting the file (the bench runner's child process checks nothing twice)."""
    path = Path(path)
    cls = LiteRTBackend if model_format(path) == "tflite" else OnnxBackend
    return cls(path, threads, input_shape)


def open_backend(path: str | Path, threads: int | None = None, verify: bool = True) -> Backend:
    """Load a model in its runtime after checking that the file parses (no segfault on a corrupt file) and,
    with `verify`, that an edgecnn artefact matches its content hash."""
    read_model_file(path, verify=verify)
    return load_backend(path, threads)
