"""Bench results as a terminal table, JSON, CSV, Markdown and a latency-vs-accuracy plot."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, fields
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgecnn.atomic import atomic_path, write_bytes
from edgecnn.bench.harness import BenchRow
from edgecnn.errors import EdgeCNNError

COLUMNS = ("model", "format", "prec.", "backend", "thr", "batch", "status", "size", "median ms", "p90 ms", "p99 ms",
           "img/s", "load ms", "1st ms", "RSS MB", "MACs", "eff.", "accuracy", "agree")
CSV_FIELDS = [f.name for f in fields(BenchRow) if f.name != "profile"]


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**20:.2f}M" if n >= 2**20 else f"{n / 1024:.1f}K"


def _macs(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M"


def row_cells(r: BenchRow) -> list[str]:
    name = f"{r.model} ★" if r.fastest else r.model
    if r.estimated_ms is not None:  # never in the measured columns' own format: an estimate reads as one
        status, median = f"est. {r.device}", f"≈{r.estimated_ms:.3g}"
    else:
        status, median = r.status, _num(r.median_ms)
    return [name, r.format, r.precision, r.backend or "—", str(r.threads), str(r.batch), status,
            _size(r.size_bytes), median, _num(r.p90_ms), _num(r.p99_ms), _num(r.throughput_ips, 1),
            _num(r.load_ms, 1), _num(r.first_ms, 2), _num(r.peak_rss_mb, 1), _macs(r.macs),
            "—" if r.efficiency is None else f"{r.efficiency:.1%}",
            _pct(r.accuracy) if r.map50 is None else f"mAP50 {r.map50:.3f}",
            _pct(r.agreement) if r.box_agreement is None else f"boxes {r.box_agreement:.3f}"]


def machine_line(machine: dict, device: str = "") -> str:
    parts = [f"{device}: " * bool(device) + machine.get("cpu", "unknown CPU"), f"{machine.get('cores', '?')} cores",
             "ISA " + (" ".join(machine.get("isa", [])) or "baseline")]
    for key, label in (("board", ""), ("governor", "governor "), ("temperature_c", "temp "), ("gpu", "")):
        if machine.get(key) is not None:
            parts.append(f"{label}{machine[key]}" + ("°C" if key == "temperature_c" else ""))
    if machine.get("emulation"):
        parts.append(machine["emulation"])
    if machine.get("throttled"):
        flags = machine["throttled"]["flags"]
        parts.append(f"throttled {machine['throttled']['raw']}" + (f" ({', '.join(flags)})" if flags else ""))
    return ", ".join(str(p) for p in parts)


def print_bench_table(console: Console, rows: list[BenchRow], machine: dict, notes: list[str]) -> None:
    device = rows[0].device if rows else ""
    table = Table(title=machine_line(machine, device))
    for column in COLUMNS:
        table.add_column(column, no_wrap=column in ("model", "backend"))
    for r in rows:
        table.add_row(*row_cells(r))
    console.print(table)
    emulated = "emulation" in machine
    console.print("latency per batch (ms), median of the timed runs; ★ fastest at its thread count; size: K/M "
                  "bytes; eff.: MACs ÷ (peak MAC rate × latency); ≈: an estimate from a device profile, not a "
                  "measurement; agree: same top-1 as "
                  + ("the same file on this x86 host (emulated rows carry no times)" if emulated
                     else "the float reference"))
    if any(r.task == "detect" for r in rows):
        console.print("detectors: accuracy is mAP@0.5 against the dataset's boxes, agree is box agreement (mAP@0.5 "
                      "against the reference model's boxes); a file's latency includes decoding + NMS, a PyTorch "
                      "row's is the network alone")
        for r in rows:
            if r.decode_ms is not None:
                console.print(f"{r.model} ({r.threads} thr): decoding + NMS {r.decode_ms:.2f} ms of the median")
    for note in dict.fromkeys(r.note for r in rows if r.note):
        console.print(note)
    for r in rows:
        if r.profile:
            top = ", ".join(f"{p['op']} {p['node']} {p['mean_ms']:.3f} ms ({p['share']:.0%})" for p in r.profile[:5])
            console.print(f"{r.model} slowest nodes: {top}")
    for note in notes:
        console.print(note)


def bench_report(rows: list[BenchRow], machine: dict, options: dict, notes: list[str]) -> dict:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "options": options, "notes": notes,
            "results": [asdict(r) for r in rows]}


def write_csv(path: Path, rows: list[BenchRow]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(asdict(r))
    write_bytes(path, buffer.getvalue().encode())


def markdown_table(rows: list[BenchRow], machine: dict) -> str:
    lines = [f"Machine: {machine_line(machine, rows[0].device if rows else '')}", "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = row_cells(r)
        cells[0] = f"**{cells[0]}**" if r.fastest else cells[0]
        lines.append("| " + " | ".join(cells) + " |")
    if machine.get("peak"):
        lines += ["", f"eff.: MACs ÷ (peak × median latency), peak = {machine['peak']}"]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, rows: list[BenchRow], machine: dict) -> None:
    write_bytes(path, markdown_table(rows, machine).encode())


def require_matplotlib() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise EdgeCNNError("--plot needs matplotlib: pip install 'edgecnn[bench]'")


def write_plot(path: Path, rows: list[BenchRow], title: str) -> None:
    """Latency (log scale) against accuracy, one point per measured row with an accuracy."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    metric = "accuracy" if any(r.accuracy is not None for r in rows) else "agreement"
    measured = [r for r in rows if r.median_ms is not None and getattr(r, metric) is not None]
    # Threads change latency, not accuracy: one point per model, at the smallest thread count measured.
    fewest = min((r.threads for r in measured), default=1)
    points = [r for r in measured if r.threads == fewest]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for k, r in enumerate(points):
        y = 100 * getattr(r, metric)
        ax.scatter(r.median_ms, y, s=90 if r.fastest else 40, marker="*" if r.fastest else "o")
        ax.annotate(f"{r.model} ({r.precision})", (r.median_ms, y), textcoords="offset points",
                    xytext=(6, 10 - 12 * (k % 3)), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if points:
        values = [100 * getattr(r, metric) for r in points]
        ax.set_ylim(min(values) - 1, min(100.5, max(values) + 1))
    ax.set_xlabel(f"median latency per batch, {fewest} thread(s) (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "accuracy" else "top-1 agreement with the float model (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no row has both a latency and an accuracy (give --dataset or --images)", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_tables(rows: list[BenchRow], machine: dict, csv_path: Path | None, md_path: Path | None,
                 plot_path: Path | None) -> list[Path]:
    """The CSV, Markdown and plot files asked for; returns the paths written."""
    written = []
    if csv_path:
        write_csv(csv_path, rows)
        written.append(csv_path)
    if md_path:
        write_markdown(md_path, rows, machine)
        written.append(md_path)
    if plot_path:
        write_plot(plot_path, rows, machine_line(machine))
        written.append(plot_path)
    return written
