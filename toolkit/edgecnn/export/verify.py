"""Checking an artefact instead of trusting it: load it in its runtime, list its ops, compare it with the
float PyTorch model on held-out images."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecnn.export.sources import Images
from edgecnn.preprocess import Preprocess
from edgecnn.runtime import load
from edgecnn.runtime.modelfile import ModelFile, read_model_file


@dataclass
class FloatReference:
    """The float PyTorch model's logits on the verification images, computed once per export."""

    logits: np.ndarray
    labels: np.ndarray | None

    @property
    def accuracy(self) -> float | None:
        return _accuracy(self.logits, self.labels)

    def head(self, n: int) -> FloatReference:
        return FloatReference(self.logits[:n], None if self.labels is None else self.labels[:n])


def float_reference(model: nn.Module, pre: Preprocess, images: Images, batch: int = 128) -> FloatReference:
    from edgecnn.loader import normalise_batch

    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = normalise_batch(torch.from_numpy(images.pixels[start : start + batch]), pre, torch.device("cpu"))
            outputs.append(model(x).float().numpy())
    return FloatReference(np.concatenate(outputs), images.labels)


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else float((logits.argmax(1) == labels).mean())


CONFIDENT = 0.5  # float top-1 probability above which a prediction is a clear answer worth keeping


@dataclass
class Verification:
    model_file: ModelFile
    accuracy: float | None
    agreement: float
    max_logit_error: float
    samples: int
    # Agreement on the images the float model is sure about (top-1 probability ≥ CONFIDENT): on ambiguous
    # photos two near-equal classes may swap places without either answer being wrong.
    confident_agreement: float | None
    confident_samples: int

    @property
    def float_ops(self) -> list[str]:
        return [f"{op.name} ({op.where})" for op in self.model_file.float_ops]


def artefact_logits(path: Path, images: Images, threads: int | None = None) -> np.ndarray:
    """The artefact's logits on `images`, which are already cropped and resized as the float reference saw them:
    running them through the full `prepare` would crop them a second time."""
    classifier = load(path, threads=threads)
    samples = np.stack([classifier.inputs.prepare_resized(p) for p in images.pixels])
    return classifier.logits(samples)


def compare(logits: np.ndarray, reference: FloatReference) -> tuple[float | None, float, float]:
    """(accuracy, top-1 agreement with the float model, max |logit difference|)."""
    agreement = float((logits.argmax(1) == reference.logits.argmax(1)).mean())
    return _accuracy(logits, reference.labels), agreement, float(np.abs(logits - reference.logits).max())


def confident(reference: FloatReference) -> np.ndarray:
    logits = reference.logits - reference.logits.max(1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.max(1) >= CONFIDENT


def verify(path: Path, images: Images, reference: FloatReference) -> Verification:
    """Run `path` in its runtime on `images` and compare with the float model's predictions."""
    model_file = read_model_file(path)
    logits = artefact_logits(path, images)
    accuracy, agreement, max_error = compare(logits, reference)
    sure = confident(reference)
    same = logits.argmax(1) == reference.logits.argmax(1)
    sure_agreement = float(same[sure].mean()) if sure.any() else None
    return Verification(model_file, accuracy, agreement, max_error, len(images), sure_agreement, int(sure.sum()))


def interleaved_latency_ms(paths: dict[str, Path], rounds: int = 5, runs: int = 20) -> dict[str, float]:
    """Single-thread median latency of each model, measured in turns (A B A B ...) so that a drifting machine
    biases none of them. A quick figure to compare variants; `edgecnn bench` is the full measurement."""
    backends = {name: load(path, threads=1).backend for name, path in paths.items()}
    samples = {name: np.zeros((1, *b.input.shape[1:]), b.input.dtype) for name, b in backends.items()}
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, backend in backends.items():
            backend.run(samples[name])  # warm caches after the other model ran
            for _ in range(runs):
                start = time.perf_counter()
                backend.run(samples[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}
