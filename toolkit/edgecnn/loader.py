"""The torch side of the data: a DataLoader over an `ImageList` and normalisation of uint8 batches.

Kept apart from `edgecnn.data` so that reading datasets needs no torch (the benchmark harness and the runtime
read them on machines without it).
"""

from __future__ import annotations

import numpy as np
import torch

from edgecnn.data import ImageList
from edgecnn.preprocess import Preprocess, resize_image


class TorchImages(torch.utils.data.Dataset):
    """Serves (uint8 H×W×3 image at the model's size, label); normalisation happens on the batch."""

    def __init__(self, images: ImageList, pre: Preprocess, augment: tuple[str, ...] = (), seed: int = 0):
        self.images, self.pre, self.augment, self.seed = images, pre, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        image = resize_image(self.images.image(i), self.pre)
        if self.augment:
            # Seeded by (seed, epoch, index): identical across DataLoader workers and after a resume.
            image = _augment(image, self.augment, np.random.default_rng((self.seed, self.epoch, i)))
        return image, int(self.images.labels[i])


def _augment(image: np.ndarray, ops: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    if "flip" in ops and rng.random() < 0.5:
        image = image[:, ::-1]
    if "crop" in ops:
        pad = max(1, image.shape[0] // 8)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        y, x = rng.integers(0, 2 * pad + 1, size=2)
        image = padded[y : y + image.shape[0], x : x + image.shape[1]]
    return np.ascontiguousarray(image)


def make_loader(
    images: ImageList,
    pre: Preprocess,
    batch_size: int,
    *,
    train: bool,
    augment: tuple[str, ...] = (),
    seed: int = 0,
    workers: int = 0,
    sampler: torch.utils.data.Sampler | None = None,
) -> torch.utils.data.DataLoader:
    dataset = TorchImages(images, pre, augment if train else (), seed)
    shuffle = train and sampler is None
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=workers,
        drop_last=False,
        persistent_workers=False,
    )


def set_epoch(loader: torch.utils.data.DataLoader, epoch: int, seed: int) -> None:
    """Make shuffling and augmentation of `epoch` reproducible, so a resumed run sees the same batches."""
    loader.dataset.epoch = epoch
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 1000 + epoch)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def normalise_batch(images: torch.Tensor, pre: Preprocess, device: torch.device) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W on `device`, scaled and normalised as `pre` says."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std
