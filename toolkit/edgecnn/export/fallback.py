"""Accuracy-aware fallback: keep the fewest, most quantization-sensitive layers in float until the accuracy
drop fits the budget (what NNCF's accuracy control does).

Each format supplies `rank` (layer names ordered from most to least sensitive, measured on a subset of the
verification images) and `build` (write an int8 artefact with the given layers kept in float and return its
measured drop). The fewest layers are found by bisection over the ranked list: the drop is taken to shrink as
more of the most sensitive layers stay in float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class FallbackResult:
    float_layers: list[str]
    drop: float  # accuracy points lost with those layers in float
    tried: int  # artefacts built while searching


def fewest_float_layers(
    ranked: list[str], build: Callable[[list[str]], float], budget: float
) -> FallbackResult | None:
    """Smallest k such that keeping ranked[:k] in float gives a drop ≤ budget; None if even all do not."""
    tried = 0
    best: FallbackResult | None = None
    low, high = 1, len(ranked)
    while low <= high:
        k = (low + high) // 2
        drop = build(ranked[:k])
        tried += 1
        if drop <= budget:
            best = FallbackResult(ranked[:k], drop, tried)
            high = k - 1
        else:
            low = k + 1
    if best is not None:
        best.tried = tried
    return best
