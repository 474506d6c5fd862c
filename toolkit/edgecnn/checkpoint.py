"""edgecnn checkpoints: a plain state_dict plus what export and the runtime need to know about the model.

Only tensors, numbers, strings, lists and dicts are stored, so `torch.load(weights_only=True)` can read a
checkpoint without running code from the file. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn import __version__
from edgecnn.atomic import atomic_path
from edgecnn.errors import EdgeCNNError
from edgecnn.models import DETECTORS
from edgecnn.preprocess import Preprocess

if TYPE_CHECKING:  # torch is imported where a checkpoint is read, written or built: a missing file fails at once
    import torch
    from torch import nn

FORMAT = "edgecnn-checkpoint/1"


@dataclass
class Checkpoint:
    model: str
    num_classes: int
    labels: list[str]
    preprocess: Preprocess
    dataset: str
    state_dict: dict[str, torch.Tensor]
    width: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    # Present in last.pt only: optimizer state, epoch, step, best top-1 and history, for --resume.
    training: dict[str, Any] | None = None
    recipe_hash: str | None = None
    # Layer shapes (edgecnn.prune.layer_shapes) for pruned models; None for the registry's own shapes.
    structure: dict[str, list[int]] | None = None
    val_dataset: str | None = None  # a detector's held-out dataset (a classifier's dataset has its own split)

    @property
    def task(self) -> str:
        return "detect" if self.model in DETECTORS else "classify"

    def build(self) -> nn.Module:
        """The model with this checkpoint's weights (and pruned shapes), in eval mode."""
        from edgecnn.models.build import build_model
        from edgecnn.models.ssdlite import build_detector

        if self.task == "detect":
            model = build_detector(self.model, self.num_classes, self.width, self.preprocess.img_size)[0]
        else:
            model = build_model(self.model, self.num_classes, self.width)
        if self.structure:
            from edgecnn.prune import apply_layer_shapes

            apply_layer_shapes(model, self.structure)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            detail = " ".join(line.strip() for line in str(e).splitlines()[1:2])
            raise EdgeCNNError(f"checkpoint weights do not fit model '{self.model}': {detail}") from None
        return model.eval()


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    import torch

    payload = {
        "format": FORMAT,
        "edgecnn_version": __version__,
        "model": ckpt.model,
        "width": ckpt.width,
        "num_classes": ckpt.num_classes,
        "labels": list(ckpt.labels),
        "preprocess": ckpt.preprocess.to_dict(),
        "dataset": ckpt.dataset,
        "metrics": dict(ckpt.metrics),
        "recipe_hash": ckpt.recipe_hash,
        "state_dict": {k: v.detach().cpu() for k, v in ckpt.state_dict.items()},
        "training": ckpt.training,
        "structure": ckpt.structure,
        "val_dataset": ckpt.val_dataset,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def is_checkpoint_path(target: str | Path) -> bool:
    """Whether a MODEL argument names a checkpoint file (else a registry model): a .pt/.pth name or any existing
    path."""
    path = Path(target)
    return path.suffix.lower() in (".pt", ".pth") or path.exists()


def existing_checkpoint(path: str | Path) -> Path:
    """`path` if it is a file; checked before torch is imported, so a wrong path fails at once."""
    path = Path(path)
    if not path.is_file():
        raise EdgeCNNError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = existing_checkpoint(path)
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeCNNError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file ({first[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise EdgeCNNError(
            f"{path} is not an edgecnn checkpoint; a plain state_dict goes in with --model NAME --weights {path}"
        )
    try:
        return Checkpoint(
            model=payload["model"],
            width=float(payload["width"]),
            num_classes=int(payload["num_classes"]),
            labels=list(payload["labels"]),
            preprocess=Preprocess.from_dict(payload["preprocess"]),
            dataset=payload["dataset"],
            state_dict=payload["state_dict"],
            metrics=payload.get("metrics") or {},
            training=payload.get("training"),
            recipe_hash=payload.get("recipe_hash"),
            structure=payload.get("structure"),
            val_dataset=payload.get("val_dataset"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EdgeCNNError(f"checkpoint {path} is incomplete: missing or bad field {e}") from None
