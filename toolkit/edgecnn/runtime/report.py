"""`edgecnn info`: what a model file says about itself (torch-free)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgecnn.errors import printable
from edgecnn.runtime.modelfile import ModelFile, task_of


def _equalization_text(report: object) -> str:
    """One line for what channel equalization did before int8 (edgecnn.quantize.equalize), from any card."""
    if not isinstance(report, dict):
        return str(report)
    if "skipped" in report:
        return f"none ({report['skipped']})"
    return f"{report.get('channels')} channels rescaled in {report.get('groups')} groups"


def shown(value: object) -> str:
    """Text from a model file, ready for a rich table or status line: neither terminal escapes nor rich markup
    in it act (a crafted card could otherwise clear the screen or print a fake 'verified')."""
    return escape(printable(value))


def model_summary(model: ModelFile) -> dict:
    counts = Counter(f"{op.name}:{op.dtype}" for op in model.compute_ops)
    return {
        "path": str(model.path),
        "format": model.format,
        "inputs": model.inputs,
        "outputs": model.outputs,
        "ops": {
            "total": len(model.ops),
            "compute": len(model.compute_ops),
            "int8": len(model.int8_ops),
            "float": len(model.float_ops),
            "by_type": dict(sorted(counts.items())),
            "float_ops": [f"{op.name} ({op.where})" for op in model.float_ops],
        },
        "card": model.card,
        "integrity": None if model.integrity is None else {"verified": model.integrity.verified,
                                                           "detail": model.integrity.detail},
    }


def print_model_summary(console: Console, summary: dict) -> None:
    card = summary["card"]
    table = Table(title=shown(f"{summary['path']} ({summary['format']})"), show_header=False)
    table.add_column("field")
    table.add_column("value")

    def add_row(field: str, value: str) -> None:
        table.add_row(field, shown(value))

    for kind in ("inputs", "outputs"):
        for t in summary[kind]:
            add_row(kind[:-1], f"{t['name']} {t['dtype']} {t['shape']}")
    ops = summary["ops"]
    add_row("ops", f"{ops['total']} ({ops['compute']} compute: {ops['int8']} int8, {ops['float']} float)")
    add_row("op types", ", ".join(f"{k}×{v}" for k, v in ops["by_type"].items()))
    if ops["float_ops"]:
        add_row("float ops", ", ".join(ops["float_ops"]))
    integrity = summary["integrity"]
    add_row("integrity", "not checked (--no-verify)" if integrity is None
            else ("verified: " if integrity["verified"] else "") + integrity["detail"])
    if card is None:
        add_row("card", "none: not an edgecnn export (preprocessing must be given to the runtime)")
    else:
        pre, src, quant = card["preprocess"], card["source"], card["quantization"]
        add_row("task", task_of(card))
        add_row("labels", f"{len(card['labels'])}: {', '.join(card['labels'][:10])}"
                + (" ..." if len(card["labels"]) > 10 else ""))
        crop = "whole frame" if pre["crop"] is None else f"centre crop {pre['crop']:g} of the shorter side"
        add_row("preprocess", f"{crop} → {pre['img_size']}×{pre['img_size']} ({pre.get('interpolation', 'area')}) "
                              f"{pre['color']} {pre['layout']}, "
                              f"mean {pre['mean']}, std {pre['std']}")
        if "detect" in card:
            d = card["detect"]
            add_row("detection", f"{d['coding']['anchors']['count']} anchors, boxes {d['coding']['order']} / "
                                 f"{d['coding']['scales']}, {d['score']} scores"
                                 f"{' (column 0 background)' if d['background'] else ''}, {d['fit']} frames, "
                                 f"score ≥ {d['min_score']}, NMS IoU {d['nms_iou']}")
        for kind in ("input", "output"):
            if kind not in card:
                continue
            t = card[kind]
            q = f", scale {t['scale']:.6g}, zero point {t['zero_point']}" if t["scale"] else ""
            add_row(f"{kind} tensor", f"{t['dtype']}{q}")
        add_row("quantization", f"{quant['scheme'] or 'float'}; float layers: "
                                f"{', '.join(quant['float_layers']) or 'none'}")
        if quant["calibration"]:
            add_row("calibration", f"{quant['calibration']['samples']} images: {quant['calibration']['images']}")
        if quant.get("equalization"):
            add_row("equalization", _equalization_text(quant["equalization"]))
        if isinstance(quant.get("adaround"), dict):
            adaround = quant["adaround"]
            grid = f" ({adaround['weight_grid']} weights)" if adaround.get("weight_grid") else ""
            add_row("adaround", f"rounding learned for {adaround.get('learned')} of {adaround.get('layers')} layers"
                                f"{grid}")
        add_row("source", f"{src['model']} (width {src['width']}), dataset {src['dataset']}, from {src['from']}, "
                          f"recipe {src['recipe_hash']}")
        add_row("edgecnn", card["edgecnn_version"])
    console.print(table)
