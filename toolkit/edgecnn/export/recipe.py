"""The recipe's export stage: the trained checkpoint → verified artefacts, as `edgecnn export` does it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from edgecnn.errors import EdgeCNNError
from edgecnn.export import ExportOptions, export
from edgecnn.export.report import export_report, print_export_table
from edgecnn.export.sources import dataset_images, source_from_checkpoint
from edgecnn.recipe import Recipe


def run_export(recipe: Recipe, checkpoint: str | Path, out_dir: Path, console: Console
               ) -> tuple[dict[str, str], dict[str, Any]]:
    q, e = recipe.quantize, recipe.export
    int8 = q.method != "none"
    options = ExportOptions(formats=tuple(e.formats), int8=int8, target=q.target,
                            max_accuracy_drop=q.max_accuracy_drop, fallback=q.fallback,
                            allow_float_ops=e.allow_float_ops)
    source = source_from_checkpoint(checkpoint)
    if q.method == "qat":
        from edgecnn.export.qat import quantization_aware_training

        source.qat = quantization_aware_training(source, recipe, console)
    verification = dataset_images(recipe.data.dataset, "test", source.pre, e.eval_samples)
    calibration = dataset_images(recipe.data.dataset, "train", source.pre, q.calib_samples) if int8 else None
    artefacts = export(source, options, out_dir, calibration, verification, console)
    print_export_table(console, artefacts, verification)
    from edgecnn.atomic import write_json

    write_json(out_dir / "export.json", export_report(artefacts, calibration, verification))
    failed = [a for a in artefacts if a.status != "ok"]
    if failed:
        raise EdgeCNNError("export: " + "; ".join(f"{a.format}: {a.status} {a.error or ''}".strip() for a in failed))
    outputs = {a.format: a.path for a in artefacts}
    metrics = {f"{a.format}_{k}": getattr(a, k) for a in artefacts for k in ("accuracy", "agreement")}
    return outputs, metrics
