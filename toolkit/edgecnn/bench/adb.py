"""Phone-class devices over adb: push the .tflite and TensorFlow Lite's own `benchmark_model` binary, run it
pinned to the chosen cores (`taskset MASK`), and turn its log into the harness's result dict.

Untested on hardware here (no phone attached to this machine): the parser is tested on output in the format
benchmark_model prints (tensorflow/lite/tools/benchmark, `Stat::OutputToStream` and the op-profiling tables).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path

from edgecnn.bench.machine import cpu_description
from edgecnn.errors import EdgeCNNError, shorten

DEVICE_DIR = "/data/local/tmp/edgecnn"
STAT_LINE = re.compile(r"count=(?P<count>\d+)\s+first=(?P<first>\d+)\s+curr=\d+\s+min=(?P<min>\d+)\s+"
                       r"max=(?P<max>\d+)\s+avg=(?P<avg>[\d.e+-]+)\s+std=(?P<std>\d+)"
                       r"(?:\s+p5=\d+\s+median=(?P<median>\d+)\s+p95=(?P<p95>\d+))?")
TIMINGS_LINE = re.compile(r"Inference timings in us: Init: (?P<init>[\d.e+-]+), "
                          r"First inference: (?P<first>[\d.e+-]+)")
PEAK_MEMORY = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<mb>[\d.]+)")
MEMORY_DELTA = re.compile(r"Memory footprint delta from the start of the tool \(MB\): "
                          r"init=[\d.]+ overall=(?P<mb>[\d.]+)")


def _op_rows(log: str, top: int) -> list[dict]:
    """The 'Top by Computation Time' table of the regular runs (tab-separated columns)."""
    section = log.split("Operator-wise Profiling Info for Regular Benchmark Runs:", 1)
    if len(section) < 2 or "Top by Computation Time" not in section[1]:
        return []
    table = section[1].split("Top by Computation Time", 1)[1].split("Number of nodes executed", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("\t") if c.strip()]
        if len(cells) < 7 or cells[0].startswith("["):
            continue
        try:
            avg_ms, share = float(cells[-6]), float(cells[-5].rstrip("%")) / 100
        except ValueError:
            continue
        rows.append({"op": cells[0], "node": cells[-1], "mean_ms": avg_ms, "share": share})
    return rows[:top]


def parse_benchmark_model(log: str) -> dict:
    """benchmark_model's log → a runner result: the regular runs' stats (its last stat line), init and first
    inference times, memory; per-op rows when it ran with --enable_op_profiling."""
    stats = list(STAT_LINE.finditer(log))
    if not stats:
        last = shorten((log.strip().splitlines() or ["no output"])[-1], 200)
        return {"ok": False, "error": f"benchmark_model printed no timings: {last}"}
    s = stats[-1]  # the first stat line is the warm-up runs
    us = 1000.0
    median = s["median"] and int(s["median"]) / us
    result = {
        "ok": True, "backend": "benchmark_model",
        "stats": {"median_ms": median, "p90_ms": None, "p99_ms": None, "mean_ms": float(s["avg"]) / us,
                  "std_ms": int(s["std"]) / us, "min_ms": int(s["min"]) / us, "max_ms": int(s["max"]) / us,
                  "runs": int(s["count"])},
        "first_ms": int(s["first"]) / us, "load_ms": None, "peak_rss_mb": None,
    }
    if timings := TIMINGS_LINE.search(log):
        result["load_ms"] = float(timings["init"]) / us
        result["first_ms"] = float(timings["first"]) / us
    if memory := PEAK_MEMORY.search(log) or MEMORY_DELTA.search(log):
        result["peak_rss_mb"] = float(memory["mb"])
    if profile := _op_rows(log, 15):
        result["profile"] = profile
    notes = ["benchmark_model reports mean/std/min/max" + (" and median" if median else "") + ", not p90/p99"]
    result["profile_note"] = "; ".join(notes)
    return result


class ADBTarget:
    """An Android device (or any adb-reachable board) running TensorFlow Lite's benchmark_model."""

    device_kind = "adb"

    def __init__(self, spec: str, benchmark_model: Path | None, cores: str | None = None, timeout: float = 900):
        serial = spec.partition(":")[2]
        self.name = spec
        self.prefix = ["adb", *(["-s", serial] if serial else [])]
        if benchmark_model is None or not benchmark_model.is_file():
            raise EdgeCNNError("--device adb needs --benchmark-model PATH: TensorFlow Lite's benchmark_model built "
                               "for the device (see tensorflow/lite/tools/benchmark)")
        if cores is not None and not re.fullmatch(r"[0-9a-fA-F]+", cores):
            raise EdgeCNNError(f"--cores {cores}: expected a hexadecimal CPU mask such as f0 (cores 4-7)")
        self.benchmark_model, self.cores, self.timeout = benchmark_model, cores, timeout

    def adb(self, *args: str) -> str:
        try:
            done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise EdgeCNNError("adb is not installed (Android platform-tools)") from None
        except subprocess.TimeoutExpired:
            raise EdgeCNNError(f"{self.name}: adb gave no answer within {self.timeout:.0f} s") from None
        if done.returncode != 0:
            raise EdgeCNNError(f"{self.name}: adb {args[0]} failed: {shorten(done.stderr or done.stdout, 200)}")
        return done.stdout + done.stderr

    def __enter__(self) -> ADBTarget:
        self.adb("shell", "mkdir", "-p", DEVICE_DIR)
        self.adb("push", str(self.benchmark_model), f"{DEVICE_DIR}/benchmark_model")
        self.adb("shell", "chmod", "755", f"{DEVICE_DIR}/benchmark_model")
        self.machine = self._machine()
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(EdgeCNNError):
            self.adb("shell", "rm", "-rf", DEVICE_DIR)

    def _machine(self) -> dict:
        info = cpu_description(self.adb("shell", "cat", "/proc/cpuinfo"))
        info["board"] = self.adb("shell", "getprop", "ro.product.model").strip()
        return info

    def run(self, variant, job: dict) -> dict:
        if variant.format != "tflite":
            return {"ok": False, "error": "the adb target runs .tflite files (TensorFlow Lite's benchmark_model)"}
        remote = f"{DEVICE_DIR}/{variant.model.name}"
        command = [f"{DEVICE_DIR}/benchmark_model", f"--graph={remote}", f"--num_threads={variant.threads}",
                   f"--num_runs={job['runs']}", f"--warmup_runs={job['warmup']}",
                   f"--min_secs={job['min_seconds']}", "--report_peak_memory_footprint=true"]
        if job.get("profile"):
            command.append("--enable_op_profiling=true")
        if self.cores:
            command = ["taskset", self.cores, *command]
        try:  # one failed push or run is a failed row, not a lost table
            self.adb("push", str(variant.model), remote)
            result = parse_benchmark_model(self.adb("shell", shlex.join(command)))
        except EdgeCNNError as e:
            return {"ok": False, "error": str(e)}
        result["machine"] = self.machine
        return result
