"""Per-record bounding of embeddings: what gives every sum its sensitivity.

Each row is either L2-normalised (CLIP-style encoders) or clipped to norm <= R. Both act
on one record at a time and use only public constants, so they are not releases.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

Shard = tuple[np.ndarray, np.ndarray]


class NormOverflowError(ValueError):
    """Rows whose L2 norm is not finite in float64 (``rows``: their indices in the input)."""

    def __init__(self, message: str, rows: np.ndarray) -> None:
        super().__init__(message)
        self.rows = rows


def bound_norms(X: np.ndarray, radius: float, normalize: bool, *,
                inplace: bool = False) -> np.ndarray:
    """Rows scaled to norm ``radius`` (normalize) or clipped to norm <= ``radius``.

    A zero row stays zero under normalisation (it has no direction to keep). float32 input
    stays float32 (half the memory traffic); anything else becomes float64.

    ``inplace=True`` scales a writeable float32/float64 ``X`` in place and returns it (the
    sampler bounds each shard it owns without a second shard-sized copy); otherwise one
    new array is returned. Either way each row is multiplied once by one per-row factor,
    so the values are the same bit for bit.

    Raises :class:`NormOverflowError` for rows whose norm is not finite (inf/NaN entries,
    or a norm beyond float64's range): dividing by it would silently zero the row.
    """
    X = np.asarray(X)
    owned = inplace and X.dtype in (np.float32, np.float64) and X.flags.writeable
    if not owned and X.dtype != np.float32:
        X, owned = X.astype(np.float64), True  # a copy: ours to scale in place
    with np.errstate(over="ignore"):  # an overflowing norm is handled (refused) below
        norms = row_norms(X)
    if X.dtype == np.float32 and not np.isfinite(norms).all():
        # float32 squares overflow for entries above ~1.8e19 while the norm itself may be
        # representable: redo this (rare) chunk in float64; bounded rows fit float32 again.
        bounded = bound_norms(X.astype(np.float64), radius, normalize).astype(np.float32)
        if owned:
            X[...] = bounded
            return X
        return bounded
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]))
    if len(bad):
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise NormOverflowError(
            f"{len(bad)} row(s) have a non-finite L2 norm (rows {shown}): they hold inf or "
            "NaN values, or values so large (~1e154 or more) that the norm overflows "
            "float64; bounding would silently zero them", bad)
    safe = np.where(norms > 0, norms, 1.0)
    # One factor per row (the 0/1 mask multiplies exactly), applied in one pass over X.
    factor = (radius / safe) * (norms > 0) if normalize else np.minimum(1.0, radius / safe)
    return np.multiply(X, factor, out=X if owned else None)


#: Rows per block of :func:`row_norms`: its squares stay in cache (~1 MB at d = 1280).
_NORM_BLOCK = 256


def row_norms(X: np.ndarray) -> np.ndarray:
    """L2 norm of each row, (m, 1), in X's dtype: ``np.linalg.norm(X, axis=1,
    keepdims=True)`` bit for bit (the same squares and the same pairwise sum per row), in
    row blocks, so the squares never take a second (m, d) array."""
    norms = np.empty((len(X), 1), dtype=X.dtype)
    for start in range(0, len(X), _NORM_BLOCK):
        block = X[start:start + _NORM_BLOCK]
        np.sqrt(np.add.reduce(block * block, axis=1, keepdims=True),
                out=norms[start:start + _NORM_BLOCK])
    return norms


def iter_chunks(shards: Sequence[Shard], chunk_rows: int) -> Iterator[Shard]:
    """Yield (X, y) row chunks of every shard in order, never loading a whole shard.

    Shards may be numpy memmaps: slicing a memmap reads only that slice.
    """
    for _, _, X, y in iter_located_chunks(shards, chunk_rows):
        yield X, y


def iter_located_chunks(shards: Sequence[Shard], chunk_rows: int
                        ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Like :func:`iter_chunks`, with each chunk's position: (shard index, first row of the
    chunk within that shard, X, y), so a bad row can be reported where it is."""
    for i, (X, y) in enumerate(shards):
        for start in range(0, len(X), chunk_rows):
            stop = start + chunk_rows
            yield i, start, np.asarray(X[start:stop]), np.asarray(y[start:stop])
