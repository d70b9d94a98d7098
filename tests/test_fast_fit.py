"""Fast fit (issue 14): the shortcuts the fit takes are checked against the slow way.

* the shared subspace takes the top-r eigenpairs only (LAPACK's subset driver), checked
  against the full decomposition of the same noisy matrix;
* float32 records are accumulated in float32 within a chunk (Gram, class sums, the
  per-component second moments in the subspace, centred or not): checked against float64
  accumulation, the difference far below the DP noise of the release;
* norms are bounded with one (m, d) buffer, equal bit for bit to ``np.linalg.norm``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.clustering.stats import GroupSums
from dpsynth.gmm.mixture import SECOND_MOMENTS, SecondOrderStats
from dpsynth.gmm.subspace import SUBSPACE_SECOND_MOMENT, GramAccumulator, release_subspace
from dpsynth.preprocessing import bound_norms, row_norms
from dpsynth.privacy import NoiseSource

D, R = 96, 8


def _records(n: int, seed: int = 0) -> np.ndarray:
    """Unit-norm rows with a clear top-R structure (a spectral gap after R)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, R)))[0]
    X = rng.normal(size=(n, R)) * np.linspace(3.0, 1.5, R) @ basis.T
    X += 0.2 * rng.normal(size=(n, D))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _plan(epsilon: float = 20.0):  # one calibration (cached) for the whole module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPSynthesizer(epsilon, 1e-5, subspace_dim=R, noise_seed=0).make_plan(D)


def _released_and_mirrored(rows: int, seed: int, noise_seed: int):
    """release_subspace's (V, eigenvalues, trace) and the noisy matrix it decomposes,
    built the slow way: the mirrored Gram plus the same draws of symmetric noise."""
    gram = GramAccumulator(D)
    gram.add(_records(rows, seed=seed))
    plan = _plan()
    released = release_subspace(gram, R, plan, NoiseSource(noise_seed))
    mirrored = gram.symmetric() + NoiseSource(noise_seed).symmetric_gaussian(
        plan.release(SUBSPACE_SECOND_MOMENT), D)
    return (*released, mirrored)


def test_top_r_eigenpairs_match_the_full_decomposition():
    V, eigenvalues, trace, noisy = _released_and_mirrored(5000, 0, 3)
    full_values, full_vectors = np.linalg.eigh(noisy)
    top = full_vectors[:, ::-1][:, :R]
    np.testing.assert_allclose(eigenvalues, full_values[::-1][:R], rtol=1e-10)
    np.testing.assert_allclose(V @ V.T, top @ top.T, atol=1e-9)
    np.testing.assert_allclose(V.T @ V, np.eye(R), atol=1e-12)
    np.testing.assert_allclose(V.T @ noisy @ V, np.diag(eigenvalues), atol=1e-9)
    assert trace == pytest.approx(np.trace(noisy), rel=1e-12)


def test_one_triangle_gives_the_mirrored_matrix_eigenpairs_bit_for_bit():
    """release_subspace hands LAPACK the transpose of (upper Gram + noise) instead of the
    mirrored matrix: the same values in the places LAPACK reads, so the same bits (the
    eigenvector signs too, which downstream clustering coordinates depend on)."""
    from scipy import linalg

    V, eigenvalues, trace, mirrored = _released_and_mirrored(3000, 4, 5)
    values, vectors = linalg.eigh(mirrored, subset_by_index=[D - R, D - 1])
    order = np.argsort(values)[::-1]
    assert np.array_equal(V, vectors[:, order])
    assert np.array_equal(eigenvalues, values[order])
    assert trace == float(np.trace(mirrored))


def test_one_blas_thread_limits_and_restores_numpy_blas():
    from threadpoolctl import threadpool_info

    from dpsynth.blas_threads import one_blas_thread

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    assert before  # numpy's and scipy's BLAS are loaded
    with one_blas_thread():
        assert set(blas_threads()) == {1}
    assert blas_threads() == before


@pytest.mark.parametrize("chunk", [512, 16384])
def test_float32_accumulation_is_far_below_the_noise(chunk):
    # The argument in GramAccumulator.add: per chunk, each float32 entry is a sum of
    # `chunk` products bounded by R^2 = 1, rounded at ~6e-8 relative; the DP noise on that
    # entry has sigma >= ~0.1 R^2 for any calibrated epsilon (<= 20). Measured here against
    # float64 accumulation of the same records, at the loosest calibrated epsilon.
    X = _records(40_000, seed=1)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, len(X))
    g32, g64 = GramAccumulator(D), GramAccumulator(D)
    s32, s64 = GroupSums.zeros(5, D), GroupSums.zeros(5, D)
    for start in range(0, len(X), chunk):
        rows = slice(start, start + chunk)
        X32 = bound_norms(X[rows].astype(np.float32), 1.0, True)
        X64 = bound_norms(X[rows], 1.0, True)
        g32.add(X32)
        g64.add(X64)
        s32.add(X32, labels[rows])
        s64.add(X64, labels[rows])
    plan = _plan()
    gram_sigma = plan.release(SUBSPACE_SECOND_MOMENT).sigma
    sums_sigma = plan.release("class_sums").sigma
    assert np.abs(g32.symmetric() - g64.symmetric()).max() < 1e-3 * gram_sigma
    assert np.abs(s32.sums - s64.sums).max() < 1e-3 * sums_sigma
    np.testing.assert_array_equal(s32.counts, s64.counts)


@pytest.mark.parametrize("clip", [None, 0.8])
def test_float32_second_moments_are_far_below_the_noise(clip):
    # SecondOrderStats.add keeps float32 records in float32 (the basis and the centring
    # anchors are cast to the records' dtype); the same argument as the Gram's. Measured
    # against float64 records, chunk by chunk, at the loosest calibrated epsilon.
    X = _records(40_000, seed=3)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, len(X))
    basis = np.linalg.qr(rng.normal(size=(D, R)))[0]
    anchors = None if clip is None else 0.3 * np.linalg.qr(rng.normal(size=(D, 5)))[0].T
    kw = {"anchors": anchors, "clip": clip}
    s32, s64 = (SecondOrderStats(5, D, R, "lowrank", **kw) for _ in range(2))
    for start in range(0, len(X), 16384):
        rows = slice(start, start + 16384)
        s32.add(bound_norms(X[rows].astype(np.float32), 1.0, True), labels[rows], basis)
        s64.add(bound_norms(X[rows], 1.0, True), labels[rows], basis)
    sigma = _plan().release(SECOND_MOMENTS).sigma * (1.0 if clip is None else clip**2)
    assert np.abs(s32.second - s64.second).max() < 1e-3 * sigma
    assert np.abs(s32.residual - s64.residual).max() < 1e-3 * sigma


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("normalize", [True, False])
def test_bounding_is_the_textbook_formula_bit_for_bit(dtype, normalize):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(1000, 37)) * rng.uniform(0.0, 3.0, size=(1000, 1)) * 4
         ).astype(dtype)
    X[5] = 0
    ref = X if X.dtype == np.float32 else X.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_array_equal(row_norms(ref), norms)
    safe = np.where(norms > 0, norms, 1.0)
    want = (ref * (2.0 / safe) * (norms > 0) if normalize
            else ref * np.minimum(1.0, 2.0 / safe))
    before = X.copy()
    got = bound_norms(X, 2.0, normalize)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    np.testing.assert_array_equal(X, before)  # the input is never modified
    if X.dtype.kind == "f":
        inplace = bound_norms(X, 2.0, normalize, inplace=True)
        assert inplace is X and np.array_equal(X, want)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, object])
def test_chunks_map_labels_and_reuse_one_buffer(label_dtype):
    # Integer labels are mapped to class indices with a vectorised search, others through
    # a dict: both must give the same indices, in the user's (unsorted) class order, and
    # refuse a label outside the classes. The fit's own passes bound every chunk into one
    # reused buffer; its values equal a fresh bounding bit for bit.
    classes = [7, 3, 12, 0] if label_dtype is np.uint8 else [7, -3, 12, 0]
    synth = DPSynthesizer(1.0, 1e-5, chunk_rows=100)
    synth.classes_ = np.asarray(classes)
    rng = np.random.default_rng(5)
    y = np.asarray(rng.choice(classes, size=250)).astype(label_dtype)
    X = rng.normal(size=(250, 6)).astype(np.float32)
    want = np.array([classes.index(v) for v in y.tolist()])
    for reuse in (False, True):
        chunks = [(Xb.copy(), idx) for Xb, idx in synth._chunks([(X, y)], reuse=reuse)]
        np.testing.assert_array_equal(np.concatenate([i for _, i in chunks]), want)
        np.testing.assert_array_equal(np.concatenate([Xb for Xb, _ in chunks]),
                                      bound_norms(X, 1.0, True))
    bad = y.copy()
    bad[130] = 5
    with pytest.raises(ValueError, match=r"labels \[5\] are not in classes"):
        list(synth._chunks([(X, bad)], reuse=True))
