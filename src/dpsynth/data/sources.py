"""Image sources: where a split's labelled images come from, read a slice at a time.

A source knows its dataset id, its public class list and its length, and reads rows
``[start, stop)`` as uint8 images with integer labels. Encoding reads one shard's slice at a
time, so an image folder larger than RAM is never loaded whole.

Every source keeps the privacy model's unit honest: each private record contributes to
exactly one class, once. Class names are unique, a file reached by two paths (a symlink,
a hard link, a shard listed twice) is read once, and one that two classes would claim is
an error, never a silent second record (which would double what the guarantee allows).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.data.datasets import LabelledImages, load_digits_images, load_fashion_mnist

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Public, fixed split of the digits set (it ships without one): every fifth record after a
#: seeded permutation is test. The seed is a constant, never learned from the data.
DIGITS_SPLIT_SEED = 0


class DataSourceError(ValueError):
    """A data source that cannot be read as given (a bad folder, shard, label, class list
    or image), in one line naming the path or key, so the command line can print it as is."""


class DataNotFoundError(DataSourceError, FileNotFoundError):
    """A folder or shard that does not exist (also a FileNotFoundError, as it always was)."""


def class_name_problem(names: Sequence[str], *, folders: bool) -> str | None:
    """Why ``names`` cannot be a class list, or None.

    Names must be unique: a name listed twice would read its records under two labels.
    With ``folders`` (image folders, where a name is a sub-folder of the root) each must
    also be a plain folder name, so that it names exactly one folder inside the root: not
    empty, ``.`` or ``..``, not absolute, and without ``/``, ``\\`` or NUL (``../outside``
    and ``a/b`` are refused).
    """
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        return (f"class names must be unique, but {repeated} appear more than once (each "
                "record must belong to exactly one class)")
    if folders:
        bad = [n for n in names if not isinstance(n, str) or n in ("", ".", "..")
               or os.path.isabs(n) or any(c in n for c in ("/", "\\", "\0"))]
        if bad:
            return (f"class names must be plain folder names inside the image folder (not "
                    f"empty, '.', '..' or absolute, no '/', '\\' or NUL), got {bad}")
    return None


def _identity(path: str | Path) -> tuple[Any, ...]:
    """What makes two paths one file: device and inode, so symlinks, hard links and names
    that differ only in case on a case-insensitive disk all match; the real path for a
    path that cannot be stat'ed (a dangling link, reported later as an unreadable image)."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return (st.st_dev, st.st_ino)


def image_file_problem(path: str | Path) -> str | None:
    """Why the file at ``path`` must not be opened as an image, or None: only a regular
    file is (a FIFO would block the read for ever; a device or socket is no image). Checked
    with stat, which never opens the file."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: opening it says why
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a directory"
            if stat.S_ISDIR(mode) else "not a regular file")
    return f"cannot read {path}: it is {kind}, not a regular file; remove it"


def too_many_pixels(size: tuple[int, int] | None, where: str) -> str | None:
    """Why an image of ``size`` (from its header; None: PIL refused to open it) must not
    be decoded, or None: more pixels than PIL's ``Image.MAX_IMAGE_PIXELS`` is a possible
    decompression bomb."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if size is not None and not (limit and size[0] * size[1] > limit):
        return None
    pixels = "more pixels" if size is None else f"{size[0]} x {size[1]} pixels, more"
    return (f"cannot read image {where}: {pixels} than PIL's Image.MAX_IMAGE_PIXELS "
            f"({limit}), a possible decompression bomb")


def decode_image(file: Any, image_size: int, color: str, where: str) -> np.ndarray | str:
    """One image file (a path or a binary file object) as uint8, converted to ``color``
    and resized to ``image_size`` squared (bicubic); or the reason it cannot be read (a
    file that is not a regular one is never opened; an image with more pixels than
    ``Image.MAX_IMAGE_PIXELS`` is never decoded)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(file, str | Path) and (problem := image_file_problem(file)) is not None:
        return problem
    try:
        with Image.open(file) as img:
            if (bomb := too_many_pixels(img.size, where)) is not None:
                return bomb
            img = img.convert("L" if color == "gray" else "RGB").resize(
                (image_size, image_size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:  # over twice the limit: PIL refuses to open
        return too_many_pixels(None, where)
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
            raise DataSourceError(x + " (set data.on_bad_image: skip to leave such files "
                                  "out)")
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

    Every record belongs to exactly one class, once. Class names are unique plain folder
    names (see :func:`class_name_problem`). Each file is resolved to its real path and
    identified by device and inode: one file listed twice in a class (a symlink or hard
    link next to its target) is read once; one file under two classes, or two class
    folders that are one directory, is a :class:`DataSourceError` naming both classes.
    A symlink (class folder or file) whose real path leaves ``root`` is refused unless
    ``follow_symlinks_outside_root``; the rules above still hold then. :attr:`files` holds
    the real paths that are read, class by class in label order, sorted within a class.
    """

    #: The files a class folder's listing takes, and what the folder is called in errors
    #: (the text source's folders list ``.txt`` files under the same rules).
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    kind = "image folder"

    def __init__(self, root: str | Path, image_size: int, color: str = "rgb",
                 class_names: list[str] | None = None, dataset_id: str | None = None,
                 on_bad_image: str = "fail", workers: int = 4,
                 follow_symlinks_outside_root: bool = False) -> None:
        if on_bad_image not in ("fail", "skip"):
            raise DataSourceError(f"on_bad_image must be 'fail' or 'skip', got "
                                  f"{on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.workers = workers
        self._read_class_folders(root, class_names, follow_symlinks_outside_root,
                                 records="images", expected="<image files>")
        self.image_size = int(image_size)
        self.color = color
        self.dataset_id = dataset_id or f"image-folder:{self.root.resolve()}"

    def _read_class_folders(self, root: str | Path, class_names: list[str] | None,
                            follow_outside: bool, *, records: str, expected: str) -> None:
        """Set :attr:`root`, :attr:`files`, :attr:`labels` and :attr:`class_names` from
        ``root/<class name>/`` (files with :attr:`suffixes`), refusing what the class
        docstring says; ``records`` and ``expected`` word the errors."""
        self.skipped: list[str] = []
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"{self.kind} {self.root} does not exist")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        names = list(class_names) if class_names else found
        if not names:
            raise DataSourceError(f"{self.kind} {self.root} has no class sub-folders "
                                  f"(expected root/<class name>/{expected})")
        problem = class_name_problem(names, folders=True)
        if problem:
            raise DataSourceError(f"{self.kind} {self.root}: {problem}")
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise DataSourceError(f"{self.kind} {self.root} has folders {unknown} that are "
                                  f"not in class_names {names}")
        self._real_root = Path(os.path.realpath(self.root))
        files, labels = self._list(names, follow_outside)
        if not files:
            raise DataSourceError(f"{self.kind} {self.root} holds no {records} with "
                                  f"suffixes {', '.join(self.suffixes)} in its class folders")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(names)

    def _outside(self, real: Path) -> bool:
        return not real.is_relative_to(self._real_root)

    def _list(self, names: list[str], follow_outside: bool) -> tuple[list[Path], list[int]]:
        """The real paths of each class's images and their labels; see the class docstring
        for what is refused."""
        hint = "set data.follow_symlinks_outside_root: true to read it"
        folder_class: dict[tuple[Any, ...], str] = {}
        # file identity -> (class name, path as listed), to name both sides of a conflict
        file_class: dict[tuple[Any, ...], tuple[str, Path]] = {}
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(names):
            folder = self.root / name
            if not folder.is_dir():
                continue  # a listed class without a folder simply has no records
            real_folder = Path(os.path.realpath(folder))
            if self._outside(real_folder) and not follow_outside:
                raise DataSourceError(f"class folder {folder} is a symlink to {real_folder}, "
                                      f"outside the {self.kind} {self.root}; {hint}")
            fid = _identity(folder)
            if fid in folder_class:
                raise DataSourceError(
                    f"class folders {folder_class[fid]!r} and {name!r} of {self.kind} "
                    f"{self.root} are the same directory ({real_folder}): every record must "
                    "belong to exactly one class")
            folder_class[fid] = name
            members: dict[tuple[Any, ...], Path] = {}
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in self.suffixes:
                    continue
                if (not_regular := image_file_problem(path)) is not None:
                    # A FIFO named x.png would block the read for ever: never opened.
                    raise DataSourceError(not_regular)
                real = Path(os.path.realpath(path))
                if self._outside(real) and not follow_outside:
                    raise DataSourceError(f"{path} is a symlink to {real}, outside the "
                                          f"{self.kind} {self.root}; {hint}")
                fid = _identity(real)
                owner, listed = file_class.setdefault(fid, (name, path))
                if owner != name:
                    raise DataSourceError(
                        f"{real} is one file under two classes, {owner!r} (as {listed}) and "
                        f"{name!r} (as {path}): every record must belong to exactly one "
                        "class; remove one of them")
                members.setdefault(fid, real)  # a second path to one file: read it once
            chosen = sorted(members.values())
            files += chosen
            labels += [label] * len(chosen)
        return files, labels

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
        # Relative to the real root, so an ordinary folder keeps the key it had before
        # files were resolved (and its embedding cache); a file outside it by full path.
        listing = "\n".join(
            f"{p if self._outside(p) else p.relative_to(self._real_root)}:"
            f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.files)
        return {"root": str(self.root.resolve()), "image_size": self.image_size,
                "color": self.color, "class_names": list(self.class_names),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()[:16]}


def _open_shard(path: Path):
    """A WebDataset shard opened as an uncompressed tar, or a DataSourceError naming it."""
    import tarfile

    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise DataSourceError(f"WebDataset shard {path} is not a readable tar file: "
                              f"{exc}") from None


def _shard_members(tar, path: Path) -> list[Any]:
    """The members of an opened shard, refusing a truncated or damaged one: tarfile stops
    silently at a header it cannot read, so a shard cut short would lose its last samples
    without a word. Every member's data must lie inside the file and the archive must
    end with tar's end-of-archive block (zeros)."""
    import tarfile

    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataSourceError(f"WebDataset shard {path} is damaged: {exc}") from None
    size = os.fstat(tar.fileobj.fileno()).st_size
    short = next((m for m in members if m.offset_data + m.size > size), None)
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    if short is not None or len(end) < tarfile.BLOCKSIZE or end.strip(b"\0"):
        where = (f"member {short.name!r} ends past the end of the file" if short else
                 f"no end-of-archive block after {len(members)} members")
        raise DataSourceError(f"WebDataset shard {path} is truncated or damaged ({where}): "
                              "its remaining samples would be lost; write it again")
    return members


class WebDatasetSource(ImageSource):
    """WebDataset tar shards (``"/data/train-{000000..000099}.tar"``, brace-expanded as in
    webdataset): samples are files sharing a key, an image (``.png``/``.jpg``/...) and an
    integer label (``.cls``). Uncompressed tars are indexed once (member offsets), so a
    slice of rows reads only its members: encoding resumes and fans out by row ranges,
    which webdataset's streaming reader does not offer, so only its naming conventions and
    brace expansion (``braceexpand``) are used. Unreadable images follow ``on_bad_image`` like
    :class:`ImageFolderSource`; a sample without a label or an image is an error.

    Every record is read once (a :class:`DataSourceError` otherwise): shard paths that are
    one file (a shard listed twice, a symlink or hard link to another listed shard) and a
    sample key found in two shards are refused, naming both. Within a shard, two members
    with the same name (a tar can hold both, e.g. after ``tar -r``) are refused too, rather
    than silently keeping one of them: which one is the record is not clear.
    """

    def __init__(self, urls: str, image_size: int, class_names: list[str], color: str = "rgb",
                 dataset_id: str | None = None, on_bad_image: str = "fail") -> None:
        import tarfile

        from braceexpand import braceexpand

        if not class_names:
            raise DataSourceError("a WebDataset source needs data.class_names (labels are "
                                  "ints)")
        problem = class_name_problem(class_names, folders=False)
        if problem:
            raise DataSourceError(f"WebDataset {urls}: {problem}")
        self.paths = [Path(p) for p in braceexpand(str(urls))]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise DataNotFoundError(f"WebDataset shards not found: {missing[:5]}")
        seen: dict[tuple[Any, ...], Path] = {}
        for path in self.paths:
            first = seen.setdefault(_identity(path), path)
            if first is not path:
                raise DataSourceError(
                    f"WebDataset shards {first} and {path} are one file "
                    f"({os.path.realpath(path)}): its records would be read twice; list "
                    "each shard once")
        self.image_size, self.color = int(image_size), color
        self.class_names = tuple(class_names)
        self.dataset_id = dataset_id or f"webdataset:{urls}"
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []
        self.samples: list[tuple[int, tarfile.TarInfo]] = []
        labels = []
        key_shard: dict[str, Path] = {}  # sample key -> the shard that holds it
        for shard, path in enumerate(self.paths):
            with _open_shard(path) as tar:
                members: dict[str, dict[str, tarfile.TarInfo]] = {}
                for m in _shard_members(tar, path):
                    if m.isfile():
                        key, _, ext = m.name.partition(".")
                        parts = members.setdefault(key, {})
                        if ext.lower() in parts:
                            raise DataSourceError(
                                f"{path}: sample {key!r} has two members named "
                                f"{parts[ext.lower()].name!r} and {m.name!r}; each sample "
                                "must hold each part once")
                        parts[ext.lower()] = m
                for key in sorted(members):
                    other = key_shard.setdefault(key, path)
                    if other is not path:
                        raise DataSourceError(
                            f"sample {key!r} is in two shards, {other} and {path}: a "
                            "duplicate record; each record must be in exactly one shard")
                    parts = members[key]
                    image = next((parts[e] for e in ("png", "jpg", "jpeg", "webp", "bmp")
                                  if e in parts), None)
                    if image is None or "cls" not in parts:
                        raise DataSourceError(f"{path}: sample {key!r} needs an image and a "
                                              f".cls label, has {sorted(parts)}")
                    raw = tar.extractfile(parts["cls"]).read()
                    try:
                        label = int(raw.decode().strip())
                    except (UnicodeDecodeError, ValueError):
                        raise DataSourceError(f"{path}: sample {key!r} has label {raw[:20]!r}, "
                                              "not an integer") from None
                    if not 0 <= label < len(class_names):
                        raise DataSourceError(f"{path}: sample {key!r} has label {label}, "
                                              f"outside the {len(class_names)} class_names")
                    self.samples.append((shard, image))
                    labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def check_headers(self) -> None:
        """Open every sample image's header (format and size; PIL decodes no pixel until
        asked), so a member that is no image, or a decompression bomb, stops the run before
        the charge (:class:`DataSourceError` naming the shard and member)."""
        from PIL import Image, UnidentifiedImageError

        by_shard: dict[int, list[Any]] = {}
        for shard, member in self.samples:
            by_shard.setdefault(shard, []).append(member)
        for shard, members in by_shard.items():
            with _open_shard(self.paths[shard]) as tar:
                for member in members:
                    where = f"{self.paths[shard]}:{member.name}"
                    try:
                        with Image.open(tar.extractfile(member)) as img:
                            problem = too_many_pixels(img.size, where)
                    except Image.DecompressionBombError:
                        problem = too_many_pixels(None, where)
                    except (UnidentifiedImageError, OSError, ValueError) as exc:
                        problem = f"cannot read image {where}: {exc}"
                    if problem:
                        raise DataSourceError(problem + " (set data.on_bad_image: skip to "
                                              "leave such samples out)")

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        import contextlib
        import io

        rows = range(start, min(stop, len(self.samples)))
        decoded, wheres, handles = [], [], {}
        with contextlib.ExitStack() as stack:
            for row in rows:
                shard, member = self.samples[row]
                if shard not in handles:
                    handles[shard] = stack.enter_context(_open_shard(self.paths[shard]))
                where = f"{self.paths[shard]}:{member.name}"
                data = handles[shard].extractfile(member).read()
                decoded.append(decode_image(io.BytesIO(data), self.image_size, self.color,
                                            where))
                wheres.append(where)
        return keep_readable(decoded, wheres, self.labels[rows.start:rows.stop],
                             self.image_size, self.color, self.on_bad_image, self.skipped)

    def fingerprint(self) -> dict[str, Any]:
        # rows: data.limit keeps the first samples of the same shards.
        return {"shards": [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                           for p in self.paths], "rows": len(self), "image_size": self.image_size,
                "color": self.color, "class_names": list(self.class_names)}


def split_files(data_config, split: str) -> list[Path]:
    """The files that ``split``'s records are read from, listed without reading a record:
    each record's file (image and text folders), the records' file (text JSONL/CSV), the
    shards (WebDataset); none for the built-in sets, whose splits are fixed. ``data.limit``
    is ignored: a training file left out by it is still private."""
    source = data_config.source
    if source == "webdataset":
        from braceexpand import braceexpand

        urls = data_config.train_urls if split == "train" else data_config.test_urls
        return [Path(p) for p in braceexpand(str(urls))]
    if source == "text" and data_config.train_file is not None:
        return [Path(data_config.train_file if split == "train" else data_config.test_file)]
    if source in ("image-folder", "text"):
        return list(make_source(data_config.model_copy(update={"limit": None}), split).files)
    return []


def check_splits_disjoint(data_config) -> None:
    """Refuse a test split that shares a file with the private training split.

    The test split is public or held out by definition: its accuracy, per-class accuracy
    and confusion matrix are published without noise, so a private record in it would be
    published too. A file is shared when the two splits reach it by the same real path or
    as the same file (device and inode: a hard link, a symlink, ``test_dir == train_dir``,
    ``test_file == train_file``, a shard listed in both). The error names a shared file
    (a path), never its contents. Call it once both splits are known to be readable."""
    train: dict[tuple[Any, ...], Path] = {}
    for path in split_files(data_config, "train"):
        train.setdefault(_identity(path), path)
        train.setdefault(("path", os.path.realpath(path)), path)
    for path in split_files(data_config, "test"):
        for key in (_identity(path), ("path", os.path.realpath(path))):
            if key in train:
                same = ("is" if os.path.realpath(path) == os.path.realpath(train[key])
                        else "is a link to the same file as")
                raise DataSourceError(
                    f"the test split shares files with the private training split: test "
                    f"file {path} {same} training file {train[key]}. The test split must be "
                    "public or held out: its metrics are published without noise, so a "
                    "private record in it would be published. Give the test split records "
                    "of its own")


#: Sources defined in other modules, by ``data.source``: ``factory(data_config, split)``.
#: :mod:`dpsynth.data.text` registers ``text`` (the :mod:`dpsynth.data` package imports it
#: first), so this module never imports it back: the two used to import each other.
SOURCE_FACTORIES: dict[str, Callable[[Any, str], ImageSource]] = {}


def register_source(name: str):
    """Decorator: ``make_source`` builds ``data.source: <name>`` with this factory."""

    def deco(factory):
        SOURCE_FACTORIES[name] = factory
        return factory

    return deco


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
    if data_config.source in SOURCE_FACTORIES:
        return SOURCE_FACTORIES[data_config.source](data_config, split)
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
    follow = data_config.follow_symlinks_outside_root
    names = data_config.class_names or (
        None if split == "train" else list(ImageFolderSource(
            data_config.train_dir, data_config.image_size,
            follow_symlinks_outside_root=follow).class_names))
    source = ImageFolderSource(root, data_config.image_size, data_config.color, names,
                               dataset_id=f"{data_config.ledger_id()}/{split}",
                               on_bad_image=data_config.on_bad_image,
                               workers=data_config.workers,
                               follow_symlinks_outside_root=follow)
    if limit is not None and limit < len(source):
        source.files, source.labels = source.files[:limit], source.labels[:limit]
    return source
