"""`edgecnn run`: a recipe's stages in order, skipping those whose inputs did not change.

A stage's fingerprint is the digest of the recipe sections it reads plus the content of the upstream files it
consumes. out_dir/report.json records each stage's fingerprint, outputs and metrics; a re-run whose fingerprint
matches and whose outputs are still on disk is skipped. A stage that was interrupted (status "running") resumes
where the tool supports it (training continues from last.pt).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgecnn import __version__
from edgecnn.atomic import write_json
from edgecnn.errors import EdgeCNNError
from edgecnn.recipe import Recipe


@dataclass
class StageContext:
    recipe: Recipe
    out_dir: Path
    console: Console
    upstream: dict[str, dict[str, str]]  # earlier stages' outputs: stage -> name -> path
    interrupted: bool  # the previous attempt with this fingerprint did not finish


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    consumes: tuple[str, ...]  # upstream stages whose output files feed this one
    run: Callable[[StageContext], tuple[dict[str, str], dict[str, Any]]]  # -> (outputs, metrics)
    wanted: Callable[[Recipe], bool] = lambda recipe: True


def _train_stage(ctx: StageContext) -> tuple[dict[str, str], dict[str, Any]]:
    folder = ctx.out_dir / "train"
    outputs = {"best": str(folder / "best.pt"), "last": str(folder / "last.pt")}
    if ctx.recipe.task == "detect":
        from edgecnn.detection.train import train_detector as train
    else:
        from edgecnn.train import train
    result = train(ctx.recipe, folder, resume=ctx.interrupted, console=ctx.console)
    return outputs, {f"best_{result.metric}": result.best, f"last_{result.metric}": result.last,
                     "epochs": result.epochs}


def _prune_stage(ctx: StageContext) -> tuple[dict[str, str], dict[str, Any]]:
    from edgecnn.workflows.prune import prune_checkpoint

    p = ctx.recipe.prune
    report = prune_checkpoint(
        ctx.upstream["train"]["best"], p.ratio, ctx.out_dir / "prune", steps=p.steps, global_pruning=p.global_pruning,
        round_to=p.round_to, finetune_epochs=p.finetune_epochs, lr=p.lr, batch_size=ctx.recipe.data.batch_size,
        console=ctx.console, measure_latency=False,
    )
    metrics = {k: report[k] for k in ("macs_before", "macs_after", "top1_before", "top1_finetuned", "top1_pruned")}
    return {"pruned": report["checkpoint"]}, metrics


def _export_stage(ctx: StageContext) -> tuple[dict[str, str], dict[str, Any]]:
    from edgecnn.workflows.export import run_export

    checkpoint = ctx.upstream["prune"]["pruned"] if "prune" in ctx.upstream else ctx.upstream["train"]["best"]
    return run_export(ctx.recipe, checkpoint, ctx.out_dir / "export", ctx.console)


STAGES: list[Stage] = [
    Stage("train", ("data", "model", "train"), (), _train_stage),
    Stage("prune", ("data", "prune"), ("train",), _prune_stage, lambda r: r.prune.ratio > 0),
    Stage("export", ("data", "quantize", "export"), ("train", "prune"), _export_stage,
          lambda r: bool(r.export.formats)),
]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint(stage: Stage, recipe: Recipe, upstream: dict[str, dict[str, str]]) -> str:
    parts = [recipe.section_hash(*stage.sections)]
    for name in (n for n in stage.consumes if n in upstream):
        parts += [f"{k}={file_digest(p)}" for k, p in sorted(upstream[name].items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _previous_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
        return report if isinstance(report, dict) else {}
    except (OSError, ValueError):
        return {}


def run_recipe(recipe: Recipe, out_dir: str | Path, console: Console, force: bool = False) -> dict:
    """Run every stage of `recipe` into `out_dir`; return the report also written to out_dir/report.json."""
    out_dir = Path(out_dir)
    report_path = out_dir / "report.json"
    previous = _previous_report(report_path).get("stages", {})
    report: dict[str, Any] = {
        "recipe": recipe.name, "recipe_hash": recipe.hash, "edgecnn_version": __version__, "stages": {},
    }
    upstream: dict[str, dict[str, str]] = {}
    for stage in [s for s in STAGES if s.wanted(recipe)]:
        fingerprint = _fingerprint(stage, recipe, upstream)
        before = previous.get(stage.name, {})
        same = before.get("fingerprint") == fingerprint
        outputs_exist = all(Path(p).is_file() for p in before.get("outputs", {}).values())
        if same and before.get("status") in ("done", "skipped") and outputs_exist and not force:
            console.print(f"[dim]{stage.name}: inputs unchanged, skipped[/dim]")
            entry = {**before, "status": "skipped"}
        else:
            entry = {"fingerprint": fingerprint, "status": "running"}
            report["stages"][stage.name] = entry
            write_json(report_path, report)
            console.rule(stage.name)
            started = time.perf_counter()
            interrupted = same and before.get("status") in ("running", "failed") and not force
            ctx = StageContext(recipe, out_dir, console, upstream, interrupted)
            try:
                outputs, metrics = stage.run(ctx)
            except EdgeCNNError as e:
                entry.update(status="failed", error=str(e))
                write_json(report_path, report)
                raise
            entry = {
                "fingerprint": fingerprint, "status": "done", "outputs": outputs, "metrics": metrics,
                "seconds": round(time.perf_counter() - started, 2),
            }
        report["stages"][stage.name] = entry
        upstream[stage.name] = entry["outputs"]
        write_json(report_path, report)
    return report
