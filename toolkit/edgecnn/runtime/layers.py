"""Layer tables of .tflite/.onnx files: op, kernel, stride, shapes, parameters and MACs, read from the file.

The same `LayerRow` serves PyTorch models (`edgecnn.summary`); this module imports no torch. MACs count the
multiply-accumulates of convolutions and fully-connected layers (what the usual "FLOPs" tables report):
a convolution producing N×C_out×H×W from C_in channels with a K_h×K_w kernel costs N·H·W·C_out·(C_in/groups)·K_h·K_w.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgecnn.runtime.formats import format_of
from edgecnn.runtime.modelfile import read_model_file
from edgecnn.runtime.report import shown


@dataclass
class LayerRow:
    name: str
    type: str
    input: list[int] = field(default_factory=list)  # N, C, H, W (N, H, W, C for TFLite tensors)
    output: list[int] = field(default_factory=list)
    kernel: list[int] | None = None
    stride: list[int] | None = None
    padding: list[int] | str | None = None
    groups: int | None = None
    params: int = 0
    macs: int = 0
    dtype: str = ""  # the dtype it computes in (files), '' for PyTorch
    note: str = ""


def per_image(dims: list) -> int:
    """The product of an output's dimensions after the batch one; 0 (unknown) when one of them is symbolic."""
    rest = list(dims[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        return 0
    return int(np.prod(rest)) if rest else 1


def conv_macs(output: list[int], in_channels: int, groups: int, kernel: list[int]) -> int:
    """Multiply-accumulates of one image (whatever the file's batch dimension says)."""
    return per_image(output) * (in_channels // groups) * int(np.prod(kernel))


def file_layers(path: str | Path, verify: bool = True) -> list[LayerRow]:
    """The layer table of a model file; with `verify`, a file that fails its content hash is refused."""
    read_model_file(path, verify=verify)  # validates before the format's parser walks the file
    return format_of(path).runtime.layers(Path(path))


def _fmt(v) -> str:
    if v is None or v == []:
        return ""
    if isinstance(v, list):
        return "×".join(str(x) for x in v)
    return str(v)


def print_summary(console: Console, rows: list[LayerRow], title: str) -> None:
    table = Table(title=shown(title))
    for column in ("layer", "type", "kernel", "stride", "pad", "groups", "input", "output", "params", "MACs",
                   "note"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for r in rows:
        padding = r.padding if isinstance(r.padding, str) else _fmt(r.padding)
        table.add_row(shown(r.name), shown(r.type + (f" ({r.dtype})" if r.dtype else "")), _fmt(r.kernel),
                      _fmt(r.stride), shown(padding), _fmt(r.groups), _fmt(r.input), _fmt(r.output),
                      f"{r.params:,}" if r.params else "", f"{r.macs:,}" if r.macs else "", shown(r.note))
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    table.add_section()
    table.add_row("total", "", "", "", "", "", "", "", f"{params:,}", f"{macs:,}", "")
    console.print(table)
    console.print(f"{params / 1e6:.2f} M parameters, {macs / 1e6:.1f} M MACs per image")


def summary_report(rows: list[LayerRow], title: str) -> dict:
    return {"title": title, "params": sum(r.params for r in rows), "macs": sum(r.macs for r in rows),
            "layers": [asdict(r) for r in rows]}
