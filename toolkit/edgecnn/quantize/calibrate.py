"""`--calibration auto`: build the artefact with each way of choosing activation ranges, run it in its own runtime
on the calibration images (never on the verification images), keep the one that agrees best with the float
model there, and report them all.

Scored on the real artefact, not on a PyTorch simulation: on the real MobileNetV2 the PT2E fake-quantized graph
and the converted .tflite disagree on the top-1 of about a fifth of the photos, so a simulated ranking would
pick ranges for a model nobody runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from edgecnn.errors import EdgeCNNError, closest
from edgecnn.quantize.ranges import METHODS

SEARCH = "search"  # a method per tensor, by the output error it causes (edgecnn.quantize.search)
CHOICES = ("auto", *METHODS, SEARCH)


@dataclass
class Candidate:
    method: str
    agreement: float | None = None  # top-1 agreement with the float model on the calibration images
    output_mse: float | None = None  # mean squared (dequantized) logit error there: breaks ties
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.method


@dataclass
class Choice:
    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    samples: int = 0

    def report(self) -> dict:
        how = (f"top-1 agreement with the float model on the {self.samples} calibration images, then the smallest "
               "logit error" if len(self.candidates) > 1 else "asked for")
        return {"method": self.chosen.method, "chosen_by": how,
                "candidates": [asdict(c) for c in self.candidates]}


def parse_calibration(text: str) -> str:
    name = text.strip().lower()
    if name not in CHOICES:
        raise EdgeCNNError(f"unknown calibration '{text}'{closest(name, CHOICES)}; choose from {', '.join(CHOICES)}")
    return name


def candidates(request: str) -> list[Candidate]:
    return [Candidate(m) for m in (METHODS if request == "auto" else (request,))]


def choose(trials: list[Candidate], logits_with: Callable[[Candidate], np.ndarray], reference: np.ndarray,
           report: Callable[[str], None] | None = None) -> Choice:
    """Score each candidate's artefact (`logits_with` builds it and returns its logits on the calibration
    images) against the float `reference` logits; a single candidate is taken without building it twice."""
    if len(trials) == 1 and trials[0].agreement is None:
        return Choice(trials[0], trials, len(reference))
    for candidate in (c for c in trials if c.agreement is None):
        started = time.perf_counter()
        logits = logits_with(candidate)
        candidate.agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        candidate.output_mse = float(((logits - reference) ** 2).mean())
        candidate.seconds = round(time.perf_counter() - started, 2)
        if report:
            report(f"    {candidate.name}: agreement {candidate.agreement:.2%} on the calibration images, "
                   f"logit MSE {candidate.output_mse:.4g}")
    best = max(trials, key=lambda c: (c.agreement, -c.output_mse))
    return Choice(best, trials, len(reference))
