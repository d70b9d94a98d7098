"""Labelled image datasets available offline: Fashion-MNIST (Debian) and sklearn digits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpsynth.data.idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not installed, with how to install it."""


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # (n, H, W) or (n, H, W, C) uint8
    labels: np.ndarray  # (n,) int64
    class_names: tuple[str, ...]
    dataset_id: str


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the Debian package "
        "('apt-get install dataset-fashion-mnist') or point DPSYNTH_FASHION_MNIST_DIR / "
        "root= at a folder holding the IDX files.")


def check_fashion_mnist(split: str = "train", root: str | Path | None = None
                        ) -> tuple[int, ...]:
    """The image shape of a Fashion-MNIST split, from the IDX headers only (no record is
    read): files present, images and labels of the same length, sizes consistent."""
    from dpsynth.data.idx import read_idx_header

    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root or os.environ.get("DPSYNTH_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    _, image_shape = read_idx_header(_find(root, _FILES[split][0]))
    _, label_shape = read_idx_header(_find(root, _FILES[split][1]))
    if len(image_shape) != 3 or len(label_shape) != 1 or image_shape[0] != label_shape[0]:
        raise ValueError(f"{root}: Fashion-MNIST {split} files do not fit together "
                         f"(images {image_shape}, labels {label_shape})")
    return image_shape[1:]


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> LabelledImages:
    """Fashion-MNIST ``split`` ("train": 60k, "test": 10k) from the IDX files."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root or os.environ.get("DPSYNTH_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    images = read_idx(_find(root, _FILES[split][0]))
    labels = read_idx(_find(root, _FILES[split][1])).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return LabelledImages(images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist/{split}")


def load_digits_images() -> LabelledImages:
    """scikit-learn's bundled 8x8 digits (1,797 images), scaled to uint8 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return LabelledImages(images, d.target.astype(np.int64),
                          tuple(str(i) for i in range(10)), "sklearn-digits")
