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


def decode_image(file: Any, image_size: int, color: str, where: str) -> np.ndarray | str:
    """One image file (a path or a binary file object) as uint8, converted to ``color``
    and resized to ``image_size`` squared (bicubic); or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img = img.convert("L" if color == "gray" else "RGB").resize(
                (image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"cannot read image {where}: {exc}"


def keep_readable(decoded: list[np.ndarray | str], wheres: list[str], labels: np.ndarray,
                  image_size: int, color: str, on_bad_image: str, skipped: list[str]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stack the images that decoded. An unreadable one stops the read (``"fail"``) or is
    left out, warned about and appended to ``skipped`` (``"skip"``)."""
    import warnings

    keep = []
    for i, x in enumerate(decoded):
        if not isinstance(x, str):
            keep.append(i)
        elif on_bad_image == "fail":
            raise ValueError(x + " (set data.on_bad_image: skip to leave such files out)")
        else:
            warnings.warn(f"skipped: {x}", stacklevel=3)
            skipped.append(wheres[i])
    shape = (0, image_size, image_size) + (() if color == "gray" else (3,))
    images = np.stack([decoded[i] for i in keep]) if keep else np.empty(shape, np.uint8)
    return images, labels[keep]


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
    (bicubic); both are public preprocessing. Files are decoded by ``workers`` threads
    (PIL releases the GIL while decoding). A file that cannot be decoded is an error naming
    it (``on_bad_image="fail"``), or is left out, reported by a warning and listed in
    :attr:`skipped` (``"skip"``); never silently dropped.
    """

    def __init__(self, root: str | Path, image_size: int, color: str = "rgb",
                 class_names: list[str] | None = None, dataset_id: str | None = None,
                 on_bad_image: str = "fail", workers: int = 4) -> None:
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.workers = workers
        self.skipped: list[str] = []
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
        from concurrent.futures import ThreadPoolExecutor

        paths = self.files[start:stop]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            decoded = list(pool.map(
                lambda path: decode_image(path, self.image_size, self.color, str(path)),
                paths))
        return keep_readable(decoded, [str(p) for p in paths], self.labels[start:stop],
                             self.image_size, self.color, self.on_bad_image, self.skipped)

    def fingerprint(self) -> dict[str, Any]:
        listing = "\n".join(f"{p.relative_to(self.root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                            for p in self.files)
        return {"root": str(self.root.resolve()), "image_size": self.image_size,
                "color": self.color, "class_names": list(self.class_names),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()[:16]}


class WebDatasetSource(ImageSource):
    """WebDataset tar shards (``"/data/train-{000000..000099}.tar"``, brace-expanded as in
    webdataset): samples are files sharing a key, an image (``.png``/``.jpg``/...) and an
    integer label (``.cls``). Uncompressed tars are indexed once (member offsets), so a
    slice of rows reads only its members: encoding resumes and fans out by row ranges,
    which webdataset's streaming reader does not offer, so only its naming conventions and
    brace expansion (``braceexpand``) are used. Unreadable images follow ``on_bad_image`` like
    :class:`ImageFolderSource`; a sample without a label or an image is an error.
    """

    def __init__(self, urls: str, image_size: int, class_names: list[str], color: str = "rgb",
                 dataset_id: str | None = None, on_bad_image: str = "fail") -> None:
        import tarfile

        from braceexpand import braceexpand

        if not class_names:
            raise ValueError("a WebDataset source needs data.class_names (labels are ints)")
        self.paths = [Path(p) for p in braceexpand(str(urls))]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"WebDataset shards not found: {missing[:5]}")
        self.image_size, self.color = int(image_size), color
        self.class_names = tuple(class_names)
        self.dataset_id = dataset_id or f"webdataset:{urls}"
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self.samples: list[tuple[int, tarfile.TarInfo]] = []
        labels = []
        for shard, path in enumerate(self.paths):
            with tarfile.open(path, "r:") as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in tar.getmembers():
                    if m.isfile():
                        key, _, ext = m.name.partition(".")
                        members.setdefault(key, {})[ext.lower()] = m
                for key in sorted(members):
                    parts = members[key]
                    image = next((parts[e] for e in ("png", "jpg", "jpeg", "webp", "bmp")
                                  if e in parts), None)
                    if image is None or "cls" not in parts:
                        raise ValueError(f"{path}: sample {key!r} needs an image and a .cls "
                                         f"label, has {sorted(parts)}")
                    label = int(tar.extractfile(parts["cls"]).read().decode().strip())
                    if not 0 <= label < len(class_names):
                        raise ValueError(f"{path}: sample {key!r} has label {label}, outside "
                                         f"the {len(class_names)} class_names")
                    self.samples.append((shard, image))
                    labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        import contextlib
        import io
        import tarfile

        rows = range(start, min(stop, len(self.samples)))
        decoded, wheres, handles = [], [], {}
        with contextlib.ExitStack() as stack:
            for row in rows:
                shard, member = self.samples[row]
                if shard not in handles:
                    handles[shard] = stack.enter_context(tarfile.open(self.paths[shard], "r:"))
                where = f"{self.paths[shard]}:{member.name}"
                data = handles[shard].extractfile(member).read()
                decoded.append(decode_image(io.BytesIO(data), self.image_size, self.color,
                                            where))
                wheres.append(where)
        return keep_readable(decoded, wheres, self.labels[rows.start:rows.stop],
                             self.image_size, self.color, self.on_bad_image, self.skipped)

    def fingerprint(self) -> dict[str, Any]:
        return {"shards": [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                           for p in self.paths], "image_size": self.image_size,
                "color": self.color, "class_names": list(self.class_names)}


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
    if data_config.source == "webdataset":
        urls = data_config.train_urls if split == "train" else data_config.test_urls
        source = WebDatasetSource(urls, data_config.image_size, data_config.class_names,
                                  data_config.color,
                                  dataset_id=f"{data_config.ledger_id()}/{split}",
                                  on_bad_image=data_config.on_bad_image)
        if limit is not None and limit < len(source):
            source.samples, source.labels = source.samples[:limit], source.labels[:limit]
        return source
    root = data_config.train_dir if split == "train" else data_config.test_dir
    # Test folders use the training class list so that label i means the same class.
    names = data_config.class_names or (
        None if split == "train" else list(ImageFolderSource(
            data_config.train_dir, data_config.image_size).class_names))
    source = ImageFolderSource(root, data_config.image_size, data_config.color, names,
                               dataset_id=f"{data_config.ledger_id()}/{split}",
                               on_bad_image=data_config.on_bad_image,
                               workers=data_config.workers)
    if limit is not None and limit < len(source):
        source.files, source.labels = source.files[:limit], source.labels[:limit]
    return source
