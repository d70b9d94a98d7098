"""Text sources: labelled texts for a text encoder (``data.source: text``).

Two layouts, the test split the same way as the training split:

- a folder per class, ``train_dir/<class name>/*.txt``, one UTF-8 text per file. Listed
  under the image folders' rules (:class:`~dpsynth.data.sources.ImageFolderSource`): class
  names are unique plain folder names, a file reached by two paths is read once, one file
  under two classes is refused, symlinks leaving the root are refused unless allowed;
- a JSON Lines (``.jsonl``, one object a line) or CSV (``.csv``, a header row) file with a
  text column and a label column (``data.text_column``/``data.label_column``). A label is a
  class name; one that is not in ``data.class_names`` is an error naming its line. Without
  ``class_names`` the training file's labels, sorted, are the class list, and the test file
  must use the same.

A text that cannot be read is an error naming the file (and line), never skipped: an
empty or blank text, bytes that are not UTF-8, a missing column, a label that is not a
string. Error messages name files, lines, columns and labels, never a text's contents.
:meth:`check` reads every record once, so that the pre-flight finds all of these before the
privacy budget is charged.

A file's records are held in memory once read (texts are small next to images); a folder's
files are read a slice at a time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.data.sources import (
    DataNotFoundError,
    DataSourceError,
    ImageFolderSource,
    ImageSource,
    class_name_problem,
    register_source,
)

TEXT_SUFFIXES = (".txt",)
TABLE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or a DataSourceError naming where the
    first byte that is not UTF-8 is."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataSourceError(f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                              f"offset {exc.start}, line {line}); re-encode it as UTF-8"
                              ) from None


class TextFolderSource(ImageFolderSource):
    """``root/<class name>/*.txt``: one text per file, one folder per class (see the module
    docstring). :attr:`files` are the real paths, class by class in label order."""

    modality = "text"
    suffixes = TEXT_SUFFIXES
    kind = "text folder"

    def __init__(self, root: str | Path, class_names: list[str] | None = None,
                 dataset_id: str | None = None,
                 follow_symlinks_outside_root: bool = False) -> None:
        self._read_class_folders(root, class_names, follow_symlinks_outside_root,
                                 records="texts", expected="<text files>.txt")
        self.dataset_id = dataset_id or f"text-folder:{self.root.resolve()}"

    @staticmethod
    def _read_text(path: Path) -> str:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataSourceError(f"cannot read text file {path}: {exc.strerror or exc}"
                                  ) from None
        text = _decode(data, str(path))
        if not text.strip():
            raise DataSourceError(f"text file {path} is empty; every record needs a text "
                                  "(remove the file)")
        return text

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        texts = [self._read_text(p) for p in self.files[start:stop]]
        return np.array(texts, dtype=object), self.labels[start:stop]

    def check(self) -> None:
        """Read every file (UTF-8, not blank, no text in two classes); raise DataSourceError
        naming the first bad one."""
        texts = [self._read_text(path) for path in self.files]
        problem = same_text_problem(texts, [self.class_names[k] for k in self.labels],
                                    [str(p) for p in self.files])
        if problem:
            raise DataSourceError(f"{self.kind} {self.root}: {problem}")

    def fingerprint(self) -> dict[str, Any]:
        listing = "\n".join(
            f"{p if self._outside(p) else p.relative_to(self._real_root)}:"
            f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.files)
        return {"root": str(self.root.resolve()), "layout": "text-folder",
                "class_names": list(self.class_names),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest()[:16]}


#: How many groups of rows a same-text error lists before it counts the rest.
MAX_LISTED_CONFLICTS = 20


def same_text_problem(texts: list[str], labels: list[str], wheres: list[str]) -> str | None:
    """Why one text under two or more labels breaks the privacy unit, naming every row
    (``wheres``: line numbers or files) that carries it, or None.

    Each record must belong to exactly one class, once: a text under two labels would be
    one record counted in two classes, and the per-class releases compose in parallel only
    when the classes partition the records. Texts are compared exactly, by a SHA-256 held
    in memory only; the message names rows and labels (public class names), never a text
    or its digest. The same text twice under one label is left as two records."""
    rows: dict[bytes, list[int]] = {}
    for i, text in enumerate(texts):
        rows.setdefault(hashlib.sha256(text.encode()).digest(), []).append(i)
    conflicts = [group for group in rows.values()
                 if len({labels[i] for i in group}) > 1]
    if not conflicts:
        return None
    listed = "; ".join(", ".join(f"{wheres[i]} ({labels[i]!r})" for i in group)
                       for group in conflicts[:MAX_LISTED_CONFLICTS])
    more = (f"; and {len(conflicts) - MAX_LISTED_CONFLICTS} more such groups"
            if len(conflicts) > MAX_LISTED_CONFLICTS else "")
    return (f"the same text is under different labels in {listed}{more} (each group holds "
            "one text; texts are not shown). A record must belong to exactly one class: "
            "keep each text under one label")


def _table_format(path: Path) -> str:
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataSourceError(f"text file {path}: unknown format {path.suffix!r}; use .jsonl "
                              "(JSON Lines) or .csv (with a header row)")
    return fmt


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSourceError(f"{path} line {number} is not JSON ({exc.msg} at column "
                                  f"{exc.colno})") from None
        if not isinstance(row, dict):
            raise DataSourceError(f"{path} line {number} is a JSON {type(row).__name__}, not "
                                  "an object with text and label fields")
        rows.append((number, row))
    return rows


def _csv_rows(text: str, path: Path, columns: tuple[str, str]
              ) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataSourceError(f"{path} has no column {missing[0]!r} (its header: "
                                  f"{header}); set data.text_column/data.label_column")
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise DataSourceError(f"{path} line {reader.line_num} has {len(fields)} "
                                      f"fields, its header {len(header)}")
            rows.append((reader.line_num, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise DataSourceError(f"{path} line {reader.line_num} is not valid CSV: {exc}"
                              ) from None
    return rows


class TextFileSource(ImageSource):
    """A JSON Lines or CSV file of (text, label) records (see the module docstring)."""

    modality = "text"

    def __init__(self, path: str | Path, class_names: list[str] | None = None, *,
                 text_column: str = "text", label_column: str = "label",
                 dataset_id: str | None = None) -> None:
        self.path = Path(path)
        self.skipped: list[str] = []
        self.text_column, self.label_column = text_column, label_column
        if not self.path.is_file():
            raise DataNotFoundError(f"text file {self.path} does not exist")
        self.format = _table_format(self.path)
        if class_names:
            problem = class_name_problem(class_names, folders=False)
            if problem:
                raise DataSourceError(f"text file {self.path}: {problem}")
        texts, labels, lines = self._parse(self.path.read_bytes())
        names = list(class_names) if class_names else sorted(set(labels))
        index = {name: i for i, name in enumerate(names)}
        unknown = [(n, lab) for n, lab in zip(lines, labels, strict=True)
                   if lab not in index]
        if unknown:
            number, label = unknown[0]
            more = f" (and {len(unknown) - 1} more records)" if len(unknown) > 1 else ""
            raise DataSourceError(f"{self.path} line {number}: label {label[:40]!r} is not "
                                  f"one of the class_names {names}{more}; every label must "
                                  "name a class")
        problem = same_text_problem(texts, labels, [f"line {n}" for n in lines])
        if problem:
            raise DataSourceError(f"{self.path}: {problem}")
        self.texts = np.array(texts, dtype=object)
        self.labels = np.asarray([index[lab] for lab in labels], dtype=np.int64)
        self.class_names = tuple(names)
        self.dataset_id = dataset_id or f"text-file:{self.path.resolve()}"

    def _parse(self, data: bytes) -> tuple[list[str], list[str], list[int]]:
        """(texts, labels as str, line numbers) of every record; DataSourceError if any
        record cannot be one."""
        path = self.path
        if not data.strip():
            raise DataSourceError(f"text file {path} is empty")
        text = _decode(data, str(path))
        columns = (self.text_column, self.label_column)
        rows = (_jsonl_rows(text, path) if self.format == "jsonl"
                else _csv_rows(text, path, columns))
        if not rows:
            raise DataSourceError(f"text file {path} holds no records")
        texts, labels, lines = [], [], []
        for number, row in rows:
            missing = [c for c in columns if c not in row]
            if missing:
                raise DataSourceError(f"{path} line {number} has no {missing[0]!r} field (it "
                                      f"has {sorted(row)}); set data.text_column/"
                                      "data.label_column")
            value, label = row[self.text_column], row[self.label_column]
            if not isinstance(value, str):
                raise DataSourceError(f"{path} line {number}: {self.text_column!r} must be a "
                                      f"text (a string), got {type(value).__name__}")
            if not value.strip():
                raise DataSourceError(f"{path} line {number}: {self.text_column!r} is empty; "
                                      "every record needs a text")
            if isinstance(label, bool) or not isinstance(label, str | int):
                raise DataSourceError(f"{path} line {number}: {self.label_column!r} must be a "
                                      f"class name (a string), got {type(label).__name__}")
            texts.append(value)
            labels.append(str(label))
            lines.append(number)
        return texts, labels, lines

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return self.texts[start:stop], self.labels[start:stop]

    def check(self) -> None:
        """Everything was checked when the file was parsed."""

    def limit(self, n: int) -> None:
        self.texts, self.labels = self.texts[:n], self.labels[:n]

    def fingerprint(self) -> dict[str, Any]:
        stat = self.path.stat()
        # rows: data.limit keeps the first records of the same file (a folder's listing
        # shows it; a file's size and time do not).
        return {"file": str(self.path.resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "rows": len(self), "format": self.format,
                "text_column": self.text_column, "label_column": self.label_column,
                "class_names": list(self.class_names)}


@register_source("text")
def make_text_source(data_config, split: str) -> TextFolderSource | TextFileSource:
    """The ``split`` ("train" or "test") of a ``data.source: text`` configuration. The test
    split takes the training split's class list, so that label i means the same class."""
    dataset_id = f"{data_config.ledger_id()}/{split}"
    limit = data_config.limit if split == "train" else None
    names = data_config.class_names
    if data_config.train_file is not None:
        path = data_config.train_file if split == "train" else data_config.test_file
        if not names and split == "test":
            names = list(make_text_source(data_config, "train").class_names)
        source = TextFileSource(path, names, text_column=data_config.text_column,
                                label_column=data_config.label_column, dataset_id=dataset_id)
        if limit is not None and limit < len(source):
            source.limit(limit)
        return source
    follow = data_config.follow_symlinks_outside_root
    root = data_config.train_dir if split == "train" else data_config.test_dir
    if not names and split == "test":
        names = list(TextFolderSource(data_config.train_dir,
                                      follow_symlinks_outside_root=follow).class_names)
    source = TextFolderSource(root, names, dataset_id=dataset_id,
                              follow_symlinks_outside_root=follow)
    if limit is not None and limit < len(source):
        source.files, source.labels = source.files[:limit], source.labels[:limit]
    return source
