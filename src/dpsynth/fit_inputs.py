"""The fit's inputs, checked: numbers that are never booleans (parameters), shards of
(X, y), the public class list, and the records bounded chunk by chunk with every bad row
refused where it is (never bounded to a silent zero row). Used by
:class:`~dpsynth.synthesizer.DPSynthesizer`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.utils._param_validation import Interval

from dpsynth.preprocessing import NormOverflowError, Shard, bound_norms, iter_located_chunks


class Number(Interval):
    """scikit-learn's :class:`Interval`, refusing booleans: bool is an int subclass, and a
    YAML ``true`` given for a count or a radius is a mistake, never 1."""

    def is_satisfied_by(self, val: object) -> bool:
        return not isinstance(val, bool | np.bool_) and super().is_satisfied_by(val)

    def __str__(self) -> str:
        return f"{super().__str__()} (not a boolean)"


def is_int(value: object) -> bool:
    """An integer that is not a bool (bool is an int subclass: True must not mean 1)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool | np.bool_))


def check_shards(shards: Sequence[Shard]) -> list[Shard]:
    """The shards as arrays, refused (naming the shard) unless every one is a dense 2-D
    array of numbers with one integer label per row, all of one dimension, not all empty."""
    shards = [check_shard(i, X, y) for i, (X, y) in enumerate(shards)]
    if not shards or sum(len(X) for X, _ in shards) == 0:
        raise ValueError("X is empty: need at least one record to fit")
    dim = shards[0][0].shape[1]
    for i, (X, _) in enumerate(shards):
        if X.shape[1] != dim:
            raise ValueError(f"shard {i} has dimension {X.shape[1]}, shard 0 has {dim}")
    return shards


def check_shard(i: int, X, y) -> Shard:
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError("sparse input is not supported: pass the embeddings as a dense "
                        "array (an EmbeddingSet shard is one)")
    X = X if isinstance(X, np.ndarray) else np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}"
                         + (f" in shard {i}" if i else ""))
    if X.dtype.kind not in "fiu":
        raise ValueError(f"X must hold numbers, got dtype {X.dtype}")
    if X.shape[1] == 0:  # scikit-learn's wording: nothing to model in zero dimensions
        raise ValueError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
                         + (f" (shard {i})" if i else ""))
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with one label per row of X: X has {len(X)} rows, "
                         f"y has shape {y.shape}")
    if len(y) and y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return X, y


def resolve_classes(shards: Sequence[Shard], classes: Sequence | None) -> np.ndarray:
    """The class list: ``classes`` checked, or (with a warning: it is then read from the
    private data) the labels present."""
    if classes is not None:
        arr = np.asarray(classes)
        if arr.ndim != 1 or len(arr) == 0 or arr.dtype.kind not in "iu":
            raise ValueError(f"classes must be a non-empty 1-D list of integer labels, "
                             f"got {classes!r}")
        if len(np.unique(arr)) != len(arr):
            raise ValueError(f"classes has duplicates: {arr.tolist()}")
        return arr
    warnings.warn("classes were read from the labels: the set of labels present is treated "
                  "as public. Pass classes= to keep the class list data-independent.",
                  stacklevel=3)
    return np.unique(np.concatenate([np.unique(y) for _, y in shards]))


def bounded_chunks(shards: Sequence[Shard], classes: np.ndarray, *, chunk_rows: int,
                   clip_norm: float, normalize: bool, reuse: bool = False
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Bounded records (:func:`~dpsynth.preprocessing.bound_norms`) and class indices into
    ``classes``, chunk by chunk.

    A bad row is refused with its position (never bounded to a silent zero row): rows
    holding NaN or inf first, then labels outside ``classes``, then rows whose norm
    overflows. ``reuse=True`` bounds every chunk into one buffer, so a chunk is only
    valid until the next is drawn: for the fit's own passes, which consume each chunk
    before asking for the next (a fresh (chunk, d) array per chunk page-faulted in
    anew each time, ~0.3 s of a fresh process's 60k x 1280 fit). A clusterer, which
    may be a plugin, gets fresh arrays.
    """
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    order = (np.argsort(classes, kind="stable")
             if classes.dtype.kind == "i" and len(classes) else None)
    buffer: np.ndarray | None = None

    def where(shard: int, row: int) -> str:
        return f"row {row}" + (f" of shard {shard}" if len(shards) > 1 else "")

    def class_index(y: np.ndarray) -> np.ndarray:
        if order is not None and y.dtype.kind == "i":  # integer labels: vectorised
            pos = np.minimum(np.searchsorted(classes, y, sorter=order), len(order) - 1)
            hit = classes[order[pos]] == y
            return np.where(hit, order[pos], -1).astype(np.int64)
        return np.fromiter((lookup.get(v, -1) for v in y.tolist()), np.int64, len(y))

    for shard, start, X, y in iter_located_chunks(shards, int(chunk_rows)):
        target = X
        if reuse and X.dtype.kind in "biuf":
            dtype = np.float32 if X.dtype == np.float32 else np.float64
            if buffer is None or buffer.dtype != dtype or len(buffer) < len(X):
                buffer = np.empty((max(len(X), int(chunk_rows)), X.shape[1]), dtype)
            target = buffer[:len(X)]
            np.copyto(target, X)
        failed = None
        try:
            bounded = bound_norms(target, clip_norm, normalize, inplace=target is not X)
        except NormOverflowError as exc:
            failed = exc.rows  # NaN/inf rows and overflowing ones, in row order
        if failed is not None:
            for row in failed:
                cols = np.flatnonzero(~np.isfinite(X[row]))
                if len(cols):
                    raise ValueError(
                        f"X contains NaN or infinite values: {where(shard, start + row)}"
                        f", column {cols[0]} is {X[row, cols[0]]}")
        idx = class_index(y)
        if (idx < 0).any():
            bad = sorted(set(y[idx < 0].tolist()))[:5]
            raise ValueError(f"labels {bad} are not in classes={classes.tolist()}")
        if failed is not None:
            row = int(failed[0])
            raise ValueError(
                f"X has a row whose L2 norm overflows float64: {where(shard, start + row)} "
                f"(largest |value| {np.abs(X[row]).max():.3g}); rows that large cannot be "
                "clipped or normalised reliably and are refused (check the embeddings)")
        yield bounded, idx
