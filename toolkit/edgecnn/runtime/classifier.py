"""Image classification: a camera frame in, a label out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecnn.errors import EdgeCNNError
from edgecnn.preprocess import Preprocess
from edgecnn.runtime.backends import Backend, TensorSpec
from edgecnn.runtime.model import Model, resolve_labels
from edgecnn.runtime.modelfile import ModelFile


@dataclass
class Prediction:
    index: int
    label: str
    score: float
    topk: list[tuple[str, float]]


def classes_of(outputs: list[TensorSpec]) -> int:
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        shapes = ", ".join(str(o.shape) for o in outputs)
        raise EdgeCNNError(f"model outputs {shapes}: a classifier outputs one (batch, classes) tensor")
    return outputs[0].shape[-1]


class Classifier(Model):
    task = "classify"

    @classmethod
    def from_file(cls, model_file: ModelFile, backend: Backend, pre: Preprocess,
                  labels: list[str] | None) -> Classifier:
        return cls(backend, pre, resolve_labels(model_file, classes_of(backend.outputs), labels))

    def logits(self, samples: np.ndarray) -> np.ndarray:
        """Prepared samples (N, ...) → float logits (N, classes), dequantized where the output is int8."""
        return self.raw_outputs(samples)[0]

    def predict_batch(self, frames: list[np.ndarray], color: str = "BGR", k: int = 5) -> list[Prediction]:
        if not len(frames):
            return []
        logits = self.logits(np.stack([self.prepare(f, color) for f in frames]))
        return [self._prediction(row, k) for row in logits]

    def predict(self, frame: np.ndarray, color: str = "BGR", k: int = 5) -> Prediction:
        return self.predict_prepared(self.prepare(frame, color), k)

    def predict_prepared(self, sample: np.ndarray, k: int = 5) -> Prediction:
        """Classify one sample from `prepare` (which may run elsewhere, e.g. on a capture thread)."""
        return self._prediction(self.logits(sample[None])[0], k)

    def _prediction(self, logits: np.ndarray, k: int) -> Prediction:
        e = np.exp(logits - logits.max())
        probs = e / e.sum()
        k = min(k, len(probs))
        top = np.argpartition(-probs, k - 1)[:k]
        order = top[np.argsort(-probs[top])]
        best = int(order[0])
        topk = [(self.labels[i], float(probs[i])) for i in order]
        return Prediction(best, self.labels[best], float(probs[best]), topk)
