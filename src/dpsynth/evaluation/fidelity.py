"""Fidelity of synthetic embeddings: Frechet distance to real (test) embeddings."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def frechet_distance(X_real: np.ndarray, X_syn: np.ndarray) -> float:
    """||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^{1/2}) between Gaussian fits."""
    X_real = np.asarray(X_real, dtype=np.float64)
    X_syn = np.asarray(X_syn, dtype=np.float64)
    if X_real.ndim != 2 or X_syn.ndim != 2 or X_real.shape[1] != X_syn.shape[1]:
        raise ValueError(f"need two (n, d) arrays of the same d, got {X_real.shape} and "
                         f"{X_syn.shape}")
    if len(X_real) < 2 or len(X_syn) < 2:
        raise ValueError("need at least 2 rows in each set")
    mu_r, mu_s = X_real.mean(0), X_syn.mean(0)
    S_r, S_s = np.cov(X_real, rowvar=False), np.cov(X_syn, rowvar=False)
    with warnings.catch_warnings():
        # Low-rank embeddings give singular covariances; sqrtm's result is still the
        # right matrix square root on the support, which is all the trace needs.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(S_r @ S_s)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = float(((mu_r - mu_s) ** 2).sum() + np.trace(S_r + S_s - 2.0 * covmean))
    return max(value, 0.0)
