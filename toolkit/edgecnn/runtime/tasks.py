"""What a model is for, named once: the card's `task` picks the class `edgecnn.runtime.load` returns.

A task is a subclass of `edgecnn.runtime.model.Model` with a `from_file(model_file, backend, pre, labels)`
constructor and its own result type; engines, cards, integrity and preprocessing are shared. Adding a task is its
module, one entry in `TASKS` and its card fields in `edgecnn.runtime.modelfile.TASK_FIELDS`.
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.backends import load_backend
from edgecnn.runtime.classifier import Classifier
from edgecnn.runtime.detector import Detector
from edgecnn.runtime.model import model_preprocess
from edgecnn.runtime.modelfile import read_model_file, task_of

TASKS = {cls.task: cls for cls in (Classifier, Detector)}


def load(
    path: str | Path,
    threads: int | None = None,
    *,
    img_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    color: str | None = None,
    labels: list[str] | None = None,
    verify: bool = True,
    backend: str | None = None,
    task: str | None = None,
) -> Classifier | Detector:
    """Open a model file (.tflite, .onnx, OpenVINO .xml, ExecuTorch .pte) as the task its card names: a
    `Classifier` or a `Detector`. The card supplies preprocessing, the arguments override it; `task` insists on
    one (an error when the file is another). `backend` runs the file in another engine that reads its format
    (openvino for a .onnx).

    With `verify` (the default) an edgecnn artefact whose bytes do not match its content hash is refused before
    any runtime sees it; files without an edgecnn hash load, with a note in `model.notes`."""
    model_file = read_model_file(path, verify=verify)  # parsed first: no runtime sees a truncated or garbage file
    found = task_of(model_file.card)
    if task is not None and task != found:
        raise EdgeCNNError(f"{path}: a {found} model, not a {task} model"
                           + ("" if model_file.card else " (no edgecnn card: seal it with `edgecnn adopt`)"))
    engine = load_backend(path, threads, backend=backend)
    pre = model_preprocess(model_file, engine.input.shape, img_size, mean, std, color)
    model = TASKS[found].from_file(model_file, engine, pre, labels)
    model.notes = model_file.notes
    model.integrity = model_file.integrity
    return model
