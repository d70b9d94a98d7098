"""A shared DP subspace: top eigenvectors of a noisy global second-moment matrix.

This module owns the release ``subspace_second_moment`` (:func:`release_specs`, noise
added in :func:`release_subspace`). The basis V (top ``dim`` eigenvectors of the noisy
matrix) is post-processing. Noise in later per-class releases then scales with ``dim``
instead of the embedding dimension.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec
from dpsynth.privacy.plan import mechanism_of

#: Release name: the noisy global second-moment matrix.
SUBSPACE_SECOND_MOMENT = "subspace_second_moment"

#: Default budget weight (relative noise multiplier): the shared subspace pays back a
#: larger share of the budget than a per-class release, so it gets half the noise
#: multiplier of the sums (DESIGN.md's measured hints).
DEFAULT_WEIGHTS: dict[str, float] = {SUBSPACE_SECOND_MOMENT: 0.5}


def release_specs(radius: float, weights: dict[str, float]) -> list[ReleaseSpec]:
    """The release of :func:`release_subspace`; ``weights`` holds :data:`DEFAULT_WEIGHTS`'s
    keys (with the user's overrides)."""
    return [ReleaseSpec(
        SUBSPACE_SECOND_MOMENT, radius**2, weights[SUBSPACE_SECOND_MOMENT], scope="global",
        description="sum of x x^T over all records (upper triangle)",
        mechanism=mechanism_of(release_subspace))]


class GramAccumulator:
    """Exact sum of outer products, accumulated chunk by chunk (upper triangle)."""

    def __init__(self, dim: int) -> None:
        self.gram = np.zeros((dim, dim))

    def add(self, X: np.ndarray) -> None:
        # syrk computes only one triangle: half the flops of X.T @ X, no transposed copy.
        # float32 records (the embeddings' dtype) are accumulated in float32 within the
        # chunk and added to the float64 total: twice the speed and half the traffic of a
        # float64 copy. Safe: each entry is a sum of at most chunk_rows products bounded by
        # R^2, rounded at ~6e-8 relative, so its error is ~1e-4 R^2 per 40k rows (measured
        # in tests/test_fast_fit.py), while the release adds noise of sigma >= 0.35 R^2 to
        # every entry at the loosest calibrated epsilon (20) - three orders of magnitude
        # more, and the eigenvectors move with the noise, not with the rounding.
        if X.dtype == np.float32:
            self.gram += blas.ssyrk(1.0, X.T, trans=0, lower=0)
        else:
            self.gram += blas.dsyrk(1.0, np.asarray(X, np.float64).T, trans=0, lower=0)

    def symmetric(self) -> np.ndarray:
        upper = np.triu(self.gram)
        return upper + np.triu(upper, 1).T


def release_subspace(gram: GramAccumulator, dim: int, plan: PrivacyPlan,
                     noise: NoiseSource) -> tuple[np.ndarray, np.ndarray, float]:
    """Noisy second moment -> (V, top eigenvalues, trace), all post-processing of it.

    Release ``subspace_second_moment``: M = sum_x x x^T + E, with E symmetric Gaussian
    noise of the plan's sigma (upper triangle i.i.d., mirrored). Adding or removing a
    record changes the released upper triangle by the upper triangle of x x^T, whose L2
    norm is at most ||x||^2 <= R^2: L2 sensitivity R^2, one repetition, global scope
    (every record contributes).

    V is ``(d, dim)`` with orthonormal columns; V^T M V = diag(eigenvalues) for the noisy M.

    Only the upper triangle is formed: the Gram holds its upper triangle (syrk), the noise
    is drawn as a full (d, d) array of which the upper triangle is used (the same draws as
    ``NoiseSource.symmetric_gaussian``, whose upper triangle this is), and ``eigh`` reads
    one triangle: it is given the transpose, a Fortran-ordered view of the same memory,
    whose lower triangle is that upper one. So LAPACK sees the values the mirrored matrix
    gave it, in the same places (the same eigenpairs bit for bit, eigenvector signs
    included), without the mirror's two (d, d) passes and temporaries (~0.1 s at
    d = 1280). The other triangle of ``noisy`` is noise nobody reads.
    """
    release = plan.release(SUBSPACE_SECOND_MOMENT)
    d = gram.gram.shape[0]
    noisy = noise.gaussian(release, (d, d))
    noisy += gram.gram  # upper triangle: sum x x^T + E, the release
    trace = float(np.trace(noisy))
    # Only the top ``dim`` eigenpairs are needed: a partial decomposition is much cheaper.
    eigvals, eigvecs = linalg.eigh(noisy.T, lower=True, subset_by_index=[d - dim, d - 1],
                                   overwrite_a=True)
    order = np.argsort(eigvals)[::-1]
    return eigvecs[:, order], eigvals[order], trace
