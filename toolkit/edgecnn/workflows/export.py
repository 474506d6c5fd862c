"""Export as a user runs it, from `edgecnn export` or a recipe's export stage: check the calibration images,
build and verify every artefact, print the table, write the report, and fail with the reasons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from edgecnn.atomic import write_json
from edgecnn.errors import EdgeCNNError
from edgecnn.export import Artefact, ExportOptions, export
from edgecnn.export.report import export_report, print_export_table
from edgecnn.export.sources import ExportSource, Images, export_images, source_from_checkpoint
from edgecnn.quantize.doctor import examine
from edgecnn.recipe import Recipe


def examine_calibration(calibration: Images, verification: Images, refuse_overlap: bool, console: Console) -> dict:
    """The calibration doctor's findings, its warnings printed (it raises for calibration that cannot work)."""
    console.print(f"calibrating on {len(calibration)} images: {calibration.description}")
    doctor = examine(calibration.pixels, verification.pixels, refuse_overlap=refuse_overlap)
    for warning in doctor["warnings"]:
        console.print(f"[yellow]calibration images: {warning}[/yellow]")
    return doctor


def export_verified(source: ExportSource, options: ExportOptions, out_dir: Path, calibration: Images | None,
                    verification: Images, console: Console, doctor: dict | None = None
                    ) -> tuple[list[Artefact], dict[str, Any]]:
    """(artefacts, report): every format built, verified and installed (or refused), the table printed."""
    artefacts = export(source, options, out_dir, calibration, verification, console)
    print_export_table(console, artefacts, verification)
    return artefacts, export_report(artefacts, calibration, verification, doctor)


def raise_failures(artefacts: list[Artefact], options: ExportOptions) -> None:
    failed = [a for a in artefacts if a.status != "ok"]
    if failed:
        raise EdgeCNNError("; ".join(f"{a.format}: {a.status} ({_failure(a, options)})" for a in failed))


def _failure(artefact: Artefact, options: ExportOptions) -> str:
    if artefact.status == "export failed":
        return artefact.error
    if artefact.status == "float ops left":
        return f"float ops: {', '.join(artefact.float_ops[:5])}; --allow-float-ops accepts them"
    metric = "mAP@0.5" if artefact.box_agreement is not None else "top-1"
    return f"{metric} drop {artefact.drop:.2f} points > --max-accuracy-drop {options.max_accuracy_drop}"


def run_export(recipe: Recipe, checkpoint: str | Path, out_dir: Path, console: Console
               ) -> tuple[dict[str, str], dict[str, Any]]:
    """The recipe's export stage: (outputs, metrics); out_dir/export.json holds the report."""
    q, e = recipe.quantize, recipe.export
    int8 = q.method != "none"
    options = ExportOptions(formats=tuple(e.formats), int8=int8, target=q.target,
                            max_accuracy_drop=q.max_accuracy_drop, fallback=q.fallback,
                            allow_float_ops=e.allow_float_ops)
    source = source_from_checkpoint(checkpoint)
    if q.method == "qat":
        from edgecnn.export.qat import quantization_aware_training

        source.qat = quantization_aware_training(source, recipe, console)
    calibration, verification = export_images(source, None, None, None, 1, q.calib_samples, e.eval_samples, int8)
    artefacts, report = export_verified(source, options, out_dir, calibration if int8 else None, verification,
                                        console)
    write_json(out_dir / "export.json", report)
    raise_failures(artefacts, options)
    outputs = {a.format: a.path for a in artefacts}
    keys = ("map50", "box_agreement") if source.task == "detect" else ("accuracy", "agreement")
    metrics = {f"{a.format}_{k}": getattr(a, k) for a in artefacts for k in keys}
    return outputs, metrics
