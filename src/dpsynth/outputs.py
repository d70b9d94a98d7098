"""The ``--out`` directory: what dpsynth may write there and what it may remove.

dpsynth only ever removes files it wrote. Every run records the files it wrote in an
ownership record (``.dpsynth-outputs.json``) at the top of ``--out``; the next run into the
same directory removes the previous run's outputs listed there (so no stale decoded PNG
or plot survives a rerun) and nothing else: a file a person put into ``--out`` or into one
of its sub-folders is never touched.

A non-empty directory without an ownership record is not a dpsynth output: it is refused
unless the caller says ``overwrite``, and even then only files at the paths dpsynth writes
are replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

OWNER_FILE = ".dpsynth-outputs.json"
OWNER_FORMAT = "dpsynth.outputs"
#: Written by dpsynth but kept across runs: the embedded tracking store holds the history
#: of every run, and removing it would lose what earlier runs logged.
KEPT_ACROSS_RUNS = ("mlflow.db", "mlartifacts")


class OutputDirError(ValueError):
    """``--out`` cannot be used (a file, below a file, unwritable, or someone else's)."""


def _first_existing_ancestor(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path("/")


def check_out_dir(out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that cannot take a run's outputs, before any work is done.

    Leaves the file system as it was: folders created to try writing are removed again.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} exists and is not a directory")
    base = _first_existing_ancestor(out_dir.absolute())
    if not base.is_dir():
        raise OutputDirError(f"--out {out_dir} is below {base}, which is a file, not a "
                             "directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / OWNER_FILE).is_file() \
            and not overwrite:
        raise OutputDirError(
            f"--out {out_dir} is not empty and is not a dpsynth output directory (no "
            f"{OWNER_FILE}); choose an empty or new directory, or pass --overwrite to "
            "write into it (files dpsynth did not write are never removed)")
    # Permission bits do not tell (root passes os.access, a read-only mount fails it
    # late): try it, the way the run will.
    created: list[Path] = []
    try:
        for folder in reversed([out_dir.absolute(), *out_dir.absolute().parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        probe = out_dir / f".dpsynth-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(f"--out {out_dir} is not writable: "
                             f"{exc.strerror or exc} ({exc.filename or out_dir})") from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _read_record(out_dir: Path) -> dict[str, object]:
    file = out_dir / OWNER_FILE
    if not file.is_file():
        return {"format": OWNER_FORMAT, "files": []}
    try:
        record = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputDirError(f"{file} is unreadable ({exc}); it records which files dpsynth "
                             "wrote, so dpsynth will not guess: move it away to start "
                             "afresh") from None
    if not isinstance(record, dict) or record.get("format") != OWNER_FORMAT \
            or not isinstance(record.get("files"), list):
        raise OutputDirError(f"{file} is not a dpsynth ownership record")
    return record


def _inside(out_dir: Path, rel: str) -> Path | None:
    """``out_dir / rel`` if it stays inside ``out_dir`` (an edited record cannot make
    dpsynth delete anything outside), else None."""
    path = (out_dir / rel)
    try:
        path.resolve().relative_to(out_dir.resolve())
    except ValueError:
        return None
    return path


@dataclass
class OutputDir:
    """An ``--out`` directory opened for one run (see the module docstring)."""

    path: Path
    started: float = field(default_factory=time.time)
    _before: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, out_dir: Path, *, overwrite: bool = False) -> OutputDir:
        check_out_dir(out_dir, overwrite=overwrite)
        out = cls(Path(out_dir))
        out.path.mkdir(parents=True, exist_ok=True)
        out._before = out._snapshot()
        return out

    def _snapshot(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                p = Path(root) / name
                try:
                    found[p.relative_to(self.path).as_posix()] = p.stat().st_mtime_ns
                except OSError:
                    continue
        return found

    def previous_files(self) -> list[str]:
        return [str(f) for f in _read_record(self.path)["files"]]

    def clear_previous(self) -> list[str]:
        """Remove the outputs of the previous run into this directory (those listed in
        the ownership record, tracking store and this run's own files excepted); returns
        what was removed."""
        removed = []
        now = self._snapshot()
        for rel in self.previous_files():
            if rel.split("/")[0] in KEPT_ACROSS_RUNS or rel == OWNER_FILE:
                continue
            if rel not in self._before or now.get(rel) != self._before[rel]:
                continue  # written by this run already (its plan, its config)
            path = _inside(self.path, rel)
            # dpsynth writes no symlinks: one at a recorded path is someone else's.
            if path is None or path.is_symlink() or not path.is_file():
                continue
            path.unlink()
            removed.append(rel)
            self._prune_empty(path.parent)
        self.record()  # the record now lists only what is still there
        return removed

    def _prune_empty(self, folder: Path) -> None:
        while folder != self.path and self.path in folder.parents:
            try:
                folder.rmdir()  # only succeeds when empty: a user's file keeps its folder
            except OSError:
                return
            folder = folder.parent

    def record(self) -> Path:
        """Record every file dpsynth wrote into this directory so far (new or changed
        since :meth:`open`, plus those an earlier run recorded that are still there)."""
        now = self._snapshot()
        previous = {f for f in self.previous_files() if (self.path / f).is_file()}
        written = {rel for rel, mtime in now.items()
                   if rel != OWNER_FILE and not rel.startswith(".") and
                   (rel not in self._before or self._before[rel] != mtime)}
        if not (previous or written) and not (self.path / OWNER_FILE).exists():
            return self.path / OWNER_FILE  # nothing written: leave no trace either
        record = {"format": OWNER_FORMAT,
                  "note": "files written by dpsynth; the next run into this directory "
                          "removes them (except the tracking store) and nothing else",
                  "files": sorted(previous | written)}
        tmp = self.path / f".{OWNER_FILE}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, self.path / OWNER_FILE)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno != errno.ENOSPC:
                raise
        return self.path / OWNER_FILE


def remove_embedding_set(path: Path) -> None:
    """Remove the EmbeddingSet at ``path``: its manifest and the shard files it lists (and
    dpsynth's own temporary files), never anything else; the folder goes only if that
    leaves it empty. A non-empty folder that holds no EmbeddingSet is refused."""
    from dpsynth.data.store import MANIFEST

    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputDirError(f"{path} is a file, not an EmbeddingSet directory")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        if any(path.iterdir()):
            raise OutputDirError(f"{path} is not empty and holds no EmbeddingSet "
                                 f"({MANIFEST}); dpsynth will not delete files it did not "
                                 "write: move them away or choose another directory")
        path.rmdir()
        return
    try:
        manifest = json.loads(manifest_file.read_text())
        listed = [s[k] for s in manifest.get("shards", []) for k in ("embeddings", "labels")]
    except (OSError, json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise OutputDirError(f"{manifest_file} is unreadable ({exc}); dpsynth will not guess "
                             "which files there are its own") from None
    for name in listed:
        file = _inside(path, str(name))
        if file is not None and file.is_file() and not file.is_symlink():
            file.unlink()
    for tmp in path.glob(".*.tmp"):
        tmp.unlink()
    manifest_file.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
