"""The model file formats edgecnn writes and reads, one registry keyed by file suffix.

Each format is two modules with the same functions, found through its `ModelFormat` entry:
- runtime side, `edgecnn.runtime.formats.<name>` (torch-free unless the format's own runtime needs torch, as
  ExecuTorch's Python bindings do): `model_files(path)`, `read(path) -> ModelFile` (each op marked compute or
  not, by the format's own op names), `embed_card(path, card)`, `layers(path) -> list[LayerRow]` and
  `Engine(path, threads, input_shape)` (which may also run other formats' files: `also_runs`);
- export side, `edgecnn.export.<name>`: `Builder(source, calibration, scheme, scratch)`.

Adding a format is those two modules, one entry below, and its tests. The modules are imported when a file of
the format is first used, so a runtime without one format's package still reads the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from edgecnn.errors import EdgeCNNError, closest


@dataclass(frozen=True)
class ModelFormat:
    name: str  # what --format takes
    suffix: str  # of the file users name (for a multi-file model, its entry point)
    layout: str  # the input layout edgecnn exports for it
    package: str  # the import that says its runtime is installed
    install: str  # what to pip install when it is not
    engine: str  # the name of its runtime (`--backend`, the bench's backend column)
    default: bool = True  # exported unless --format says otherwise
    also_runs: tuple[str, ...] = ()  # suffixes of other formats its engine runs as well

    @property
    def runtime(self) -> ModuleType:
        return importlib.import_module(f"edgecnn.runtime.formats.{self.name}")

    @property
    def exporter(self) -> ModuleType:
        return importlib.import_module(f"edgecnn.export.{self.name}")

    def require(self) -> None:
        """One line naming the install when this format's runtime package is missing."""
        if importlib.util.find_spec(self.package) is None:
            raise EdgeCNNError(f"{self.name} files need the {self.package} package: pip install {self.install}")


FORMATS: dict[str, ModelFormat] = {
    f.name: f
    for f in (
        ModelFormat("tflite", ".tflite", "NHWC", "ai_edge_litert", "ai-edge-litert", "litert"),
        ModelFormat("onnx", ".onnx", "NCHW", "onnxruntime", "onnxruntime", "onnxruntime"),
        ModelFormat("openvino", ".xml", "NCHW", "openvino", "'edgecnn[openvino]'", "openvino", default=False,
                    also_runs=(".onnx",)),
        ModelFormat("executorch", ".pte", "NCHW", "executorch", "'edgecnn[executorch]'", "executorch", default=False),
    )
}
BY_SUFFIX = {f.suffix: f for f in FORMATS.values()}
DEFAULT_FORMATS = tuple(name for name, f in FORMATS.items() if f.default)


def format_of(path: str | Path) -> ModelFormat:
    suffix = Path(path).suffix.lower()
    if suffix not in BY_SUFFIX:
        known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
        raise EdgeCNNError(f"{path}: unknown model format '{suffix}'; edgecnn reads {known} files")
    return BY_SUFFIX[suffix]


ENGINES = tuple(f.engine for f in FORMATS.values())


def runs(backend: str, path: str | Path) -> bool:
    """Whether the engine named `backend` runs the model at `path`."""
    own = format_of(path)
    return any(f.engine == backend and (f is own or own.suffix in f.also_runs) for f in FORMATS.values())


def engine_for(path: str | Path, backend: str | None = None) -> ModelFormat:
    """The format whose engine runs `path`: its own, or the one named by `backend` (e.g. openvino for a .onnx)."""
    own = format_of(path)
    if backend is None or backend == own.engine:
        return own
    chosen = next((f for f in FORMATS.values() if f.engine == backend), None)
    if chosen is None:
        raise EdgeCNNError(f"unknown backend '{backend}'; choose from {', '.join(ENGINES)}")
    if own.suffix not in chosen.also_runs:
        runs = ", ".join((chosen.suffix, *chosen.also_runs))
        raise EdgeCNNError(f"{path}: the {backend} backend runs {runs} files, not {own.suffix}")
    chosen.require()
    return chosen


def model_files(path: str | Path) -> list[Path]:
    """Every file the model at `path` consists of, its entry point first (OpenVINO IR: .xml, then .bin)."""
    return format_of(path).runtime.model_files(Path(path))


def model_bytes(path: str | Path) -> bytes:
    """The bytes of all the model's files, in `model_files` order: what its content hash covers."""
    try:
        return b"".join(f.read_bytes() for f in model_files(path))
    except OSError as e:
        raise EdgeCNNError(f"cannot read {e.filename or path}: {e.strerror or e}") from None


def model_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in model_files(path))


def installed_formats() -> tuple[str, ...]:
    """The formats whose runtime this machine has."""
    return tuple(name for name, f in FORMATS.items() if importlib.util.find_spec(f.package) is not None)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    for f in formats:
        if f not in FORMATS:
            raise EdgeCNNError(f"unknown format '{f}'{closest(f, FORMATS)}; choose from {', '.join(FORMATS)}")
        FORMATS[f].require()
    if not formats:
        raise EdgeCNNError(f"no format given: use --format {','.join(DEFAULT_FORMATS)}")
    return formats
