"""The export table and JSON report."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from edgecnn.export import Artefact
from edgecnn.export.sources import Images


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _first(items: list[str], n: int) -> str:
    if not items:
        return "none"
    more = f" … ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def print_export_table(console: Console, artefacts: list[Artefact], verification: Images) -> None:
    detector = verification.boxes is not None
    table = Table(title=f"verified on {len(verification)} images: {verification.description}")
    quality = ("mAP@0.5", "float mAP@0.5", "box agr.") if detector else ("accuracy", "float acc.", "agreement",
                                                                          "sure agr.", "logit SQNR")
    for column in ("artefact", "int8", "size", *quality, "max |Δlogit|", "float ops", "seconds", "status"):
        table.add_column(column)
    for a in artefacts:
        scores = ((_number(a.map50), _number(a.float_map50), _number(a.box_agreement)) if detector else
                  (_pct(a.accuracy), _pct(a.float_accuracy), _pct(a.agreement),
                   f"{_pct(a.confident_agreement)} of {a.confident_samples}",
                   "—" if a.logit_sqnr_db is None else f"{a.logit_sqnr_db:.1f} dB"))
        table.add_row(a.path, "yes" if a.int8 else "no", f"{a.size_bytes / 1024:.1f} KiB", *scores,
                      f"{a.max_logit_error:.4f}", _first(a.float_ops, 3), f"{a.export_seconds:.1f}", a.status)
    console.print(table)
    if detector:
        console.print("mAP@0.5 against the dataset's boxes (COCO's evaluator); box agr.: mAP@0.5 against the float "
                      "PyTorch model's boxes (score ≥ the card's threshold)")
    else:
        console.print("agreement: same top-1 as the float PyTorch model; sure agr.: the same, on images the float "
                      "model is ≥ 50 % sure of; logit SQNR: signal-to-noise ratio of the logits against the float "
                      "model's (steadier than agreement on few images)")
    for a in artefacts:
        if a.calibration:
            console.print(f"{a.path}: {a.scheme['target'] if a.scheme else ''} scheme, activation ranges "
                          f"{a.calibration['method']}")
        if a.layer_errors:
            worst = ", ".join(f"{row['layer']} {row['sqnr_db']:.1f} dB" for row in a.layer_errors[:5])
            console.print(f"  noisiest layers (SQNR against float on the calibration images): {worst}")
        for warning in a.warnings:
            console.print(f"  [yellow]warning: {warning}[/yellow]")
        if a.fallback and a.fallback["float_layers"]:
            f = a.fallback
            console.print(
                f"{a.path}: kept in float {', '.join(f['float_layers'])}; drop {f['int8_drop']:.2f} → "
                f"{f['drop']:.2f} points; latency {f['latency_ms_int8']:.3f} → {f['latency_ms']:.3f} ms; "
                f"size {f['size_bytes_int8']} → {f['size_bytes']} bytes"
            )


def export_report(artefacts: list[Artefact], calibration: Images | None, verification: Images,
                  doctor: dict | None = None) -> dict:
    return {
        "artifacts": [asdict(a) for a in artefacts],
        "calibration": None if calibration is None else {"samples": len(calibration),
                                                         "images": calibration.description, "doctor": doctor},
        "verification": {"samples": len(verification), "images": verification.description,
                         "labelled": verification.labels is not None or verification.boxes is not None},
    }
