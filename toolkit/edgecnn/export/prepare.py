"""What happens to the model before int8, each step a copy of the export source: channel equalization, learned
weight rounding (--adaround), per-tensor activation ranges (--calibration search). The float reference keeps
the original model."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rich.console import Console

from edgecnn.errors import EdgeCNNError, first_line
from edgecnn.export.sources import ExportSource

if TYPE_CHECKING:
    import torch

    from edgecnn.quantize.adaround import WeightGrid


def equalized(source: ExportSource, calibration: torch.Tensor) -> ExportSource:
    """The source with its activation channels equalized for int8 (the float reference keeps the original)."""
    from edgecnn.quantize.equalize import equalize

    model, report = equalize(source.model, calibration)
    return dataclasses.replace(source, model=model, equalization=report)


def adarounded(source: ExportSource, calibration: torch.Tensor, grid: WeightGrid, console: Console) -> ExportSource:
    """The source with BatchNorm folded and its weights' rounding to `grid` learned (the float reference keeps the
    original)."""
    from edgecnn.quantize.adaround import adaround

    console.print(f"  learning the {grid.name} weights' rounding (AdaRound) on {len(calibration)} calibration images")
    model, report = adaround(source.model, calibration, grid=grid)
    if report["layers"]:
        console.print(f"    {report['learned']} of {report['layers']} layers learned in {report['seconds']} s: output "
                      f"error {report['error_vs_nearest']['median']:.2f}x that of rounding to nearest (median layer)")
    return dataclasses.replace(source, model=model, adaround=report)


def range_searched(source: ExportSource, calibration: torch.Tensor, console: Console) -> ExportSource:
    """The source with each activation's range rule chosen by the output error it causes (the .tflite's PT2E
    graph is searched; every format takes the choices)."""
    from edgecnn.quantize import pt2e
    from edgecnn.quantize.search import MAX_SAMPLES, search_ranges

    console.print(f"  choosing each activation's range by its output error on {min(len(calibration), MAX_SAMPLES)} "
                  "calibration images")
    try:
        searched = search_ranges(pt2e.observe(source.model, calibration))
    except EdgeCNNError:
        raise
    except Exception as e:  # torch.export or a graph the search does not know: one line, not a traceback
        raise EdgeCNNError(f"--calibration search: {first_line(e)}; choose another --calibration") from None
    report = searched.report
    console.print(f"    {report['seconds']} s: output error {report['output_error_vs_start']:.2f}x that of "
                  f"{report['start']} everywhere; rules chosen: "
                  + ", ".join(f"{rule} {count}" for rule, count in report["rules"].items()))
    return dataclasses.replace(source, searched=searched)
