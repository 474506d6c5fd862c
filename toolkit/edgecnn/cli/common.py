"""What every verb shares: the console, the option spellings used by more than one verb, value parsers and
building an options dataclass from a verb's parameters.

One word, one meaning across verbs: `--json PATH` always writes a file (`-` prints to stdout), `--threads`
is one thread count (bench repeats it), `--device` is where the work runs, `--eval-samples` the held-out
images used, `--batch-size` a batch.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edgecnn.atomic import write_json
from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import MAX_IMG_SIZE

# Tables keep their columns in logs and pipes too (rich would otherwise assume 80 columns).
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)

JSON_TO_STDOUT = Path("-")
# Value types shared by verbs, with bounds: a typo of 100000 should be a usage error, not gigabytes allocated.
IMG_SIZE = click.IntRange(min=8, max=MAX_IMG_SIZE)
NUM_CLASSES = click.IntRange(min=2, max=100_000)
THREADS = click.IntRange(min=1, max=1024)


def warn_about_threads(threads: int) -> None:
    cores = os.cpu_count() or 1
    if threads > cores:
        console.print(f"[yellow]warning: {threads} threads on {cores} cores: they will take turns, and latency "
                      "figures will say more about the scheduler than the model[/yellow]")


def _json_destination(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value == JSON_TO_STDOUT:
        console.file = sys.stderr  # stdout carries the JSON alone; tables and progress go to stderr
        ctx.call_on_close(lambda: setattr(console, "file", None))  # None: rich's own sys.stdout again
    return value


def json_option(what: str) -> Any:
    """`--json PATH`: write `what` as JSON to PATH, or to stdout with `-`."""
    return click.option("--json", "json_path", type=click.Path(path_type=Path, allow_dash=True),
                        callback=_json_destination, help=f"Write {what} as JSON to this file (- for stdout).")


def calibration_option(what: str = "Activation ranges") -> Any:
    return click.option("--calibration", default="auto", show_default=True,
                        help=f"{what}: auto (best agreement on the calibration images), minmax, percentile, mse, "
                             "entropy, or search (each tensor's range by the output error it causes; slower: "
                             "~4 minutes for MobileNetV2 on 2 cores).")


def no_verify_option(what: str = "Do not check edgecnn files against their content hash.") -> Any:
    return click.option("--no-verify", is_flag=True, help=what)


def write_json_output(path: Path | None, obj: Any) -> None:
    if path is None:
        return
    if path == JSON_TO_STDOUT:
        click.echo(json.dumps(obj, indent=2))
        return
    write_json(path, obj)
    console.print(f"wrote {path}")


def options_from(cls: type, params: dict[str, Any], **values: Any) -> Any:
    """An options dataclass built by keyword from the verb's parameters of the same names, plus `values`
    (parsed or renamed ones): the one place where CLI spellings meet the library's fields."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in params.items() if k in names}, **values})


def int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeCNNError(f"{option} {text}: expected comma-separated whole numbers, e.g. 1,3,224,224") from None
    if not values or min(values) < 1:
        raise EdgeCNNError(f"{option} {text}: expected positive whole numbers, e.g. 1,3,224,224")
    return values


def rgb(text: str | None, option: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise EdgeCNNError(f"{option} {text}: expected three numbers r,g,b, e.g. 0.485,0.456,0.406")
    return values
