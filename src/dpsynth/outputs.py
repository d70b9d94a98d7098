"""The ``--out`` directory: what dpsynth may write there and what it may remove.

dpsynth only ever removes files it wrote. Every run records the files it wrote, with the
sha256 of their content, in an ownership record (``.dpsynth-outputs.json``) at the top of
``--out``; the next run into the same directory removes the previous run's outputs listed
there (so no stale decoded PNG or plot survives a rerun) and nothing else: a file a person
put into ``--out`` or into one of its sub-folders is never touched, even while a run is
going (a log the shell redirects there, notes appended to, a file created under
``evaluation/`` during evaluate), and a file dpsynth wrote that has changed since (its
hash differs) is kept, with a warning naming it.

What "dpsynth wrote" means is observed, not guessed from timestamps: while a run holds
the directory (:meth:`OutputDir.open` to :meth:`OutputDir.close`), a Python audit hook
(:func:`sys.addaudithook`) notes every file this process opens for writing, or renames
into place, under ``--out``. Files written by other processes (a shell redirect, an
editor) are never noted, whenever they are written.

A non-empty directory without an ownership record is not a dpsynth output: it is refused
unless the caller says ``overwrite``, and even then only files at the paths dpsynth writes
are replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import threading
import time
import uuid
import warnings
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
    try:
        probe_writable(out_dir)
    except OSError as exc:
        raise OutputDirError(f"--out {out_dir} is not writable: "
                             f"{exc.strerror or exc} ({exc.filename or out_dir})") from None


def probe_writable(root: Path, also: tuple[Path, ...] = ()) -> None:
    """Write and remove one empty file in ``root`` (and in each existing folder of
    ``also``), making missing folders on the way and removing those again. Permission bits
    do not tell (root passes os.access, a read-only mount fails it late): try it, the way
    the run will. Raises the OSError."""
    created: list[Path] = []
    try:
        for folder in reversed([root.absolute(), *root.absolute().parents]):
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        for folder in (root, *also):
            if folder.is_dir():
                probe = folder / f".dpsynth-probe-{uuid.uuid4().hex}"
                probe.write_bytes(b"")
                probe.unlink()
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


#: Flags of an ``open`` that may write.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
#: The directories runs of this process hold now (see :meth:`OutputDir.open`).
_HELD: list[OutputDir] = []
_HELD_LOCK = threading.Lock()
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    """The audit hook: note files opened for writing or renamed into a held ``--out``.
    Never raises (an exception here would fail the write itself)."""
    if not _HELD or event not in ("open", "os.rename"):
        return
    try:
        if event == "open":
            path, _mode, flags = args[:3]
            if not isinstance(flags, int) or not flags & _WRITE_FLAGS:
                return
        else:  # os.rename and os.replace: the destination is what now exists
            path = args[1]
        if isinstance(path, int) or path is None:
            return  # a file descriptor: its file was noted when it was opened
        for held in list(_HELD):
            held._saw(os.fsdecode(path))
    except Exception:  # noqa: BLE001, S110 - never fail the file operation itself
        pass


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class OutputDir:
    """An ``--out`` directory opened for one run (see the module docstring)."""

    path: Path
    started: float = field(default_factory=time.time)
    #: Relative paths this process wrote under :attr:`path` since :meth:`open`.
    _written: set[str] = field(default_factory=set)
    #: Relative paths of the previous record that are no longer dpsynth's (changed).
    _disowned: set[str] = field(default_factory=set)
    #: rel -> ((device, inode, size, mtime_ns), sha256): hash each version once.
    _hashes: dict[str, tuple[tuple[int, int, int, int], str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, out_dir: Path, *, overwrite: bool = False) -> OutputDir:
        """Check and hold ``out_dir`` for a run: from now until :meth:`close`, what this
        process writes there is noted as dpsynth's."""
        global _HOOKED
        check_out_dir(out_dir, overwrite=overwrite)
        out = cls(Path(out_dir))
        out.path.mkdir(parents=True, exist_ok=True)
        out._real = os.path.realpath(out.path)
        with _HELD_LOCK:
            if not _HOOKED:
                sys.addaudithook(_audit)  # cannot be removed: idle when nothing is held
                _HOOKED = True
            _HELD.append(out)
        return out

    def close(self) -> None:
        """Stop noting writes (the run is over); idempotent."""
        with _HELD_LOCK:
            if self in _HELD:
                _HELD.remove(self)

    def __eq__(self, other: object) -> bool:  # identity: two runs may hold one path
        return self is other

    __hash__ = object.__hash__

    def _saw(self, path: str) -> None:
        full = os.path.join(os.getcwd(), path)  # an absolute path stays as it is
        real = os.path.join(os.path.realpath(os.path.dirname(full)), os.path.basename(full))
        rel = os.path.relpath(real, self._real)
        if rel == os.curdir or rel.startswith(os.pardir):
            return
        with self._lock:
            self._written.add(Path(rel).as_posix())

    def written(self) -> set[str]:
        """What this process has written here since :meth:`open` (relative paths)."""
        with self._lock:
            return set(self._written)

    def _hash(self, rel: str) -> str | None:
        """sha256 of the file at ``rel`` (a regular file, not a symlink), or None."""
        path = self.path / rel
        try:
            st = os.lstat(path)
        except OSError:
            return None
        import stat

        if not stat.S_ISREG(st.st_mode):
            return None
        version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._hashes.get(rel)
        if known is not None and known[0] == version:
            return known[1]
        try:
            digest = _sha256(path)
        except OSError:
            return None
        self._hashes[rel] = (version, digest)
        return digest

    def previous_files(self) -> list[str]:
        return [str(f) for f in _read_record(self.path)["files"]]

    def clear_previous(self) -> list[str]:
        """Remove the outputs of the previous run into this directory: the files listed in
        the ownership record whose content still has the recorded sha256 (tracking store
        and this run's own files excepted). A listed file that changed since, or that an
        older dpsynth listed without a hash, is kept with a warning naming it. Returns
        what was removed."""
        record = _read_record(self.path)
        recorded = record.get("sha256") if isinstance(record.get("sha256"), dict) else {}
        removed, kept = [], []
        mine = self.written()
        for rel in self.previous_files():
            if rel.split("/")[0] in KEPT_ACROSS_RUNS or rel == OWNER_FILE:
                continue
            if rel in mine:
                continue  # written by this run already (its plan, its config)
            path = _inside(self.path, rel)
            # dpsynth writes no symlinks: one at a recorded path is someone else's.
            if path is None or path.is_symlink() or not path.is_file():
                continue
            if recorded.get(rel) is None or self._hash(rel) != recorded[rel]:
                kept.append(rel)
                continue
            path.unlink()
            removed.append(rel)
            self._prune_empty(path.parent)
        if kept:
            self._disowned.update(kept)
            warnings.warn(
                f"kept {len(kept)} file(s) in --out {self.path} that an earlier run wrote "
                "but that changed since (or were recorded without a content hash), so may "
                f"hold someone's edits: {', '.join(kept[:20])}"
                + (f" (and {len(kept) - 20} more)" if len(kept) > 20 else "")
                + "; they are no longer dpsynth's and will not be removed", stacklevel=2)
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
        """Record every file dpsynth wrote into this directory so far, with the sha256 of
        its content now (the files this process wrote since :meth:`open`, plus those an
        earlier run recorded that are still there, with their recorded hashes)."""
        before = _read_record(self.path)
        hashes_before = before.get("sha256") if isinstance(before.get("sha256"), dict) \
            else {}
        hashes: dict[str, str] = {}
        for rel in self.written():
            if rel == OWNER_FILE or rel.startswith("."):
                continue  # the record itself, probes and temporary files
            digest = self._hash(rel)
            if digest is not None:
                hashes[rel] = digest
        previous = {f: hashes_before.get(f) for f in self.previous_files()
                    if f not in hashes and f not in self._disowned
                    and (self.path / f).is_file()}
        if not (previous or hashes) and not (self.path / OWNER_FILE).exists():
            return self.path / OWNER_FILE  # nothing written: leave no trace either
        listed = {**previous, **hashes}
        record = {"format": OWNER_FORMAT,
                  "note": "files written by dpsynth, with the sha256 of what it wrote; the "
                          "next run into this directory removes those still holding it "
                          "(except the tracking store) and nothing else",
                  "files": sorted(listed),
                  "sha256": {f: h for f, h in sorted(listed.items()) if h is not None}}
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
