"""The benchmark harness: models × thread counts → measured rows, each measured in a fresh process.

    rows, machine = benchmark([Path("a.tflite"), Path("b.onnx")], BenchOptions(threads=(1, 2)), target)

A variant is one model at one thread count (and precision/batch for PyTorch). Each variant is measured by a
child process (`edgecnn.bench.runner`, or `torch_runner` for checkpoints) so that thread pools, allocator state
and a crashing runtime stay out of the harness; with `rounds` > 1 variants take turns (A B A B ...) and their
samples are pooled, so a machine that drifts biases none of them.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecnn.bench.heldout import check_tasks, folder_held_out, held_out_images, prepare_inputs, score
from edgecnn.bench.profiles import DeviceProfile, efficiency, measured_profile
from edgecnn.bench.runner import LatencyStats, decode_array
from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess
from edgecnn.runtime.formats import BY_SUFFIX, engine_for, model_bytes, model_size, runs
from edgecnn.runtime.modelfile import ModelFile, read_model_file, task_of

CHECKPOINT_SUFFIXES = (".pt", ".pth")
GPU_THROUGHPUT_BATCH = 256


@dataclass
class BenchOptions:
    threads: tuple[int, ...] = (1,)
    runs: int = 50
    warmup: int = 5
    min_seconds: float = 0.0
    batch_size: int = 1
    rounds: int = 1
    dataset: str | None = None  # labelled held-out data: accuracy and agreement
    images: Path | None = None  # or a folder of unlabelled images (real photos): agreement only
    eval_samples: int = 500  # held-out images used
    input_shape: tuple[int, ...] | None = None
    profile: bool = False
    reference: Path | None = None
    verify: bool = True  # refuse an edgecnn artefact that does not match its content hash
    backends: tuple[str, ...] = ()  # engines to run each file in (those that read it); () = its own


@dataclass
class Variant:
    """One row to measure: a model at one thread count (and, for PyTorch, one precision and batch)."""

    model: Path
    format: str  # tflite | onnx | pytorch
    precision: str  # int8 | float32 | float16 | mixed (int8 with float ops left)
    threads: int
    input_shape: tuple[int, ...]
    name: str = ""
    runner: str = "edgecnn.bench.runner"
    torch: dict = field(default_factory=dict)  # device, channels_last for the PyTorch runner
    inputs: Path | None = None  # prepared held-out samples (.npy)
    macs: int | None = None
    size_bytes: int | None = None  # the file; for a checkpoint its weights' bytes (comparable to a float file)
    backend: str | None = None  # the engine to run a file in; None: its format's own
    pre: Preprocess | None = None  # a checkpoint's preprocessing (files carry theirs)
    sha256: str | None = None  # the verified file's hash: the runner checks the copy it loads against it
    note: str = ""  # e.g. that the file carries no edgecnn content hash
    detect: dict | None = None  # a detector's card section: how its outputs decode (the runner times decoding too)

    @property
    def task(self) -> str:
        return "detect" if self.detect is not None else "classify"


@dataclass
class BenchRow:
    model: str
    format: str
    precision: str
    backend: str
    device: str
    threads: int
    batch: int
    status: str = "ok"  # ok | failed: ... | export failed: ... | accuracy gate failed
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    runs: int = 0
    load_ms: float | None = None
    first_ms: float | None = None
    throughput_ips: float | None = None
    size_bytes: int | None = None
    peak_rss_mb: float | None = None
    macs: int | None = None
    accuracy: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    map50: float | None = None  # a detector's mAP@0.5 against the box dataset
    box_agreement: float | None = None  # a detector's mAP@0.5 against the reference model's boxes
    decode_ms: float | None = None  # a detector's decoding + NMS: part of median_ms (the runtime's, on the device)
    task: str = "classify"
    efficiency: float | None = None  # MACs ÷ (the device's peak MAC rate × median latency)
    estimated_ms: float | None = None  # a device profile's estimate, for a device that is not attached
    fastest: bool = False
    path: str = ""
    profile: list[dict] | None = None
    note: str = ""


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in BY_SUFFIX:
        return BY_SUFFIX[suffix].name
    if suffix in CHECKPOINT_SUFFIXES:
        return "pytorch"
    known = ", ".join([*BY_SUFFIX, *CHECKPOINT_SUFFIXES])
    raise EdgeCNNError(f"{path}: unknown model type '{suffix or path.name}'; bench takes {known} files")


def _precision(model_file: ModelFile) -> str:
    if not model_file.int8_ops:
        return "float32"
    return "mixed" if model_file.float_ops else "int8"


def resolve_input_shape(model_file: ModelFile, batch: int, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape to run: --input-shape, else the file's, with an open batch dimension set to `batch`."""
    if given is not None:
        return given
    shape = model_file.inputs[0]["shape"]
    open_dims = [i for i, d in enumerate(shape) if not isinstance(d, int) or d <= 0]
    if [i for i in open_dims if i != 0]:
        raise EdgeCNNError(f"{model_file.path}: input '{model_file.inputs[0]['name']}' has dynamic dimensions "
                           f"{shape}: give --input-shape, e.g. --input-shape 1,3,224,224")
    if not open_dims and shape[0] != batch and model_file.format == "onnx":
        raise EdgeCNNError(f"{model_file.path}: the model's batch is fixed at {shape[0]}; --batch-size {batch} needs a "
                           "model exported with a dynamic batch dimension")
    return (batch, *(int(d) for d in shape[1:]))


def file_variants(path: Path, options: BenchOptions) -> list[Variant]:
    # Refuses truncated, foreign or (with verify) corrupted files before any runtime sees them.
    model_file = read_model_file(path, verify=options.verify)
    shape = resolve_input_shape(model_file, options.batch_size, options.input_shape)
    macs = ((model_file.card or {}).get("source") or {}).get("macs") or file_macs(path)
    digest = hashlib.sha256(model_bytes(path)).hexdigest() if options.verify else None
    detect = (model_file.card or {}).get("detect") if task_of(model_file.card) == "detect" else None
    return [Variant(path, model_file.format, _precision(model_file), t, shape, path.name, macs=macs,
                    size_bytes=model_size(path), sha256=digest, note="; ".join(model_file.notes), backend=backend,
                    detect=detect)
            for backend in _engines(path, options.backends) for t in options.threads]


def _engines(path: Path, backends: tuple[str, ...]) -> list[str | None]:
    """The engines to run `path` in: each of `backends` that reads its format, or (none given) its own."""
    if not backends:
        return [None]
    usable = [b for b in backends if runs(b, path)]
    if not usable:
        raise EdgeCNNError(f"{path}: none of the backends given ({', '.join(backends)}) runs {path.suffix} files")
    for backend in usable:
        engine_for(path, backend)  # a missing package is one line now, not a failed row later
    return usable


def file_macs(path: Path) -> int | None:
    """MACs per image counted from the file's conv and dense layers, for files without an edgecnn card."""
    from edgecnn.runtime.layers import file_layers

    try:
        return sum(layer.macs for layer in file_layers(path)) or None
    except Exception:  # an op this counter does not know: MACs stay unknown, the benchmark goes on
        return None


def checkpoint_variants(path: Path, options: BenchOptions, device: str) -> list[Variant]:
    from edgecnn.checkpoint import load_checkpoint
    from edgecnn.summary import complexity

    ckpt = load_checkpoint(path)
    size = ckpt.preprocess.img_size
    model = ckpt.build()
    common = {"name": path.name, "runner": "edgecnn.bench.torch_runner", "pre": ckpt.preprocess,
              "macs": complexity(model, size).macs,
              "size_bytes": sum(t.numel() * t.element_size() for t in ckpt.state_dict.values()),
              # decoded here, not in the runner: a PyTorch row times the network alone
              "detect": model.card_section("boxes", "scores") if ckpt.task == "detect" else None}
    if device == "cuda":
        batches = sorted({1, options.batch_size if options.batch_size > 1 else GPU_THROUGHPUT_BATCH})
        return [Variant(path, "pytorch", precision, 1, (b, 3, size, size), torch={"device": "cuda",
                        "channels_last": True}, **common) for precision in ("float32", "float16") for b in batches]
    return [Variant(path, "pytorch", "float32", t, (options.batch_size, 3, size, size),
                    torch={"device": "cpu", "channels_last": False}, **common) for t in options.threads]


def variants_for(paths: list[Path], options: BenchOptions, device: str) -> list[Variant]:
    variants = []
    for path in paths:
        if not path.is_file():
            raise EdgeCNNError(f"model file not found: {path}")
        kind = model_kind(path)
        if kind == "pytorch":
            if device not in ("cpu", "cuda"):
                raise EdgeCNNError(f"{path}: a PyTorch checkpoint runs on --device cpu or cuda; export it to "
                                   f".tflite/.onnx to run it on {device}")
            variants += checkpoint_variants(path, options, device)
        else:
            if device == "cuda":
                raise EdgeCNNError(f"{path}: --device cuda runs PyTorch checkpoints; .tflite/.onnx files run on CPUs")
            variants += file_variants(path, options)
    return variants


def job_for(variant: Variant, options: BenchOptions) -> dict:
    return {"model": str(variant.model), "threads": variant.threads, "warmup": options.warmup, "runs": options.runs,
            "min_seconds": options.min_seconds, "input_shape": list(variant.input_shape),
            "inputs": str(variant.inputs) if variant.inputs else None, "profile": options.profile,
            "precision": variant.precision, "sha256": variant.sha256, "backend": variant.backend,
            "detect": variant.detect if variant.format != "pytorch" else None, **variant.torch}


def row_from_results(variant: Variant, results: list[dict], device: str) -> BenchRow:
    """One row from the results of every round of a variant (samples pooled; load/first-run: their median)."""
    ok = [r for r in results if r.get("ok")]
    row = BenchRow(variant.name, variant.format, variant.precision, "", device, variant.threads,
                   variant.input_shape[0], path=str(variant.model), macs=variant.macs, size_bytes=variant.size_bytes,
                   task=variant.task)
    if len(ok) < len(results):
        row.status = "failed: " + next(r["error"] for r in results if not r.get("ok"))
        return row
    if all("latencies_ms" in r for r in ok):
        stats = vars(LatencyStats.from_samples([t for r in ok for t in r["latencies_ms"]]))
    else:  # a tool that reports only its own summary (benchmark_model): the first round's
        stats = ok[0]["stats"]
    for name, value in stats.items():
        setattr(row, name, value)
    row.backend = ok[0]["backend"]
    row.load_ms = _median([r.get("load_ms") for r in ok])
    row.decode_ms = _median([t for r in ok for t in r.get("decode_ms", [])])
    row.first_ms = _median([r.get("first_ms") for r in ok])
    row.peak_rss_mb = max((r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb") is not None), default=None)
    typical = row.median_ms or row.mean_ms
    row.throughput_ips = row.batch * 1000.0 / typical if typical else None
    row.profile = ok[0].get("profile")
    row.note = "; ".join(filter(None, [variant.note, ok[0].get("profile_note"), ok[0].get("gpu")]))
    return row


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def _reference_index(variants: list[Variant], options: BenchOptions) -> int | None:
    """Which variant is the float reference for agreement: --reference, else the first PyTorch checkpoint,
    else the first float model."""
    if options.reference is not None:
        matches = [i for i, v in enumerate(variants) if v.model.resolve() == options.reference.resolve()]
        return matches[0] if matches else None
    for wanted in ("pytorch", None):
        for i, v in enumerate(variants):
            if (v.format == wanted) if wanted else v.precision == "float32":
                return i
    return None


def mark_fastest(rows: list[BenchRow]) -> None:
    """The lowest median among the rows that ran, per (device, threads, batch)."""
    groups: dict[tuple, list[BenchRow]] = {}
    for row in rows:
        if row.status == "ok" and row.median_ms is not None:
            groups.setdefault((row.device, row.threads, row.batch), []).append(row)
    for group in groups.values():
        if len(group) > 1:
            min(group, key=lambda r: r.median_ms).fastest = True


TIMING_FIELDS = ("median_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "load_ms", "first_ms",
                 "throughput_ips", "peak_rss_mb")


def mark_emulated(rows: list[BenchRow], target, compared: bool) -> None:
    """Emulated time is not latency: no timing field survives, and the note says what the row does show."""
    for row in rows:
        for name in TIMING_FIELDS:
            setattr(row, name, None)
        row.note = f"{target.name}: emulated, functional only (times are not latency); " + (
            "agree / max |diff|: against the same file on this x86 host" if compared
            else "give --dataset or --images to compare its answers with x86")
        if row.format == "onnx" and row.precision != "float32":
            row.note += "; int8 ONNX: x86's AVX2 U8S8 kernels round differently, the Arm result is the reference"


def _outputs(results: dict[int, list[dict]]) -> dict[int, list[np.ndarray]]:
    return {i: [decode_array(o) for o in r[0]["outputs"]] for i, r in results.items() if r and r[0].get("outputs")}


def _measure(variants: list[Variant], options: BenchOptions, target, console) -> dict[int, list[dict]]:
    results: dict[int, list[dict]] = {i: [] for i in range(len(variants))}
    with target:
        for round_index in range(options.rounds):
            for i, variant in enumerate(variants):
                if console is not None:
                    console.print(f"[dim]round {round_index + 1}/{options.rounds} on {target.name}: {variant.name} "
                                  f"{variant.precision} threads={variant.threads} batch={variant.input_shape[0]}"
                                  f"[/dim]")
                job = job_for(variant, options)
                job["want_outputs"] = round_index == 0  # later rounds only time
                if round_index and variant.detect is None:  # a detector times real inputs every round
                    job["inputs"] = None
                results[i].append(target.run(variant, job))
    return results


def benchmark(paths: list[Path], options: BenchOptions, target, console=None) -> tuple[list[BenchRow], dict]:
    """Measure every model at every thread count on `target`; returns (rows, the target machine's info).

    On an emulated target each model runs once, on the emulated CPU and on this host, and the rows say how
    the two agree instead of how fast either was."""
    emulated = getattr(target, "emulated", False)
    if emulated:
        options = replace(options, runs=1, warmup=0, min_seconds=0.0, rounds=1, profile=False)
    if options.reference is not None and options.reference.resolve() not in {p.resolve() for p in paths}:
        paths = [*paths, options.reference]
    variants = variants_for(paths, options, target.device_kind)
    with tempfile.TemporaryDirectory(prefix="edgecnn-bench-") as folder:
        held_out = None
        if options.dataset and options.images:
            raise EdgeCNNError("give --dataset (labelled) or --images (unlabelled), not both")
        if options.dataset or options.images:
            held_out = (held_out_images(options.dataset, options.eval_samples) if options.dataset
                        else folder_held_out(options.images, options.eval_samples))
            check_tasks(variants, held_out)
            variants = [replace(v, inputs=prepare_inputs(v, held_out, Path(folder))) for v in variants]
        results = _measure(variants, options, target, console)
        host_results = None
        if emulated and held_out is not None:
            from edgecnn.bench.targets import LocalTarget

            host_results = _measure(variants, options, LocalTarget(), console)
    rows = [row_from_results(v, results[i], target.name) for i, v in enumerate(variants)]
    if held_out is not None:
        outputs = _outputs(results)
        if host_results is not None:
            references, reference_variants = _outputs(host_results), dict(enumerate(variants))
        else:
            ref = _reference_index(variants, options)
            references = {i: outputs[ref] for i in outputs} if ref in outputs else {}
            reference_variants = {i: variants[ref] for i in references}
        score(rows, variants, outputs, held_out, references, reference_variants)
    machine = next((r["machine"] for rs in results.values() for r in rs if "machine" in r), {})
    if emulated:
        machine = target.guest_machine(machine)
        mark_emulated(rows, target, compared=held_out is not None)
    else:
        mark_fastest(rows)
        profile = measured_profile(machine) if target.device_kind != "cuda" else None
        if profile is not None:
            set_efficiency(rows, profile)
            machine["peak"] = profile.describe()
    return rows, machine


def set_efficiency(rows: list[BenchRow], profile: DeviceProfile | None) -> None:
    for row in rows:
        macs = row.macs * row.batch if row.macs else None
        row.efficiency = efficiency(macs, row.median_ms, row.precision, row.threads, profile)


def estimate_rows(rows: list[BenchRow], profiles: list[DeviceProfile]) -> list[BenchRow]:
    """Estimated latency of each measured model file on each profile, at the rows' thread counts."""
    estimates = []
    seen = set()
    for row in rows:
        if row.format == "pytorch" or row.status != "ok" or not row.macs:
            continue
        for profile in profiles:
            threads = min(row.threads, profile.cores)
            key = (row.path, threads, row.batch, profile.name)
            if key in seen:
                continue
            seen.add(key)
            ms = profile.estimate_ms(row.macs * row.batch, row.precision, threads)
            if ms is None:
                continue
            estimates.append(BenchRow(row.model, row.format, row.precision, "estimate", profile.name, threads,
                                      row.batch, status="estimated", estimated_ms=ms, size_bytes=row.size_bytes,
                                      macs=row.macs, path=row.path,
                                      task=row.task,
                                      note=f"{profile.name} estimate (not measured): MACs ÷ calibrated efficiency"
                                           f"{' of the network (decoding + NMS not in it)' * (row.task == 'detect')}; "
                                           f"{profile.basis()}"))
    return estimates
