"""EmbeddingSet: labelled embeddings on disk as ``manifest.json`` + ``.npy`` shards.

The format is the contract between steps (docs/formats.md)::

    DIR/manifest.json                 what the set is (see :class:`EmbeddingSet`)
    DIR/shard-00000.embeddings.npy    float32 or float64 (rows, dim)
    DIR/shard-00000.labels.npy        int64 (rows,)

No pickle anywhere: shards are plain ``.npy`` opened with ``allow_pickle=False`` and
memory-mapped, so steps stream over sets larger than RAM.

Writing is shard by shard. Each shard is written to a temporary name, flushed to disk and
renamed, then the manifest is rewritten (also by rename) to list it, so a crash leaves a
manifest that lists only whole shards; :class:`EmbeddingSetWriter` resumes from there.
``complete`` turns true only when the writer finishes, and readers refuse incomplete sets.

Every shard file's sha256 and size are taken from the bytes as they are written and kept in
the manifest. Opening a set checks each file's size and ``.npy`` header (cheap) and, unless
told not to, streams it through sha256, so a zeroed, truncated or missing shard is an
:class:`EmbeddingSetError` naming the file instead of silently wrong data or a bare mmap
error. Hashes verified in this process are remembered by file identity (inode, size,
mtime, ctime), so opening the same set again does not re-read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dpsynth.embedding_set"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class EmbeddingSetError(ValueError):
    """A directory that is not a valid (complete) EmbeddingSet, with what is wrong."""


class _HashingWriter:
    """A write-only file object that hashes and counts what goes through it.

    ``np.save`` writes a non-file object in chunks through ``write``, so the checksum is
    of exactly the bytes written, without reading the file back."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        written = self._raw.write(view)
        self._sha.update(view)
        self.nbytes += len(view)
        return written if written is not None else len(view)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _tmp_name(path: Path) -> Path:
    # Unique per writer: two processes writing the same set never share a temporary file.
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[_HashingWriter]:
    """Write ``path`` through a temporary file, fsync it and rename it into place.

    If anything fails (a full disk, an interrupt) the temporary file is removed and
    ``path`` is untouched. The fsync before the rename keeps a power loss from leaving a
    renamed file whose blocks were never written (read back as zeros)."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as raw:
            out = _HashingWriter(raw)
            yield out
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: readers never see half a file."""
    text = json.dumps(data, indent=2, allow_nan=False).encode()
    with _atomic_file(Path(path)) as f:
        f.write(text)


def _save_npy_atomic(path: Path, array: np.ndarray) -> tuple[str, int]:
    """Save ``array`` as ``.npy`` atomically; its sha256 (hex) and size in bytes."""
    with _atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)  # a non-file: numpy writes through .write
    return f.hexdigest(), f.nbytes


#: Files whose sha256 this process has computed: (device, inode) -> (size, mtime_ns,
#: ctime_ns, sha256, when hashed). Lets a pre-flight check and the encode that follows it
#: hash a large set once.
_VERIFIED: dict[tuple[int, int], tuple[int, int, int, str, int]] = {}
_VERIFIED_LOCK = threading.Lock()
#: A file changed less than this long before it was hashed may change again within the
#: same coarse filesystem timestamp (git's "racily clean" case): its hash is not reused.
_SETTLE_NS = 2_000_000_000
_CHUNK = 1 << 20


def _sha256_file(file: Path) -> str:
    """sha256 of a file, streamed (sets can be larger than RAM)."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_sha256(file: Path, st: os.stat_result) -> str:
    """The file's sha256, reusing this process's earlier hash of the unchanged file."""
    ident = (st.st_dev, st.st_ino)
    with _VERIFIED_LOCK:
        seen = _VERIFIED.get(ident)
    if seen is not None:
        size, mtime, ctime, digest, hashed_at = seen
        if ((size, mtime, ctime) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                and max(mtime, ctime) < hashed_at - _SETTLE_NS):
            return digest
    hashed_at = time.time_ns()
    digest = _sha256_file(file)
    after = file.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        with _VERIFIED_LOCK:
            _VERIFIED[ident] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest, hashed_at)
    return digest


def _npy_layout(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and the size in bytes a whole ``.npy`` file with this header has."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy version {version} (dpsynth writes 1.0)")
        return shape, dtype, f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def check_embedding_set(path: str | Path, *, verify: bool = True,
                        manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a set, complete or not, without opening it for reading: its manifest and every
    shard it lists (sizes, headers and, with ``verify``, sha256). Returns the manifest;
    anything wrong is an :class:`EmbeddingSetError` naming the file."""
    path = Path(path)
    manifest = read_manifest(path) if manifest is None else manifest
    total = sum(int(shard["count"]) for shard in manifest["shards"])
    if total != manifest.get("count"):
        raise EmbeddingSetError(f"{path}: shards hold {total} rows, manifest says "
                                f"{manifest.get('count')}")
    _check_shards(path, manifest, verify=verify)
    return manifest


def _check_shards(path: Path, manifest: dict[str, Any], *, verify: bool) -> None:
    """Every listed shard file exists, is whole, has the shape the manifest says and, with
    ``verify``, the sha256 it had when written. Shards written before checksums were
    recorded (no ``sha256`` in their entry) get every check but the hash."""
    dim = manifest.get("dim")
    for i, shard in enumerate(manifest.get("shards", [])):
        rows = int(shard["count"])
        for kind, want_shape, kinds in (("embeddings", (rows, dim), "f"),
                                        ("labels", (rows,), "iu")):
            file = path / shard[kind]
            try:
                st = file.stat()
            except FileNotFoundError:
                raise EmbeddingSetError(f"{file}: shard {i} {kind} file is missing") from None
            size = (shard.get("bytes") or {}).get(kind)
            if size is not None and st.st_size != size:
                what = "truncated" if st.st_size < size else "too long"
                raise EmbeddingSetError(f"{file}: shard {i} {kind} file is {what} "
                                        f"({st.st_size} bytes, the manifest says {size})")
            try:
                shape, dtype, whole = _npy_layout(file)
            except (ValueError, OSError) as exc:
                raise EmbeddingSetError(f"{file}: shard {i} {kind} file is not a valid .npy "
                                        f"file ({exc})") from None
            if st.st_size != whole:
                raise EmbeddingSetError(f"{file}: shard {i} {kind} file is "
                                        f"{'truncated' if st.st_size < whole else 'too long'}"
                                        f" ({st.st_size} bytes, its header needs {whole})")
            if tuple(shape) != want_shape or dtype.kind not in kinds:
                raise EmbeddingSetError(f"{file}: shard {i} {kind} have shape {shape} dtype "
                                        f"{dtype}, the manifest says {want_shape}")
            digest = (shard.get("sha256") or {}).get(kind)
            if verify and digest is not None and _file_sha256(file, st) != digest:
                raise EmbeddingSetError(f"{file}: shard {i} {kind} file is corrupt (sha256 "
                                        "differs from the one recorded when it was written)")


class _ManifestView:
    """What a set says about itself, read from its ``manifest`` (a single set's, or the
    merged manifest of several parts)."""

    manifest: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def classes(self) -> np.ndarray:
        return np.asarray(self.manifest["classes"], dtype=np.int64)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def encoder(self) -> str:
        return str(self.manifest["encoder"])

    @property
    def normalized(self) -> bool:
        return bool(self.manifest["normalized"])


@dataclass(frozen=True)
class EmbeddingSet(_ManifestView):
    """A complete EmbeddingSet opened for reading (shards memory-mapped on access).

    ``manifest`` fields: ``format``, ``format_version``, ``encoder`` (registry name) and
    ``encoder_options`` (its factory keywords), ``dim``,
    ``dtype``, ``count``, ``normalized`` (rows L2-normalised by the encoder),
    ``classes`` (integer labels) and ``class_names``, ``dataset_id``, ``synthetic``,
    ``key`` (what produced it; the cache compares it), ``complete``, ``shards``
    (``{"index", "embeddings", "labels", "count", "sha256", "bytes"}`` each; ``sha256``
    and ``bytes`` map ``embeddings``/``labels`` to the file's checksum and size) and
    free-form ``provenance``.
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> EmbeddingSet:
        """Open a complete set, checking every shard file (see :func:`_check_shards`).

        ``verify=False`` skips only the sha256 of each file (sizes and headers are always
        checked): for callers that have just verified or written the set."""
        path = Path(path)
        manifest = read_manifest(path)
        if not manifest.get("complete"):
            done = len(manifest.get("shards", []))
            raise EmbeddingSetError(f"{path} is an incomplete EmbeddingSet ({done} shards "
                                    "written); rerun the step that writes it to resume")
        return cls(path, check_embedding_set(path, verify=verify, manifest=manifest))

    def shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every shard as memory-mapped (embeddings, labels), checked against the manifest."""
        out = []
        for i, shard in enumerate(self.manifest["shards"]):
            X = np.load(self.path / shard["embeddings"], mmap_mode="r", allow_pickle=False)
            y = np.load(self.path / shard["labels"], mmap_mode="r", allow_pickle=False)
            if X.ndim != 2 or X.shape != (int(shard["count"]), self.dim):
                raise EmbeddingSetError(f"{self.path}: shard {i} embeddings have shape "
                                        f"{X.shape}, manifest says "
                                        f"({shard['count']}, {self.dim})")
            if y.shape != (len(X),) or y.dtype.kind not in "iu":
                raise EmbeddingSetError(f"{self.path}: shard {i} labels have shape "
                                        f"{y.shape} dtype {y.dtype}; need ({len(X)},) ints")
            out.append((X, y))
        return out

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows in memory: (X (count, dim), y (count,)). For sets that fit in RAM."""
        shards = self.shards()
        if not shards:
            return np.empty((0, self.dim), np.float32), np.empty(0, np.int64)
        return (np.concatenate([np.asarray(X) for X, _ in shards]),
                np.concatenate([np.asarray(y) for _, y in shards]).astype(np.int64))


#: Manifest keys on which the parts of one split must agree.
_SAME_IN_EVERY_PART = ("encoder", "encoder_options", "dim", "dtype", "normalized", "classes",
                       "class_names", "dataset_id", "synthetic")


@dataclass(frozen=True)
class EmbeddingParts(_ManifestView):
    """Several EmbeddingSets that together are one split (a fanned-out encode), read as one:
    the shards of every part in order. Same interface as :class:`EmbeddingSet`."""

    parts: tuple[EmbeddingSet, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise EmbeddingSetError("no EmbeddingSet parts given")
        first = self.parts[0].manifest
        for part in self.parts[1:]:
            for key in _SAME_IN_EVERY_PART:
                if part.manifest.get(key) != first.get(key) and part.count and self.parts[0].count:
                    raise EmbeddingSetError(
                        f"{part.path} and {self.parts[0].path} are not parts of one set: "
                        f"{key} differs ({part.manifest.get(key)!r} vs {first.get(key)!r})")

    @property
    def path(self) -> Path:
        return self.parts[0].path

    @property
    def manifest(self) -> dict[str, Any]:
        return {**self.parts[0].manifest, "count": sum(p.count for p in self.parts)}

    def shards(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [shard for part in self.parts for shard in part.shards()]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        loaded = [p.load() for p in self.parts]
        return (np.concatenate([X for X, _ in loaded]),
                np.concatenate([y for _, y in loaded]))


def open_embeddings(paths: str | Path | Sequence[str | Path], *,
                    verify: bool = True) -> EmbeddingSet | EmbeddingParts:
    """One EmbeddingSet directory, or a list of part directories read as one set."""
    if isinstance(paths, str | Path):
        return EmbeddingSet.open(paths, verify=verify)
    sets = [EmbeddingSet.open(p, verify=verify) for p in paths]
    # A fan-out may hand the parts over in any order; the key says where each belongs.
    sets.sort(key=lambda s: (s.manifest.get("key") or {}).get("part", [0])[0])
    return sets[0] if len(sets) == 1 else EmbeddingParts(tuple(sets))


def read_manifest(path: Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise EmbeddingSetError(f"{path} is not an EmbeddingSet: no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmbeddingSetError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise EmbeddingSetError(f"{file} is not an EmbeddingSet manifest (not a JSON object)")
    if manifest.get("format") != FORMAT:
        raise EmbeddingSetError(f"{file}: format is {manifest.get('format')!r}, "
                                f"expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EmbeddingSetError(f"{file}: unsupported format_version "
                                f"{manifest.get('format_version')!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(_valid_shard_entry(s) for s in shards):
        raise EmbeddingSetError(f"{file}: malformed shards list (each entry needs index, "
                                "count and the plain file names of embeddings and labels)")
    return manifest


def _valid_shard_entry(shard: Any) -> bool:
    # File names must stay inside the set's directory: a manifest is read, never trusted.
    return (isinstance(shard, dict) and isinstance(shard.get("index"), int)
            and isinstance(shard.get("count"), int)
            and all(isinstance(shard.get(k), str) and Path(shard[k]).name == shard[k]
                    and shard[k] not in ("", ".", "..") for k in ("embeddings", "labels"))
            and all(isinstance(shard.get(k, {}), dict) for k in ("sha256", "bytes")))


class EmbeddingSetWriter:
    """Writes an EmbeddingSet shard by shard; resumable after a crash.

    ``key`` identifies what is being written (dataset, encoder, preprocessing). Opening a
    directory that holds a set with another key is refused rather than overwritten; with
    the same key, shards already listed in the manifest are checked (their sha256 too,
    unless ``verify=False`` because the caller just did) and kept, and :meth:`has_shard`
    tells the caller to skip them. A damaged shard is an :class:`EmbeddingSetError`
    naming the file.
    """

    def __init__(self, path: str | Path, *, encoder: str, dim: int, normalized: bool,
                 classes: Sequence[int], class_names: Sequence[str], dataset_id: str,
                 key: dict[str, Any], synthetic: bool = False,
                 encoder_options: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None, verify: bool = True) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        fresh = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "encoder": encoder,
            "encoder_options": dict(encoder_options or {}), "dim": int(dim), "dtype": None,
            "count": 0, "normalized": bool(normalized),
            "classes": [int(c) for c in classes], "class_names": list(class_names),
            "dataset_id": dataset_id, "synthetic": synthetic, "key": key,
            "complete": False, "shards": [], "provenance": dict(provenance or {}),
        }
        if (self.path / MANIFEST).exists():
            existing = read_manifest(self.path)
            if existing.get("key") != key:
                # Names the differing fields, not their values: a key holds a digest of
                # the private data, and this message reaches terminals and logs.
                old = existing.get("key") if isinstance(existing.get("key"), dict) else {}
                fields = sorted(k for k in {*old, *key} if old.get(k) != key.get(k))
                raise EmbeddingSetError(
                    f"{self.path} already holds a different EmbeddingSet (its key differs "
                    f"in {', '.join(fields) or 'type'}); choose another directory or "
                    "delete it")
            try:
                check_embedding_set(self.path, verify=verify, manifest=existing)
            except EmbeddingSetError as exc:
                raise EmbeddingSetError(f"{exc}; cannot resume {self.path}: delete it to "
                                        "write the set afresh") from None
            self.manifest = existing
        else:
            self.manifest = fresh
            write_json_atomic(self.path / MANIFEST, self.manifest)
        self._done = {int(s["index"]) for s in self.manifest["shards"]}

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def has_shard(self, index: int) -> bool:
        return index in self._done

    def write_shard(self, index: int, X: np.ndarray, y: np.ndarray, *,
                    skipped: list[str] | None = None) -> None:
        """Write shard ``index``. ``skipped``: source records this shard left out (private
        provenance); kept with the shard so a resumed encode still lists every one."""
        X = np.ascontiguousarray(X)
        y = np.ascontiguousarray(y, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != self.manifest["dim"] or len(y) != len(X):
            raise ValueError(f"shard {index}: need X ({len(y)}, {self.manifest['dim']}) and "
                             f"y ({len(X)},); got {X.shape} and {y.shape}")
        if X.dtype.kind != "f":
            raise ValueError(f"shard {index}: embeddings must be floats, got {X.dtype}")
        dtype = self.manifest["dtype"] or str(X.dtype)
        if str(X.dtype) != dtype:
            raise ValueError(f"shard {index}: dtype {X.dtype} differs from the set's {dtype}")
        if self.complete:
            raise EmbeddingSetError(f"{self.path} is complete; it takes no more shards")
        stem = f"shard-{index:05d}"
        x_sha, x_bytes = _save_npy_atomic(self.path / f"{stem}.embeddings.npy", X)
        y_sha, y_bytes = _save_npy_atomic(self.path / f"{stem}.labels.npy", y)
        entry = {"index": index, "embeddings": f"{stem}.embeddings.npy",
                 "labels": f"{stem}.labels.npy", "count": len(X),
                 "sha256": {"embeddings": x_sha, "labels": y_sha},
                 "bytes": {"embeddings": x_bytes, "labels": y_bytes}}
        if skipped:
            entry["skipped_unreadable"] = list(skipped)
        self._record(index, entry, dtype)

    def adopt_shard(self, index: int, source: EmbeddingSet, shard: dict[str, Any]) -> None:
        """Take shard ``index`` from another complete, checked set (``shard``: its entry in
        ``source``'s manifest) of the same dimension and dtype, without encoding it: its
        files are hard-linked in (no second copy on disk; copied where the file system has
        no hard links), and its checksums and sizes recorded as they are."""
        if source.dim != self.manifest["dim"]:
            raise ValueError(f"shard {index}: {source.path} has dimension {source.dim}, "
                             f"this set {self.manifest['dim']}")
        dtype = self.manifest["dtype"] or source.manifest["dtype"]
        if source.manifest["dtype"] != dtype:
            raise ValueError(f"shard {index}: dtype {source.manifest['dtype']} differs from "
                             f"the set's {dtype}")
        if self.complete:
            raise EmbeddingSetError(f"{self.path} is complete; it takes no more shards")
        stem = f"shard-{index:05d}"
        entry = {**shard, "index": index, "embeddings": f"{stem}.embeddings.npy",
                 "labels": f"{stem}.labels.npy"}
        for kind in ("embeddings", "labels"):
            target = self.path / entry[kind]
            tmp = _tmp_name(target)
            try:
                try:
                    os.link(source.path / shard[kind], tmp)
                except OSError:  # no hard links here (or across devices): a copy
                    shutil.copyfile(source.path / shard[kind], tmp)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        self._record(index, entry, dtype)

    def _record(self, index: int, entry: dict[str, Any], dtype: str) -> None:
        """Enter a written shard in the manifest, and write the manifest."""
        shards = [s for s in self.manifest["shards"] if s["index"] != index]
        shards.append(entry)
        shards.sort(key=lambda s: s["index"])
        self.manifest.update(dtype=dtype, shards=shards,
                             count=sum(int(s["count"]) for s in shards))
        write_json_atomic(self.path / MANIFEST, self.manifest)
        self._done.add(index)

    def finish(self, expected_shards: int | None = None) -> EmbeddingSet:
        if expected_shards is not None and self._done != set(range(expected_shards)):
            missing = sorted(set(range(expected_shards)) - self._done)[:10]
            raise EmbeddingSetError(f"{self.path}: cannot finish, shards {missing} missing")
        if self.manifest["dtype"] is None:
            self.manifest["dtype"] = "float32"
        skipped = [f for s in self.manifest["shards"] for f in s.get("skipped_unreadable", [])]
        if skipped:
            self.manifest["provenance"]["skipped_unreadable"] = skipped
        self.manifest["complete"] = True
        write_json_atomic(self.path / MANIFEST, self.manifest)
        # Shards kept on resume were verified when the writer opened the set, and the new
        # ones hashed as they were written: no need to read them all back.
        return EmbeddingSet.open(self.path, verify=False)


def write_embedding_set(path: str | Path, X: np.ndarray, y: np.ndarray, *,
                        shard_rows: int = 65536, **meta: Any) -> EmbeddingSet:
    """Write arrays in memory as a complete EmbeddingSet (``meta``: writer keywords)."""
    writer = EmbeddingSetWriter(path, dim=X.shape[1], **meta)
    n_shards = max(1, -(-len(X) // shard_rows))
    for i in range(n_shards):
        sl = slice(i * shard_rows, (i + 1) * shard_rows)
        if not writer.has_shard(i):
            writer.write_shard(i, X[sl], y[sl])
    return writer.finish(n_shards)



def join_embedding_sets(parts: Sequence[str | Path], path: str | Path, *,
                        drop_key: Sequence[str] = ("part",),
                        expected_shards: int | None = None) -> EmbeddingSet:
    """Join complete EmbeddingSets that each hold some shards of one set (a fanned-out
    write; shard indices are global) into one set at ``path``.

    The parts must agree on everything but their shards, counts and the ``drop_key``
    entries of their keys (a part's key says which part it is). Shard files are
    hard-linked into ``path`` (copied where links are impossible), never re-encoded, and
    their recorded sha256 and sizes carried over after the files are checked (sizes and
    headers; hashes were taken when the parts were written). Together the parts must hold
    each shard index from 0 to ``expected_shards - 1`` (default: up to the largest index)
    exactly once. The manifest written is the one a single writer of all the shards
    writes, byte for byte, so the joined set equals a single-process one bit for bit.
    """
    path = Path(path)
    sets = [EmbeddingSet.open(p, verify=False) for p in parts]
    if not sets:
        raise EmbeddingSetError("no EmbeddingSet parts to join")

    def shape(manifest: dict[str, Any]) -> dict[str, Any]:
        key = manifest.get("key")
        key = ({k: v for k, v in key.items() if k not in drop_key}
               if isinstance(key, dict) else key)
        return {k: (key if k == "key" else v) for k, v in manifest.items()
                if k not in ("count", "shards", "dtype")}

    first = shape(sets[0].manifest)
    for part in sets[1:]:
        mine = shape(part.manifest)
        if mine != first:
            fields = sorted(k for k in {*mine, *first} if mine.get(k) != first.get(k))
            raise EmbeddingSetError(f"{part.path} and {sets[0].path} are not parts of one "
                                    f"set: {', '.join(fields)} differ")
    dtypes = {p.manifest["dtype"] for p in sets if p.manifest["shards"]}
    if len(dtypes) > 1:
        raise EmbeddingSetError(f"the parts hold shards of different dtypes {sorted(dtypes)}")
    entries = sorted(((shard, p.path) for p in sets for shard in p.manifest["shards"]),
                     key=lambda e: e[0]["index"])
    indices = [int(s["index"]) for s, _ in entries]
    total = (max(indices) + 1 if indices else 1) if expected_shards is None else expected_shards
    if indices != list(range(total)) and not (not indices and total == 1):
        missing = sorted(set(range(total)) - set(indices))[:10]
        repeated = sorted({i for i in indices if indices.count(i) > 1})[:10]
        raise EmbeddingSetError(f"the parts do not hold shards 0..{total - 1} once each "
                                f"(missing {missing}, repeated {repeated})")
    path.mkdir(parents=True, exist_ok=True)
    if (path / MANIFEST).exists():
        raise EmbeddingSetError(f"{path} already holds an EmbeddingSet; remove it first")
    for shard, source in entries:
        for kind in ("embeddings", "labels"):
            _link_or_copy(source / shard[kind], path / shard[kind])
    manifest = dict(sets[0].manifest)
    key = manifest.get("key")
    if isinstance(key, dict):
        manifest["key"] = {k: v for k, v in key.items() if k not in drop_key}
    manifest.update(dtype=dtypes.pop() if dtypes else manifest["dtype"],
                    count=sum(int(s["count"]) for s, _ in entries),
                    shards=[shard for shard, _ in entries], complete=True)
    write_json_atomic(path / MANIFEST, manifest)
    return EmbeddingSet.open(path, verify=False)


def _link_or_copy(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s bytes: a hard link, or an atomic copy across file
    systems (or where links are refused)."""
    tmp = _tmp_name(target)
    try:
        os.link(source, tmp)
    except OSError:
        with _atomic_file(tmp) as out, open(source, "rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
    os.replace(tmp, target)
