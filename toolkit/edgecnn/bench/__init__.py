"""Honest latency and accuracy per model, backend, thread count and device: `edgecnn bench`.

    from edgecnn.bench import BenchOptions, benchmark, make_target
    rows, machine = benchmark([Path("m_int8.tflite")], BenchOptions(threads=(1, 4), dataset="digits"),
                              make_target("cpu"))

Every measurement runs in a fresh process (`runner.py`, which also travels to ssh devices inside a small
zip bundle); `harness.py` turns its samples into rows; `report.py` prints and writes them.
"""

from edgecnn.bench.harness import BenchOptions, BenchRow, benchmark
from edgecnn.bench.runner import LatencyStats
from edgecnn.bench.targets import make_target

__all__ = ["BenchOptions", "BenchRow", "LatencyStats", "benchmark", "make_target"]
