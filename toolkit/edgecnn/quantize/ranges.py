"""Activation ranges from a tensor's histogram: min/max, percentile, MSE-optimal clipping and entropy (KL).

Every method sees the same histogram of the same float values, so the choice of method is the only thing that
differs between candidates. Ranges are (low, high) in float; the quantizer turns them into scale and zero point.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

BINS = 2048
METHODS = ("minmax", "percentile", "mse", "entropy")
PERCENTILE = 99.99
LEVELS = 256  # int8 / uint8 activations
MIN_SPAN = 1e-3  # a (near-)constant tensor still gets a usable scale: degenerate ones break XNNPACK's prepare


@dataclass
class Histogram:
    """Counts of a tensor's values over [low, high] in BINS equal bins (its observed min and max)."""

    low: float
    high: float
    counts: np.ndarray

    @classmethod
    def empty(cls, low: float, high: float) -> Histogram:
        return cls(float(low), float(high), np.zeros(BINS, np.float64))

    def add(self, values: np.ndarray) -> None:
        # A (near-)constant tensor: bins narrower than float32 can tell apart; it is one value.
        span = self.high - self.low
        if np.isfinite(span) and span > 1e-5 * max(1.0, abs(self.low), abs(self.high)):
            # In float64: NumPy computes the bin edges in the values' type, and float32 edges collapse.
            self.counts += np.histogram(values.astype(np.float64, copy=False), BINS, (self.low, self.high))[0]
        else:
            self.counts[0] += values.size

    @property
    def centres(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


def quantization_mse(hist: Histogram, low: float, high: float, levels: int = LEVELS) -> float:
    """Expected squared error of quantizing the histogram's values to `levels` steps over [low, high]: clipping
    error outside, a uniform rounding error (step²/12) inside."""
    step = max(high - low, 1e-12) / (levels - 1)
    x = hist.centres
    clipped = np.clip(x, low, high)
    total = hist.counts.sum()
    inside = hist.counts[(x >= low) & (x <= high)].sum()
    return float(((x - clipped) ** 2 * hist.counts).sum() + inside * step**2 / 12) / max(total, 1)


def _percentile_range(hist: Histogram, percentile: float) -> tuple[float, float]:
    cdf = np.cumsum(hist.counts) / max(hist.counts.sum(), 1)
    tail = (100.0 - percentile) / 100.0
    x = hist.centres
    high = x[min(np.searchsorted(cdf, 1.0 - tail), BINS - 1)]
    low = x[np.searchsorted(cdf, tail)] if hist.low < 0 else hist.low
    return float(low), float(high)


def _mse_range(hist: Histogram) -> tuple[float, float]:
    """Shrink the observed range by a common factor; keep the one with the least expected error."""
    best, best_range = np.inf, (hist.low, hist.high)
    for alpha in np.linspace(0.05, 1.0, 96):
        candidate = (min(hist.low, 0.0) * alpha, hist.high * alpha) if hist.low < 0 else (hist.low, hist.high * alpha)
        error = quantization_mse(hist, *candidate)
        if error < best:
            best, best_range = error, candidate
    return best_range


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float((p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))).sum())


def _entropy_range(hist: Histogram) -> tuple[float, float]:
    """TensorRT's KL-divergence threshold on the magnitude histogram: the clip that keeps the distribution of the
    quantized values closest to the float one (128 levels a side; 256 for a tensor with no negative values)."""
    signed = hist.low < 0
    levels = 128 if signed else 256
    bins = BINS // 4  # coarser than the signed histogram: every magnitude bin gets several of its bins
    edges = np.linspace(0.0, max(-hist.low, hist.high), bins + 1)
    magnitude = np.histogram(np.abs(hist.centres), edges, weights=hist.counts)[0]
    best, threshold = np.inf, edges[-1]
    for i in range(levels, bins + 1, 4):
        kept = magnitude[:i]
        reference = kept.copy()
        reference[-1] += magnitude[i:].sum()
        # The i kept bins merged into `levels` levels (as np.array_split divides them), each level's mass spread
        # evenly over its non-empty bins.
        sizes = np.full(levels, i // levels)
        sizes[: i % levels] += 1
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        occupied = kept > 0
        means = np.add.reduceat(kept, starts) / np.maximum(np.add.reduceat(occupied, starts), 1)
        expanded = np.where(occupied, np.repeat(means, sizes), 0.0)
        divergence = _kl(reference / max(reference.sum(), 1e-12), expanded / max(expanded.sum(), 1e-12))
        if divergence < best:
            best, threshold = divergence, edges[i]
    return max(hist.low, -threshold), min(hist.high, threshold)


def activation_range(hist: Histogram, method: str) -> tuple[float, float]:
    """(low, high) for `method`; always contains 0 and spans at least MIN_SPAN."""
    if method == "minmax":
        low, high = hist.low, hist.high
    elif method == "percentile":
        low, high = _percentile_range(hist, PERCENTILE)
    elif method == "mse":
        low, high = _mse_range(hist)
    elif method == "entropy":
        low, high = _entropy_range(hist)
    else:
        raise ValueError(f"unknown range method {method!r}")
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low < MIN_SPAN:
        high = low + MIN_SPAN
    return low, high


def activation_ranges(histograms: dict[str, Histogram], method: str,
                      outputs: Collection[str] = ()) -> dict[str, tuple[float, float]]:
    """Every tensor's range by `method`, but min/max for the model's own `outputs`: a clipped output saturates, and
    saturated logits tie. On the real MobileNetV2 a photo the float model was 95 % sure of lost its top-1 in both
    formats when its top logit hit the clipped top of the range beside another class's."""
    return {name: activation_range(h, "minmax" if name in outputs else method) for name, h in histograms.items()}
