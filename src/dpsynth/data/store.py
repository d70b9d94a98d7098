"""EmbeddingSet: labelled embeddings on disk as ``manifest.json`` + ``.npy`` shards.

The format is the contract between steps (docs/formats.md)::

    DIR/manifest.json                 what the set is (see :class:`EmbeddingSet`)
    DIR/shard-00000.embeddings.npy    float32 or float64 (rows, dim)
    DIR/shard-00000.labels.npy        int64 (rows,)

No pickle anywhere: shards are plain ``.npy`` opened with ``allow_pickle=False`` and
memory-mapped, so steps stream over sets larger than RAM.

Writing is shard by shard. Each shard is written to a temporary name and renamed, then the
manifest is rewritten (also by rename) to list it, so a crash leaves a manifest that lists
only whole shards; :class:`EmbeddingSetWriter` resumes from there. ``complete`` turns true
only when the writer finishes, and readers refuse incomplete sets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dpsynth.embedding_set"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class EmbeddingSetError(ValueError):
    """A directory that is not a valid (complete) EmbeddingSet, with what is wrong."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)


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
    (``{"embeddings", "labels", "count"}`` each) and free-form ``provenance``.
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingSet:
        path = Path(path)
        manifest = read_manifest(path)
        if not manifest.get("complete"):
            done = len(manifest.get("shards", []))
            raise EmbeddingSetError(f"{path} is an incomplete EmbeddingSet ({done} shards "
                                    "written); rerun the step that writes it to resume")
        total = 0
        for i, shard in enumerate(manifest["shards"]):
            for kind in ("embeddings", "labels"):
                if not (path / shard[kind]).is_file():
                    raise EmbeddingSetError(f"{path}: shard {i} file {shard[kind]} is missing")
            total += int(shard["count"])
        if total != manifest["count"]:
            raise EmbeddingSetError(f"{path}: shards hold {total} rows, manifest says "
                                    f"{manifest['count']}")
        return cls(path, manifest)

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


def open_embeddings(paths: str | Path | Sequence[str | Path]) -> EmbeddingSet | EmbeddingParts:
    """One EmbeddingSet directory, or a list of part directories read as one set."""
    if isinstance(paths, str | Path):
        return EmbeddingSet.open(paths)
    sets = [EmbeddingSet.open(p) for p in paths]
    # A fan-out may hand the parts over in any order; the key says where each belongs.
    sets.sort(key=lambda s: (s.manifest.get("key") or {}).get("part", [0])[0])
    return sets[0] if len(sets) == 1 else EmbeddingParts(tuple(sets))


def read_manifest(path: Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise EmbeddingSetError(f"{path} is not an EmbeddingSet: no {MANIFEST}")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise EmbeddingSetError(f"{file} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise EmbeddingSetError(f"{file}: format is {manifest.get('format')!r}, "
                                f"expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EmbeddingSetError(f"{file}: unsupported format_version "
                                f"{manifest.get('format_version')!r}")
    return manifest


class EmbeddingSetWriter:
    """Writes an EmbeddingSet shard by shard; resumable after a crash.

    ``key`` identifies what is being written (dataset, encoder, preprocessing). Opening a
    directory that holds a set with another key is refused rather than overwritten; with
    the same key, shards already listed in the manifest are kept and
    :meth:`has_shard` tells the caller to skip them.
    """

    def __init__(self, path: str | Path, *, encoder: str, dim: int, normalized: bool,
                 classes: Sequence[int], class_names: Sequence[str], dataset_id: str,
                 key: dict[str, Any], synthetic: bool = False,
                 encoder_options: dict[str, Any] | None = None,
                 provenance: dict[str, Any] | None = None) -> None:
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
                raise EmbeddingSetError(
                    f"{self.path} already holds a different EmbeddingSet (key "
                    f"{existing.get('key')!r}, writing {key!r}); choose another directory "
                    "or delete it")
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
        _save_npy_atomic(self.path / f"{stem}.embeddings.npy", X)
        _save_npy_atomic(self.path / f"{stem}.labels.npy", y)
        shards = [s for s in self.manifest["shards"] if s["index"] != index]
        entry = {"index": index, "embeddings": f"{stem}.embeddings.npy",
                 "labels": f"{stem}.labels.npy", "count": len(X)}
        if skipped:
            entry["skipped_unreadable"] = list(skipped)
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
        return EmbeddingSet.open(self.path)


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

