"""The one-command cross-format table: a checkpoint exported to every format this machine has a runtime for,
float and int8, each artefact verified by the exporter, then every one that passed benchmarked beside the PyTorch
model."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from edgecnn.bench.harness import BenchRow
from edgecnn.errors import EdgeCNNError

CALIBRATION_SAMPLES = 200
STATUS = {"gate failed": "accuracy gate failed", "float ops left": "float ops left", "export failed": "export failed"}


def export_all_formats(checkpoint: Path, out_dir: Path, dataset: str | None, eval_samples: int,
                       max_accuracy_drop: float | None, target: str, calibration_method: str, console: Console
                       ) -> tuple[list[Path], list[BenchRow]]:
    """(artefacts to benchmark, rows for the exports that failed) for each installed format × float32 and int8."""
    from edgecnn.export import ExportOptions, export
    from edgecnn.export.sources import dataset_images, source_from_checkpoint
    from edgecnn.runtime.formats import installed_formats

    source = source_from_checkpoint(checkpoint)
    data = dataset or source.dataset
    if not data:
        raise EdgeCNNError(f"{checkpoint}: no dataset recorded in the checkpoint; give --dataset to calibrate and "
                           "verify the exports")
    verification = dataset_images(data, "test", source.pre, eval_samples)
    calibration = dataset_images(data, "train", source.pre, CALIBRATION_SAMPLES)
    artefacts = []
    for int8 in (False, True):
        options = ExportOptions(formats=installed_formats(), int8=int8, target=target,
                                max_accuracy_drop=max_accuracy_drop, calibration=calibration_method)
        artefacts += export(source, options, out_dir, calibration if int8 else None, verification, console)
    ok = [Path(a.path) for a in artefacts if a.status == "ok"]
    failed = [
        BenchRow(Path(a.path).name, a.format, "int8" if a.int8 else "float32", "", "—", 0, 1,
                 status=STATUS.get(a.status, a.status) + (f": {a.error}" if a.error else ""), path=a.path,
                 accuracy=a.accuracy, size_bytes=a.size_bytes or None)
        for a in artefacts if a.status != "ok"
    ]
    return ok, failed
