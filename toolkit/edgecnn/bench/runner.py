"""One measurement, in its own process: load a .tflite/.onnx model, time it, optionally run labelled inputs
and profile it, and print one JSON result line.

    python -m edgecnn.bench.runner JOB.json        # here
    python3 edgecnn-runner.pyz JOB.json           # on a device: the bundle carries this file and the backends

The parent fixes the thread count and input shape; this process only measures. Numpy, the standard library,
and ai-edge-litert or onnxruntime are all it needs: no torch, no OpenCV, no edgecnn install on the device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgecnn.errors import shorten

RESULT_PREFIX = "EDGECNN-RESULT "
MAX_RUNS = 100_000


@dataclass
class LatencyStats:
    """Summary of per-run latencies in milliseconds."""

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> LatencyStats:
        t = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(t)), p90_ms=float(np.percentile(t, 90)), p99_ms=float(np.percentile(t, 99)),
            mean_ms=float(t.mean()), std_ms=float(t.std(ddof=1)) if len(t) > 1 else 0.0, min_ms=float(t.min()),
            max_ms=float(t.max()), runs=len(t),
        )


def time_runs(run: Callable[[], object], warmup: int, runs: int, min_seconds: float) -> tuple[float, list[float]]:
    """(first-run ms, per-run ms of the timed runs): `warmup` untimed runs after the first, then at least
    `runs` runs and at least `min_seconds` of them."""
    start = time.perf_counter()
    run()
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(warmup):
        run()
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < runs or (time.perf_counter() - began < min_seconds and len(samples) < MAX_RUNS):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return first_ms, samples


def timing_result(backend: str, load_ms: float, first_ms: float, samples: list[float], shape, dtype: str) -> dict:
    """The part of a result every runner reports; the harness pools `latencies_ms` over rounds into its stats."""
    return {"backend": backend, "load_ms": load_ms, "first_ms": first_ms, "latencies_ms": samples,
            "input": {"shape": list(shape), "dtype": dtype}}


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    child of a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def random_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def run_samples(backend, samples: np.ndarray, batch: int, which: list[int]) -> list[np.ndarray]:
    """Float outputs `which` (indices into the model's outputs) of every prepared sample, `batch` at a time (the
    model's fixed batch size)."""
    chunks = []
    for start in range(0, len(samples), batch):
        x = samples[start : start + batch]
        short = batch - len(x)
        if short:  # a fixed-batch model gets the last partial batch padded, and the padding dropped
            x = np.concatenate([x, np.repeat(x[-1:], short, axis=0)])
        raw = backend.run(x)
        chunks.append([backend.outputs[i].dequantize(raw[i])[: batch - short] for i in which])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


class DecodedRun:
    """A detector's timed run: inference, then decoding and NMS of every sample in the batch, as a camera script
    pays for them; the decoding's own share is kept apart (`decode_ms`)."""

    def __init__(self, backend, settings: dict):
        from edgecnn.runtime.decoding import Decoding, find_box_and_score_outputs

        try:
            import cv2  # noqa: F401  (NMS; checked before timing, not on the first decode)
        except ImportError:
            raise RuntimeError("a detector's decoding and NMS need OpenCV on the device: "
                               "pip install opencv-python-headless there") from None
        self.backend, self.decoding = backend, Decoding.from_card(settings)
        self.which = list(find_box_and_score_outputs(backend.outputs, settings["outputs"],
                                                     len(self.decoding.coding.anchors)))
        self.decode_ms: list[float] = []

    def __call__(self, x: np.ndarray) -> None:
        raw = self.backend.run(x)
        start = time.perf_counter()
        boxes, scores = (self.backend.outputs[i].dequantize(raw[i]) for i in self.which)
        for sample_boxes, sample_scores in zip(boxes, scores, strict=True):
            self.decoding(sample_boxes, sample_scores)
        self.decode_ms.append((time.perf_counter() - start) * 1000)


def onnx_profile(path: str, threads: int, x: np.ndarray, runs: int, top: int) -> list[dict]:
    """Mean time per run of the slowest ONNX nodes, from onnxruntime's own profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, "profile")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    return summarise_onnx_profile(events, top)


def summarise_onnx_profile(events: list[dict], top: int) -> list[dict]:
    """The `top` nodes by mean time per run, from onnxruntime trace events ('<node>_kernel_time', cat 'Node').
    The first run allocates buffers: its events are left out."""
    run_ends = sorted(e["ts"] + e.get("dur", 0) for e in events if e.get("name") == "model_run")
    after = run_ends[0] if len(run_ends) > 1 else -1
    runs = max(1, len(run_ends) - 1)
    per_node: dict[str, dict] = {}
    total = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < after:
            continue
        node = e["name"].removesuffix("_kernel_time")
        entry = per_node.setdefault(node, {"node": node, "op": e.get("args", {}).get("op_name", "?"), "us": 0.0})
        entry["us"] += float(e.get("dur", 0))
        total += float(e.get("dur", 0))
    rows = sorted(per_node.values(), key=lambda r: -r["us"])[:top]
    return [{"node": r["node"], "op": r["op"], "mean_ms": r["us"] / runs / 1000,
             "share": r["us"] / total if total else 0.0} for r in rows]


def check_copy(path: str, expected: str) -> None:
    """The file about to be loaded is byte for byte the one the harness verified (a copy to a device, or a disk
    between the two, can corrupt it)."""
    from edgecnn.runtime.formats import model_bytes

    actual = hashlib.sha256(model_bytes(path)).hexdigest()
    if actual != expected:
        raise RuntimeError(f"{os.path.basename(path)} is corrupted on this device: sha256 {actual[:12]}… differs "
                           f"from the verified file's {expected[:12]}…")


def execute(job: dict) -> dict:
    """Run one measurement job (built by `edgecnn.bench.harness.job_for`) and return its result."""
    from edgecnn.runtime.backends import load_backend

    shape = tuple(job["input_shape"])
    if job.get("sha256"):
        check_copy(job["model"], job["sha256"])
    started = time.perf_counter()
    backend = load_backend(job["model"], job["threads"], shape, job.get("backend"))
    load_ms = (time.perf_counter() - started) * 1000
    x = random_input(shape, backend.input.dtype, job.get("seed", 0))
    samples = np.load(job["inputs"]) if job.get("inputs") else None
    decoded = DecodedRun(backend, job["detect"]) if job.get("detect") else None
    if decoded is not None and samples is not None:
        x = np.resize(samples, shape).astype(backend.input.dtype)  # real frames: NMS sees a real number of boxes
    run = (lambda: decoded(x)) if decoded is not None else (lambda: backend.run(x))
    first_ms, times = time_runs(run, job["warmup"], job["runs"], job["min_seconds"])
    result = timing_result(backend.name, load_ms, first_ms, times, shape, backend.input.dtype.name)
    if decoded is not None:
        result["decode_ms"] = decoded.decode_ms[-len(times):]
    if samples is not None and job.get("want_outputs", True):
        which = decoded.which if decoded is not None else list(range(len(backend.outputs)))
        result["outputs"] = [encode_array(o) for o in run_samples(backend, samples, shape[0], which)]
    if job.get("profile"):
        if backend.name == "onnxruntime":
            result["profile"] = onnx_profile(job["model"], job["threads"], x, job.get("profile_runs", 20), 15)
        else:
            result["profile_note"] = ("the TFLite Python runtime has no per-op profiler: use --device adb (TFLite's "
                                      "benchmark_model --enable_op_profiling) for op timings")
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "float32_b64": base64.b64encode(a.tobytes()).decode()}


def decode_array(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["float32_b64"]), dtype=np.float32).reshape(d["shape"])


def main(argv: list[str] | None = None, execute_job: Callable[[dict], dict] = execute) -> int:
    """Read the job file named on the command line, run it, print the result line; errors are results too."""
    from edgecnn.bench.machine import machine_info

    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        job = json.load(f)
    try:
        result = {"ok": True, **execute_job(job)}
    except Exception as e:  # reported to the parent as one line; the parent decides how to show it
        text = str(e).strip()
        result = {"ok": False, "error": f"{shorten(text) if text else type(e).__name__}"}
    result["machine"] = machine_info()
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
