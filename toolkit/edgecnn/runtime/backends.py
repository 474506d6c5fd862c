"""Inference engines behind one small interface; each format's module (edgecnn.runtime.formats) has its `Engine`.

A backend runs one raw input tensor and returns every raw output, in the model's order: it knows nothing of
images, labels or boxes (the task does: `edgecnn.runtime.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgecnn.errors import EdgeCNNError, printable
from edgecnn.runtime.formats import engine_for
from edgecnn.runtime.modelfile import read_model_file


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

    def to_card(self) -> dict:
        """This tensor as a model card records it."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.name, "scale": self.scale,
                "zero_point": self.zero_point}

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """This tensor's raw values as float32 (int8 outputs through their scale and zero point)."""
        raw = raw.astype(np.float32)
        return (raw - self.zero_point) * self.scale if self.quantized else raw


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
    outputs: list[TensorSpec]

    def run(self, x: np.ndarray) -> list[np.ndarray]: ...


def load_backend(path: str | Path, threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                 backend: str | None = None) -> Backend:
    """Load a model in its runtime (or in `backend`, another engine that runs its format), trusting the file
    (the bench runner's child process checks nothing twice)."""
    path = Path(path)
    return engine_for(path, backend).runtime.Engine(path, threads, input_shape)


def open_backend(path: str | Path, threads: int | None = None, verify: bool = True) -> Backend:
    """Load a model in its runtime after checking that the file parses (no segfault on a corrupt file) and,
    with `verify`, that an edgecnn artefact matches its content hash."""
    read_model_file(path, verify=verify)
    return load_backend(path, threads)
