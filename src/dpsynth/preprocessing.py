"""Per-record bounding of embeddings: what gives every sum its sensitivity.

Each row is either L2-normalised (CLIP-style encoders) or clipped to norm <= R. Both act
on one record at a time and use only public constants, so they are not releases.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

Shard = tuple[np.ndarray, np.ndarray]


def bound_norms(X: np.ndarray, radius: float, normalize: bool) -> np.ndarray:
    """Rows scaled to norm ``radius`` (normalize) or clipped to norm <= ``radius``.

    A zero row stays zero under normalisation (it has no direction to keep). float32 input
    stays float32 (half the memory traffic); anything else becomes float64.
    """
    X = np.asarray(X)
    X = X if X.dtype == np.float32 else X.astype(np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    if normalize:
        return X * (radius / safe) * (norms > 0)
    return X * np.minimum(1.0, radius / safe)


def iter_chunks(shards: Sequence[Shard], chunk_rows: int) -> Iterator[Shard]:
    """Yield (X, y) row chunks of every shard in order, never loading a whole shard.

    Shards may be numpy memmaps: slicing a memmap reads only that slice.
    """
    for X, y in shards:
        for start in range(0, len(X), chunk_rows):
            stop = start + chunk_rows
            yield np.asarray(X[start:stop]), np.asarray(y[start:stop])
