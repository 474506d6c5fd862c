"""Datasets: digits (bundled), fashion-mnist (local idx files), cifar10, and imagefolder:PATH.

Every dataset comes out as two `ImageList`s (train and a held-out test split) of uint8 images plus class
names. Splits are deterministic: they depend on the data only, never on the training seed, so a checkpoint's
"test" split is the same set of images wherever it is evaluated.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgecnn.errors import EdgeCNNError, closest, printable
from edgecnn.preprocess import IMAGENET_MEAN, IMAGENET_STD

DATASET_NAMES = ("digits", "fashion-mnist", "cifar10", "imagefolder")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Per-dataset normalisation: statistics of the training split, grey ones repeated over RGB.
NORMALISATION = {
    "digits": ((0.304,) * 3, (0.376,) * 3),
    "fashion-mnist": ((0.286,) * 3, (0.353,) * 3),
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "imagefolder": (IMAGENET_MEAN, IMAGENET_STD),
}
AUGMENTATIONS = ("flip", "crop")
SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass
class ImageList:
    """Labelled images held in memory (N×H×W[×C] uint8) or as files read on demand."""

    labels: np.ndarray
    array: np.ndarray | None = None
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        if self.array is not None:
            return self.array[i]
        return read_image(self.paths[i])

    def subset(self, indices: np.ndarray) -> ImageList:
        return ImageList(
            labels=self.labels[indices],
            array=None if self.array is None else self.array[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
        )


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train: ImageList
    test: ImageList

    def split(self, name: str) -> ImageList:
        if name not in ("train", "test"):
            raise EdgeCNNError(f"unknown split '{name}': use 'train' or 'test'")
        return self.train if name == "train" else self.test


def read_image(path: Path) -> np.ndarray:
    """An RGB (or grey) uint8 image from disk; a file OpenCV cannot decode is a clear error.

    Python reads the bytes and OpenCV only decodes them: OpenCV 5's imread crashes the process on a file name
    that is not valid UTF-8 (common on files from Windows shares and cameras)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise EdgeCNNError(f"cannot read image {printable(path)}: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise EdgeCNNError(f"cannot read image {printable(path)}: not an image file or unreadable")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def read_labels(path: str | Path) -> list[str]:
    try:
        labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeCNNError(f"cannot read labels file {path}: {e}") from None
    if not labels:
        raise EdgeCNNError(f"labels file {path} is empty: one class name per line expected")
    return labels


def image_files(folder: Path, what: str) -> list[Path]:
    """Every image file under `folder`, recursively, sorted; `what` names the folder in errors."""
    if not folder.is_dir():
        raise EdgeCNNError(f"{what} {folder}: not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise EdgeCNNError(f"{what} {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def sample_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """A seeded random subset of range(n) of size `limit` (all of it when limit is None or ≥ n), sorted."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def parse_dataset(spec: str) -> tuple[str, str | None]:
    """'fashion-mnist:/data/fm' → ('fashion-mnist', '/data/fm'); unknown names get a close-match hint."""
    name, _, path = spec.partition(":")
    if name not in DATASET_NAMES:
        raise EdgeCNNError(
            f"unknown dataset '{spec}'{closest(name, DATASET_NAMES)}; "
            "choose digits, fashion-mnist[:DIR], cifar10[:DIR] or imagefolder:DIR"
        )
    if name == "imagefolder" and not path:
        raise EdgeCNNError("imagefolder needs a folder: imagefolder:PATH (one subfolder per class)")
    if name == "digits" and path:
        raise EdgeCNNError("digits is bundled with scikit-learn and takes no path")
    return name, os.path.expanduser(path) if path else None


def default_normalisation(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return NORMALISATION[parse_dataset(spec)[0]]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECNN_DATA", Path.home() / ".cache" / "edgecnn" / "datasets"))


def load_dataset(spec: str) -> Dataset:
    name, path = parse_dataset(spec)
    loader = {
        "digits": lambda: _digits(),
        "fashion-mnist": lambda: _fashion_mnist(path),
        "cifar10": lambda: _cifar10(path),
        "imagefolder": lambda: _imagefolder(Path(path)),
    }[name]
    return loader()


@contextmanager
def recorded_dataset(given: str | None) -> Iterator[None]:
    """Around loading a checkpoint's dataset (`given` is --dataset): when the recorded one is gone (moved, another
    machine), the error says where it came from and how to give another."""
    try:
        yield
    except EdgeCNNError as e:
        if given:
            raise
        raise EdgeCNNError(f"{e} (the dataset recorded in the checkpoint: give --dataset to use another)") from None


def resolved_dataset(spec: str) -> str:
    """`spec` with its folder made absolute ('imagefolder:~/photos' → 'imagefolder:/home/me/photos'), as it is
    stored in checkpoints: eval and export then work from any directory."""
    name, path = parse_dataset(spec)
    return f"{name}:{Path(path).resolve()}" if path else name


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(len(idx) * TEST_FRACTION)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    everything = ImageList(labels=bunch.target.astype(np.int64), array=images)
    train, test = _stratified_split(everything.labels)
    return Dataset("digits", [str(d) for d in range(10)], everything.subset(train), everything.subset(test))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not a uint8 idx file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise EdgeCNNError(f"cannot read idx file {path}: {e}") from None


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist(path: str | None) -> Dataset:
    folders = [Path(path)] if path else [Path(d) for d in FASHION_MNIST_DIRS] + [cache_dir() / "fashion-mnist"]
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    for folder in folders:
        files = {split: [_find_idx(folder, s) for s in pair] for split, pair in stems.items()}
        if all(f is not None for pair in files.values() for f in pair):
            splits = {
                split: ImageList(labels=_read_idx(lbl).astype(np.int64), array=_read_idx(img))
                for split, (img, lbl) in files.items()
            }
            return Dataset("fashion-mnist", FASHION_MNIST_CLASSES, splits["train"], splits["test"])
    if path:
        raise EdgeCNNError(f"fashion-mnist: no idx files (train-images-idx3-ubyte[.gz], ...) in {path}")
    return _download_torchvision("FashionMNIST", "fashion-mnist", cache_dir() / "fashion-mnist")


def _cifar10(path: str | None) -> Dataset:
    return _download_torchvision("CIFAR10", "cifar10", Path(path) if path else cache_dir() / "cifar10")


def _download_torchvision(cls_name: str, name: str, root: Path) -> Dataset:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        splits = [cls(str(root), train=train, download=True) for train in (True, False)]
    except Exception as e:  # torchvision raises URLError, RuntimeError, ... when offline
        hint = " (or install Debian's dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise EdgeCNNError(f"{name}: download to {root} failed ({e}); pass {name}:DIR with the files{hint}") from None
    lists = [
        ImageList(labels=np.asarray(ds.targets, dtype=np.int64), array=np.asarray(ds.data, dtype=np.uint8))
        for ds in splits
    ]
    return Dataset(name, list(splits[0].classes), lists[0], lists[1])


def _class_folders(root: Path) -> list[Path]:
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise EdgeCNNError(f"imagefolder: cannot read {root}: {e.strerror or e}") from None


def _scan(root: Path, classes: list[str]) -> ImageList:
    paths, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(label)
    return ImageList(labels=np.asarray(labels, dtype=np.int64), paths=paths)


def _imagefolder(root: Path) -> Dataset:
    """One subfolder per class (or train/ + val|test/ each with them), checked once up front: every problem is
    listed before any training starts, not the first bad file mid-epoch."""
    if not root.is_dir():
        raise EdgeCNNError(f"imagefolder: {root} is not a folder")
    held_out = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    problems = []
    if (root / "train").is_dir() and held_out is not None:
        classes = [p.name for p in _class_folders(root / "train")]
        train, test = _scan(root / "train", classes), _scan(held_out, classes)
        problems += [f"class '{printable(p.name)}' is in {held_out.name}/ but not in train/"
                     for p in _class_folders(held_out) if p.name not in classes]
    else:
        classes = [p.name for p in _class_folders(root)]
        train, test = _scan(root, classes), None  # split below, once the files are known to be good
    if len(classes) < 2:
        raise EdgeCNNError(f"imagefolder: {root} needs at least two class subfolders, found {len(classes)}")
    counts = np.bincount(train.labels, minlength=len(classes))
    problems += [f"class '{printable(name)}' has no images" for name, n in zip(classes, counts, strict=True) if not n]
    files = train.paths + (test.paths if test else [])
    problems += [problem for p in files if (problem := _image_file_problem(p))]
    if problems:
        shown = "; ".join(sorted(problems)[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise EdgeCNNError(f"imagefolder {root}: {len(problems)} problem(s): {shown}")
    if test is None:
        train_idx, test_idx = _stratified_split(train.labels)
        train, test = train.subset(train_idx), train.subset(test_idx)
    if len(test) == 0:
        raise EdgeCNNError(f"imagefolder: no held-out images under {root}: add images (or a val/ folder)")
    return Dataset(f"imagefolder:{root}", classes, train, test)


# The first bytes of the formats in IMAGE_SUFFIXES: a cheap check of every file before training reads them.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"P5", b"P6", b"P2", b"P3")


def _image_file_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        return f"{printable(path)}: unreadable ({e.strerror or e})"
    if not head:
        return f"{printable(path)}: empty file"
    if not head.startswith(IMAGE_SIGNATURES) or (head.startswith(b"RIFF") and head[8:12] != b"WEBP"):
        return f"{printable(path)}: not an image file"
    return None
