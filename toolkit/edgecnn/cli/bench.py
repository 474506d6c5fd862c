"""`edgecnn bench` and `edgecnn device`: measuring models, here or on a device, and the devices known."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgecnn.cli.common import (
    THREADS,
    calibration_option,
    console,
    int_list,
    json_option,
    no_verify_option,
    options_from,
    warn_about_threads,
    write_json_output,
)
from edgecnn.errors import EdgeCNNError
from edgecnn.runtime.formats import ENGINES

# Where a measurement runs, and how to reach it (edgecnn.bench.make_target's keywords).
DEVICE_OPTIONS = (
    click.option("--device", default="cpu", show_default=True,
                 help="cpu (this machine), cuda, ssh://[user@]host[:port], adb[:SERIAL] or "
                      "arm64-emu[:cortex-a72|cortex-a76] (an emulated Pi 4/Pi 5 userland: functional runs compared "
                      "with x86, no timing)."),
    click.option("--remote-python", "python", default="python3", show_default=True, help="ssh: the device's Python."),
    click.option("--ssh-key", "key", type=click.Path(path_type=Path), help="ssh: identity file."),
    click.option("--ssh-config", "config", type=click.Path(path_type=Path), help="ssh: config file (ssh -F)."),
    click.option("--ssh-insecure", "insecure", is_flag=True,
                 help="ssh: do not check the host key (throwaway test boards only)."),
    click.option("--benchmark-model", type=click.Path(path_type=Path), help="adb: TensorFlow Lite benchmark_model."),
    click.option("--cores", help="adb: CPU mask to pin to, e.g. f0 for cores 4-7."),
    click.option("--timeout", type=click.FloatRange(min=1), default=900, show_default=True,
                 help="Seconds one measurement may take."),
)
DEVICE_PARAMS = ("device", "python", "key", "config", "insecure", "benchmark_model", "cores", "timeout")


def device_options(f):
    for option in reversed(DEVICE_OPTIONS):
        f = option(f)
    return f


@click.command()
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", type=THREADS, multiple=True, default=(1,), show_default=True,
              help="Thread count; repeat it to measure several, e.g. --threads 1 --threads 4.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs (at least).")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keep timing until this many seconds have passed too.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per run (models with a dynamic batch dimension).")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Measure every variant this many times in turns (A B A B ...), each in a fresh process.")
@click.option("--dataset", help="Held-out data for accuracy and agreement: digits, fashion-mnist, imagefolder:DIR ...; "
              "for detectors coco:DIR or yolo:DIR (mAP@0.5 and box agreement).")
@click.option("--images", type=click.Path(path_type=Path),
              help="Folder of unlabelled photos for top-1 (or box) agreement only (instead of --dataset).")
@click.option("--eval-samples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Held-out images used with --dataset / --images.")
@click.option("--reference", type=click.Path(path_type=Path),
              help="Float model for top-1 agreement [default: the first checkpoint, else the first float model].")
@click.option("--input-shape", help="Input shape for models with dynamic dimensions, e.g. 1,3,224,224.")
@click.option("--backend", "backends", type=click.Choice(ENGINES), multiple=True,
              help="Run each file in this engine where it reads the format (openvino also runs .onnx); repeat it "
                   "to compare engines [default: each format's own].")
@click.option("--profile", is_flag=True, help="Per-op times (onnxruntime profiler; benchmark_model on adb).")
@click.option("--estimate", help="Also estimate latency on devices that are not attached: pi4,pi5,phone-a76,phone-a55 "
                                 "or all (see `edgecnn device list`).")
@click.option("--all-formats", is_flag=True,
              help="For a checkpoint: export every installed format, float32 and int8, and benchmark them all with it.")
@click.option("--export-dir", type=click.Path(path_type=Path),
              help="Where --all-formats writes the artefacts [default: CHECKPOINT_DIR/bench-export].")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0),
              help="--all-formats: an int8 export losing more top-1 points fails the accuracy gate.")
@click.option("--int8-target", default="host", show_default=True,
              help="--all-formats: CPU the int8 scheme is for (as export --target): host, x86-avx2, x86-avx2-u8u8, "
                   "x86-vnni, arm.")
@calibration_option("--all-formats: the int8 exports' activation ranges")
@device_options
@no_verify_option()
@json_option('the results {"machine": ..., "results": [...]}')
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Write the results as CSV.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), help="Write the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Latency-vs-accuracy PNG.")
def bench(models: tuple[Path, ...], json_path: Path | None, csv_path: Path | None, md_path: Path | None,
          plot_path: Path | None, **params) -> None:
    """Latency (median, p90, p99 ...), size, memory and accuracy of model files (.tflite, .onnx, OpenVINO .xml)
    and checkpoints."""
    from edgecnn.bench import BenchOptions, benchmark, make_target
    from edgecnn.bench.harness import estimate_rows
    from edgecnn.bench.profiles import parse_profiles
    from edgecnn.bench.report import bench_report, print_bench_table, require_matplotlib, write_tables

    if plot_path:
        require_matplotlib()  # before minutes of measuring, not after
    if params["device"] in ("cpu", "local"):
        warn_about_threads(max(params["threads"]))
    profiles = parse_profiles(params["estimate"]) if params["estimate"] else []
    shape = params["input_shape"]
    options = options_from(BenchOptions, params, threads=tuple(dict.fromkeys(params["threads"])),
                           backends=tuple(dict.fromkeys(params["backends"])),
                           input_shape=int_list(shape, "--input-shape") if shape else None,
                           verify=not params["no_verify"])
    target = make_target(**{k: params[k] for k in DEVICE_PARAMS})
    models, failed_exports = list(models), []
    if params["all_formats"]:
        models, failed_exports = _export_all_formats(models, options, params)
    rows, machine = benchmark(models, options, target, console)
    rows += failed_exports + estimate_rows(rows, profiles)
    notes = []
    if (options.dataset or options.images) and all(r.agreement is None and r.box_agreement is None for r in rows):
        notes.append("agreement: no float reference among these models; give --reference FLOAT_MODEL")
    if machine.get("peak") and any(r.efficiency is not None for r in rows):
        notes.append(f"eff.: peak = {machine['peak']}")
    print_bench_table(console, rows, machine, notes)
    record = {k: params[k] for k in ("runs", "warmup", "min_seconds", "batch_size", "rounds", "eval_samples",
                                     "device")}
    record.update(threads=list(options.threads), dataset=options.dataset,
                  images=str(options.images) if options.images else None, estimate=[p.name for p in profiles])
    write_json_output(json_path, bench_report(rows, machine, record, notes))
    for path in write_tables(rows, machine, csv_path, md_path, plot_path):
        console.print(f"wrote {path}")
    broken = [r for r in rows if r.status.startswith("failed")]
    if broken:
        raise EdgeCNNError(f"{len(broken)} of {len(rows)} measurements failed: "
                           + "; ".join(f"{r.model}: {r.status.removeprefix('failed: ')}" for r in broken))


def _export_all_formats(models: list[Path], options, params: dict) -> tuple[list[Path], list]:
    """The checkpoint plus its verified exports (and rows for the exports that failed) for --all-formats."""
    from edgecnn.checkpoint import existing_checkpoint, load_checkpoint
    from edgecnn.quantize.calibrate import parse_calibration

    if len(models) != 1 or models[0].suffix not in (".pt", ".pth"):
        raise EdgeCNNError("--all-formats takes one edgecnn checkpoint (.pt)")
    if params["device"] not in ("cpu", "local"):
        raise EdgeCNNError("--all-formats measures PyTorch and every installed format on this machine (--device cpu); "
                           "bench the exported files on other devices")
    calibration = parse_calibration(params["calibration"])
    existing_checkpoint(models[0])

    from edgecnn.workflows.bench_formats import export_all_formats  # torch and the converters: after the checks

    out = params["export_dir"] or models[0].parent / "bench-export"
    exported, failed = export_all_formats(models[0], out, options.dataset, options.eval_samples,
                                          params["max_accuracy_drop"], params["int8_target"], calibration, console)
    if not (options.dataset or options.images):
        options.dataset = load_checkpoint(models[0]).dataset
    return models + exported, failed


@click.group()
def device() -> None:
    """Devices to run on: the emulated Pi userland, and the profiles behind `bench --estimate`."""


@device.command(name="setup")
@click.argument("name", type=click.Choice(["arm64-emu"]))
@click.option("--folder", type=click.Path(path_type=Path),
              help="Where the userland lives [default: $EDGECNN_CACHE or ~/.cache/edgecnn, /arm64-emu].")
@click.option("--mirror", help="Debian mirror [default: http://deb.debian.org/debian].")
@click.option("--from-tarball", type=click.Path(path_type=Path), help="Restore a userland saved with --save-tarball.")
@click.option("--save-tarball", type=click.Path(path_type=Path), help="Also save the userland as a .tar.gz.")
@click.option("--rebuild", is_flag=True, help="Build it again even when one exists.")
def device_setup(name: str, folder: Path | None, mirror: str | None, from_tarball: Path | None,
                 save_tarball: Path | None, rebuild: bool) -> None:
    """Build (or restore) the emulated Raspberry Pi OS userland: Debian bookworm arm64, Python 3.11 and the
    edgecnn runtime with its Arm wheels, run by qemu-user as a Cortex-A72 (Pi 4) or Cortex-A76 (Pi 5)."""
    from edgecnn.bench.arm64_emu import DEFAULT_MIRROR, setup_userland

    userland = setup_userland(folder, mirror=mirror or DEFAULT_MIRROR, from_tarball=from_tarball,
                              save_tarball=save_tarball, rebuild=rebuild, log=console.print)
    console.print(f"ready in {userland.folder}: edgecnn bench MODEL --device arm64-emu[:cortex-a76] --dataset NAME")


@device.command(name="list")
@json_option("the profiles")
def device_list(json_path: Path | None) -> None:
    """Device profiles: peak int8/fp32 MAC rates, the published measurement each estimate is calibrated on."""
    from dataclasses import asdict

    from edgecnn.bench.machine import machine_info
    from edgecnn.bench.profiles import MOBILENET_V2_MACS, PROFILES, measured_profile

    threads = max(p.cores for p in PROFILES.values())
    table = Table(title=f"device profiles (bench --estimate NAME); MobileNetV2 estimates at {threads} threads")
    for column in ("name", "device", "peak fp32", "peak int8", "MobileNetV2 fp32", "int8", "basis"):
        table.add_column(column, overflow="fold")
    for p in PROFILES.values():
        estimates = [p.estimate_ms(MOBILENET_V2_MACS, kind, p.cores) for kind in ("float32", "int8")]
        table.add_row(p.name, p.title, f"{p.peak_macs_per_s('float32', p.cores) / 1e9:.1f} GMAC/s",
                      f"{p.peak_macs_per_s('int8', p.cores) / 1e9:.1f} GMAC/s",
                      *(f"≈{ms:.1f} ms" for ms in estimates), p.basis())
    host = measured_profile(machine_info())
    if host is not None:
        table.add_row("(this host)", host.title, f"{host.peak_macs_per_s('float32', host.cores) / 1e9:.1f} GMAC/s",
                      f"{host.peak_macs_per_s('int8', host.cores) / 1e9:.1f} GMAC/s", "measure it:", "edgecnn bench",
                      host.describe())
    console.print(table)
    cores = {p.core.name: p.core for p in PROFILES.values()}.values()
    console.print("peak = cores × GHz × MACs/cycle/core; per-cycle rates: "
                  + "; ".join(f"{c.name}: {c.source}" for c in cores))
    write_json_output(json_path, {name: {**asdict(p), "basis": p.basis(), "int8_speedup": p.int8_speedup,
                                         "mobilenet_v2_ms": {kind: p.estimate_ms(MOBILENET_V2_MACS, kind, p.cores)
                                                             for kind in ("float32", "int8")}}
                                  for name, p in PROFILES.items()})
