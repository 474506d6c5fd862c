import gzip
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_clean_error, edgecnn
from edgecnn.data import FASHION_MNIST_DIRS, load_dataset, parse_dataset
from edgecnn.errors import EdgeCNNError
from edgecnn.loader import make_loader, normalise_batch
from edgecnn.preprocess import Preprocess, resize_image


def test_digits_split_is_deterministic_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 359
    assert np.array_equal(a.test.labels, b.test.labels) and np.array_equal(a.test.array, b.test.array)
    counts = np.bincount(a.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37
    assert a.train.array.dtype == np.uint8 and a.train.array.max() == 255


needs_fashion = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIRS[0]).is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)


@needs_fashion
def test_fashion_mnist_from_debian_idx_files():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.train.array.shape == (60000, 28, 28) and ds.classes[9] == "Ankle boot"
    assert np.bincount(ds.test.labels).tolist() == [1000] * 10


@needs_fashion
def test_fashion_mnist_from_a_given_folder(tmp_path):
    """A user's own copy: uncompressed idx files in a folder of their choice."""
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        with gzip.open(Path(FASHION_MNIST_DIRS[0]) / f"{stem}.gz") as f:
            (tmp_path / stem).write_bytes(f.read())
    ds = load_dataset(f"fashion-mnist:{tmp_path}")
    reference = load_dataset("fashion-mnist")
    assert np.array_equal(ds.test.array[:100], reference.test.array[:100])


def test_fashion_mnist_bad_folder(tmp_path):
    with pytest.raises(EdgeCNNError, match="no idx files"):
        load_dataset(f"fashion-mnist:{tmp_path}")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"garbage")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(EdgeCNNError, match="cannot read idx file"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def _make_folder(root: Path, classes=("cat", "dog", "owl"), per_class=10, size=(20, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_imagefolder_seeded_split(tmp_path):
    _make_folder(tmp_path)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.classes == ["cat", "dog", "owl"]
    assert (len(ds.train), len(ds.test)) == (24, 6)
    again = load_dataset(f"imagefolder:{tmp_path}")
    assert ds.test.paths == again.test.paths
    assert ds.train.image(0).shape == (20, 30, 3)


def test_imagefolder_train_val_layout(tmp_path):
    _make_folder(tmp_path / "train", per_class=4)
    _make_folder(tmp_path / "val", per_class=2)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert (len(ds.train), len(ds.test)) == (12, 6)
    assert all("val" in p.parts for p in ds.test.paths)


def test_imagefolder_bad_inputs(tmp_path):
    with pytest.raises(EdgeCNNError, match="at least two class subfolders"):
        (tmp_path / "only").mkdir()
        (tmp_path / "only" / "x.png").write_bytes(b"")
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(EdgeCNNError, match="not a folder"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(EdgeCNNError, match="imagefolder needs a folder"):
        parse_dataset("imagefolder")


def test_unreadable_image_is_named(tmp_path):
    _make_folder(tmp_path, per_class=3)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    result = edgecnn("train", "--model", "tinycnn", "--dataset", f"imagefolder:{tmp_path}", "--epochs", "1",
                     "--img-size", "16", "--out", tmp_path / "o")
    assert_clean_error(result, "broken.jpg")


def test_grayscale_becomes_three_channels_at_model_size():
    ds = load_dataset("digits")
    pre = Preprocess(img_size=24, mean=(0.5,) * 3, std=(0.25,) * 3)
    images, labels = next(iter(make_loader(ds.test, pre, 8, train=False)))
    assert images.shape == (8, 24, 24, 3) and images.dtype == torch.uint8
    assert torch.equal(images[..., 0], images[..., 2])
    x = normalise_batch(images, pre, torch.device("cpu"))
    assert x.shape == (8, 3, 24, 24)
    expected = (images[0, 0, 0, 0].item() / 255 - 0.5) / 0.25
    assert x[0, 1, 0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_resize_image_crop_and_colour_order():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 2] = 255  # red in RGB
    image[:, :50] = 0  # a black band that a centre crop removes
    pre = Preprocess(img_size=10, crop=0.5)
    out = resize_image(image, pre, color="RGB")
    assert out.shape == (10, 10, 3) and (out[:, :, 2] == 255).all()
    bgr = resize_image(image, pre, color="BGR")
    assert (bgr[:, :, 0] == 255).all()
    stretched = resize_image(image, Preprocess(img_size=10))
    assert stretched[:, 0, 2].max() == 0


def test_augmentation_is_reproducible_per_epoch():
    ds = load_dataset("digits")
    pre = Preprocess(img_size=16)
    loader = make_loader(ds.train, pre, 4, train=True, augment=("flip", "crop"), seed=3)
    from edgecnn.loader import set_epoch

    set_epoch(loader, 1, 3)
    first = next(iter(loader))[0]
    set_epoch(loader, 1, 3)
    assert torch.equal(first, next(iter(loader))[0])
    set_epoch(loader, 2, 3)
    assert not torch.equal(first, next(iter(loader))[0])


def _online(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online("www.cs.toronto.edu"), reason="network is up: this would download CIFAR-10 (170 MB)")
def test_cifar10_offline_says_how_to_fix(tmp_path):
    with pytest.raises(EdgeCNNError, match=r"cifar10: download .* failed .* pass cifar10:DIR"):
        load_dataset(f"cifar10:{tmp_path}")
