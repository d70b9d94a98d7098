"""Image sources: where a split's labelled images come from, read a slice at a time.

A source knows its dataset id, its public class list and its length, and reads rows
``[start, stop)`` as uint8 images with integer labels. Encoding reads one shard's slice at a
time, so an image folder larger than RAM is never loaded whole.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.data.datasets import LabelledImages, load_digits_images, load_fashion_mnist

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Public, fixed split of the digits set (it ships without one): every fifth record after a
#: seeded permutation is test. The seed is a constant, never learned from the data.
DIGITS_SPLIT_SEED = 0


class ImageSource(ABC):
    dataset_id: str
    class_names: tuple[str, ...]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 (n, H, W[, C]), labels int64 (n,)) for rows [start, stop)."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """What identifies the content (for the embedding cache key); cheap to compute."""

    @property
    def classes(self) -> list[int]:
        return list(range(len(self.class_names)))


class ArraySource(ImageSource):
    """A split held in memory (the small built-in datasets)."""

    def __init__(self, data: LabelledImages, fingerprint: dict[str, Any]) -> None:
        self.data = data
        self.dataset_id = data.dataset_id
        self.class_names = data.class_names
        self._fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.data.labels)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.data.images[start:stop], self.data.labels[start:stop]

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)


def _limited(data: LabelledImages, limit: int | None) -> LabelledImages:
    if limit is None or limit >= len(data.labels):
        return data
    return LabelledImages(data.images[:limit], data.labels[:limit], data.class_names,
                          data.dataset_id)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class ImageFolderSource(ImageSource):
    """``root/<class name>/<image>``: one folder per class, in ``class_names`` order.

    Images are converted to ``color`` and resized to ``image_size`` squared with PIL
    (bicubic); both are public preprocessing. A file that cannot be decoded is an error
    naming the file (a silently skipped record would be a surprise in a private dataset).
    """

    def __init__(self, root: str | Path, image_size: int, color: str = "rgb",
                 class_names: list[str] | None = None, dataset_id: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        names = list(class_names) if class_names else found
        if not names:
            raise ValueError(f"image folder {self.root} has no class sub-folders "
                             "(expected root/<class name>/<image files>)")
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise ValueError(f"image folder {self.root} has folders {unknown} that are not in "
                             f"class_names {names}")
        files, labels = [], []
        for label, name in enumerate(names):
            folder = self.root / name
            members = sorted(p for p in folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            files += members
            labels += [label] * len(members)
        if not files:
            raise ValueError(f"image folder {self.root} holds no images with suffixes "
                             f"{', '.join(IMAGE_SUFFIXES)}")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = int(image_size)
        self.color = color
        self.class_names = tuple(names)
        self.dataset_id = dataset_id or f"image-folder:{self.root.resolve()}"

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        mode = "L" if self.color == "gray" else "RGB"
        out = []
        for path in self.files[start:stop]:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode).resize((self.image_size, self.image_size),
                                                   Image.Resampling.BICUBIC)
                    out.append(np.asarray(img, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"cannot read image {path}: {exc}") from None
        return np.stack(out), self.labels[start:stop]

    def fingerprint(self) -> dict[str, Any]:
        listing = "\n".join(f"{p.relative_to(self.root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                            for p in self.files)
        return {"root": str(self.root.resolve()), "image_size": self.image_size,
                "color": self.color, "class_names": list(self.class_names),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()[:16]}


def make_source(data_config, split: str) -> ImageSource:
    """The source for ``split`` ("train": private, "test": held out) of a DataConfig."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    limit = data_config.limit if split == "train" else None
    if data_config.source == "fashion-mnist":
        data = _limited(load_fashion_mnist(split, data_config.root), limit)
        return ArraySource(data, {"dataset": data.dataset_id, "rows": len(data.labels),
                                  "sha256": _digest(data.images, data.labels)})
    if data_config.source == "digits":
        full = load_digits_images()
        order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(full.labels))
        rows = np.sort(order[::5] if split == "test" else np.delete(order, np.s_[::5]))
        data = _limited(LabelledImages(full.images[rows], full.labels[rows],
                                       full.class_names, f"sklearn-digits/{split}"), limit)
        return ArraySource(data, {"dataset": data.dataset_id, "rows": len(data.labels),
                                  "sha256": _digest(data.images, data.labels)})
    root = data_config.train_dir if split == "train" else data_config.test_dir
    # Test folders use the training class list so that label i means the same class.
    names = data_config.class_names or (
        None if split == "train" else list(ImageFolderSource(
            data_config.train_dir, data_config.image_size).class_names))
    source = ImageFolderSource(root, data_config.image_size, data_config.color, names,
                               dataset_id=f"{data_config.ledger_id()}/{split}")
    if limit is not None and limit < len(source):
        source.files, source.labels = source.files[:limit], source.labels[:limit]
    return source
