"""A shared DP subspace: top eigenvectors of a noisy global second-moment matrix.

Release ``subspace_second_moment``: M = sum_x x x^T + E, with E symmetric Gaussian noise
(upper triangle i.i.d., mirrored). Adding or removing a record changes the released
upper triangle by the upper triangle of x x^T, whose L2 norm is at most ||x||^2 <= R^2:
L2 sensitivity R^2, one repetition, global scope (every record contributes). The basis V
(top ``dim`` eigenvectors of M) is post-processing. Noise in later per-class releases then
scales with ``dim`` instead of the embedding dimension.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from dpsynth.privacy import NoiseSource, Release


class GramAccumulator:
    """Exact sum of outer products, accumulated chunk by chunk (upper triangle)."""

    def __init__(self, dim: int) -> None:
        self.gram = np.zeros((dim, dim))

    def add(self, X: np.ndarray) -> None:
        # syrk computes only one triangle: half the flops of X.T @ X, no transposed copy.
        if X.dtype == np.float32:
            self.gram += blas.ssyrk(1.0, X.T, trans=0, lower=0)
        else:
            self.gram += blas.dsyrk(1.0, np.asarray(X, np.float64).T, trans=0, lower=0)

    def symmetric(self) -> np.ndarray:
        upper = np.triu(self.gram)
        return upper + np.triu(upper, 1).T


def release_subspace(gram: GramAccumulator, dim: int, release: Release,
                     noise: NoiseSource) -> tuple[np.ndarray, np.ndarray, float]:
    """Noisy second moment -> (V, top eigenvalues, trace), all post-processing of it.

    V is ``(d, dim)`` with orthonormal columns; V^T M V = diag(eigenvalues) for the noisy M.
    """
    noisy = gram.symmetric() + noise.symmetric_gaussian(release, gram.gram.shape[0])
    trace = float(np.trace(noisy))
    d = noisy.shape[0]
    # Only the top ``dim`` eigenpairs are needed: a partial decomposition is much cheaper.
    eigvals, eigvecs = linalg.eigh(noisy, subset_by_index=[d - dim, d - 1])
    order = np.argsort(eigvals)[::-1]
    return eigvecs[:, order], eigvals[order], trace
