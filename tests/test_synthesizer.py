"""DPSynthesizer end to end: recovery, sharding, persistence, input validation, modes."""

from __future__ import annotations

import collections
import copy
import inspect
import json
import shutil
import warnings
from numbers import Integral

import numpy as np
import pydantic
import pytest
import sklearn.base
import sklearn.exceptions
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

import dpsynth.synthesizer
from dpsynth import DPSynthesizer, NotFittedError, steps
from dpsynth import config as config_module
from dpsynth.config import ModelConfig, PrivacyConfig, load_config
from dpsynth.preprocessing import NormOverflowError, bound_norms
from dpsynth.privacy import NoiseSource
from dpsynth.synthesizer import ModelFileError

DELTA = 1e-5
INF = float("inf")
SEEDED = pytest.mark.filterwarnings("ignore:noise_seed is set:UserWarning")

# ---------------------------------------------------------------------------- recovery
# 3 classes in d = 16, each a 0.3/0.7 mixture of two isotropic Gaussians. Means are random
# directions scaled to norm 0.6, std 0.04 per coordinate. We fit with normalize=False and
# clip_norm=1: rows are then used as they are (no row reaches norm 1, checked below), so the
# generating means and weights are exactly what the mixture should recover.
REC_DIM = 16
REC_CLASSES = np.array([3, 7, 11])  # non-contiguous labels catch index/label mix-ups
REC_SIZES = (24_000, 30_000, 36_000)
REC_WEIGHTS = (0.3, 0.7)
REC_STD = 0.04


@pytest.fixture(scope="module")
def mixture_data():
    rng = np.random.default_rng(1234)
    dirs = rng.standard_normal((2 * len(REC_CLASSES), REC_DIM))
    means = 0.6 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    X_parts, y_parts = [], []
    for c, label in enumerate(REC_CLASSES):
        n_first = round(REC_WEIGHTS[0] * REC_SIZES[c])
        for j, n_j in enumerate((n_first, REC_SIZES[c] - n_first)):
            X_parts.append(means[2 * c + j] + REC_STD * rng.standard_normal((n_j, REC_DIM)))
            y_parts.append(np.full(n_j, label))
    order = rng.permutation(sum(REC_SIZES))
    X, y = np.concatenate(X_parts)[order], np.concatenate(y_parts)[order]
    # Preconditions: no row is clipped, and components are far apart compared to their spread
    # (radius ~ 0.04 * sqrt(16) = 0.16), so nearest-mean matching is unambiguous.
    assert np.linalg.norm(X, axis=1).max() < 1.0
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(len(means), dtype=bool)]
    assert gaps.min() > 0.4
    return X, y, means


def _fit_mixture(data, eps, k, covariance="diagonal", subspace_dim=None):
    X, y, _ = data
    synth = DPSynthesizer(eps, DELTA, components_per_class=k, covariance=covariance,
                          subspace_dim=subspace_dim, normalize=False, clip_norm=1.0,
                          random_state=0, noise_seed=None if eps == INF else 3)
    if eps == INF:
        return synth.fit(X, y, classes=REC_CLASSES)
    with pytest.warns(UserWarning, match="NOT private"):
        return synth.fit(X, y, classes=REC_CLASSES)


@pytest.fixture(scope="module")
def fit_inf_k2(mixture_data):
    return _fit_mixture(mixture_data, INF, 2)


@pytest.fixture(scope="module")
def fit_eps1_k2(mixture_data):
    return _fit_mixture(mixture_data, 1.0, 2, covariance="lowrank", subspace_dim=8)


@pytest.fixture(scope="module")
def fit_eps1_k1(mixture_data):
    return _fit_mixture(mixture_data, 1.0, 1)


def _match_components(synth, c, true_means):
    """(fitted means, normalised weights) of class index c, ordered like ``true_means``."""
    m = synth.mixture_
    sel = m.component_class == c
    means, weights = m.means[sel], m.weights[sel] / m.weights[sel].sum()
    assert len(means) == len(true_means)
    nearest = np.linalg.norm(true_means[:, None] - means[None], axis=-1).argmin(1)
    assert sorted(nearest) == list(range(len(true_means))), "matching is not one-to-one"
    return means[nearest], weights[nearest]


def test_non_private_fit_recovers_means_weights_and_variances(mixture_data, fit_inf_k2):
    _, _, true_means = mixture_data
    synth = fit_inf_k2
    assert synth.private_ is False
    for c in range(len(REC_CLASSES)):
        means, weights = _match_components(synth, c, true_means[2 * c:2 * c + 2])
        # Sampling error of a component mean: 0.04 * sqrt(16 / 7,200) ~ 0.002 in L2; 0.01 is
        # 5 standard errors.
        assert np.linalg.norm(means - true_means[2 * c:2 * c + 2], axis=1).max() < 0.01
        # Exact counts were 30% / 70%; with no noise only misclustering could move them.
        np.testing.assert_allclose(weights, REC_WEIGHTS, atol=0.02)
    # No subspace (subspace_dim=None): diagonal covariances are per coordinate, 0.04^2. The
    # relative std error of a variance from >= 7,200 points is sqrt(2/7200) ~ 1.7%: allow 10%.
    assert synth.subspace_ is None
    np.testing.assert_allclose(synth.mixture_.covariances, REC_STD**2, rtol=0.10)


@SEEDED
def test_private_fit_recovers_means_and_weights(mixture_data, fit_eps1_k2):
    _, _, true_means = mixture_data
    synth = fit_eps1_k2
    plan = synth.privacy_plan_
    # Noise on a component mean is ~ sigma_sums * sqrt(d) / n_j (n_j >= 7,200 records) and on
    # a weight sigma_counts / n_class: both far below the stated tolerances (asserted).
    n_min = REC_WEIGHTS[0] * min(REC_SIZES)
    assert 5 * plan.release("component_sums").sigma * np.sqrt(REC_DIM) / n_min < 0.05
    assert 5 * plan.release("component_counts").sigma / min(REC_SIZES) < 0.05
    for c in range(len(REC_CLASSES)):
        means, weights = _match_components(synth, c, true_means[2 * c:2 * c + 2])
        assert np.linalg.norm(means - true_means[2 * c:2 * c + 2], axis=1).max() < 0.05
        np.testing.assert_allclose(weights, REC_WEIGHTS, atol=0.05)


@SEEDED
def test_private_single_component_recovers_class_means(mixture_data, fit_eps1_k1):
    _, _, true_means = mixture_data
    synth = fit_eps1_k1
    m = synth.mixture_
    assert list(m.component_class) == [0, 1, 2]
    for c in range(len(REC_CLASSES)):
        expected = REC_WEIGHTS[0] * true_means[2 * c] + REC_WEIGHTS[1] * true_means[2 * c + 1]
        # Sampling error ~ 0.04 * 4 / sqrt(24,000) ~ 0.001, noise ~ sigma_sums * 4 / 24,000.
        assert np.linalg.norm(m.means[c] - expected) < 0.02
    # Released class totals are the class sizes up to the class-count noise (5 sigma).
    sigma = synth.privacy_plan_.release("class_counts").sigma
    np.testing.assert_allclose(synth.class_totals_, REC_SIZES, atol=5 * sigma)


@SEEDED
@pytest.mark.parametrize("which", ["fit_inf_k2", "fit_eps1_k2", "fit_eps1_k1"])
def test_samples_reproduce_class_proportions(request, which):
    synth = request.getfixturevalue(which)
    n = 20_000
    X_syn, y_syn = synth.sample(n, random_state=0)
    assert X_syn.shape == (n, REC_DIM) and X_syn.dtype == np.float32
    assert y_syn.shape == (n,)
    assert set(np.unique(y_syn)) <= set(REC_CLASSES.tolist())
    proportions = np.array([(y_syn == label).mean() for label in REC_CLASSES])
    np.testing.assert_allclose(proportions, np.array(REC_SIZES) / sum(REC_SIZES), atol=0.02)
    # normalize=False, clip_norm=1: samples are clipped to the ball, not normalised.
    assert np.linalg.norm(X_syn.astype(np.float64), axis=1).max() <= 1.0 + 1e-6


def test_samples_follow_their_class_distribution(mixture_data, fit_inf_k2):
    _, _, true_means = mixture_data
    X_syn, y_syn = fit_inf_k2.sample(20_000, random_state=1)
    for c, label in enumerate(REC_CLASSES):
        expected = REC_WEIGHTS[0] * true_means[2 * c] + REC_WEIGHTS[1] * true_means[2 * c + 1]
        got = X_syn[y_syn == label].astype(np.float64).mean(0)
        # >= 5,000 samples a class; a class's L2 spread is <~ 0.6 (0.3/0.7 mix of means ~1
        # apart, plus 0.16 within), so its sample mean is within ~0.01; allow 0.03.
        assert np.linalg.norm(got - expected) < 0.03


def test_sampling_is_reproducible_and_zero_rows_work(fit_inf_k2):
    a = fit_inf_k2.sample(500, random_state=7)
    b = fit_inf_k2.sample(500, random_state=7)
    c = fit_inf_k2.sample(500, random_state=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    X0, y0 = fit_inf_k2.sample(0)
    assert X0.shape == (0, REC_DIM) and y0.shape == (0,)


# ----------------------------------------------------------------- sharded == in memory
SHARD_CLASSES = [0, 1, 2]


@pytest.fixture(scope="module")
def shard_data():
    # float64 data: float32 input agrees only to float32 rounding (tested separately).
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, 3000)
    X = centres[y] + 0.5 * rng.normal(size=(3000, 16))
    return X, y


def _shard_synth(k, **kwargs):
    return DPSynthesizer(1.0, DELTA, components_per_class=k, covariance="lowrank",
                         subspace_dim=4, random_state=0, noise_seed=11, **kwargs)


def _assert_same_fit(a, b, *, compare_sample_values=True):
    for field in ("component_class", "weights", "means", "covariances", "residual_var",
                  "class_totals"):
        x, z = getattr(a.mixture_, field), getattr(b.mixture_, field)
        assert x.shape == z.shape, field
        np.testing.assert_allclose(x, z, rtol=1e-6, atol=1e-8, err_msg=field)
    np.testing.assert_allclose(a.subspace_, b.subspace_, rtol=1e-6, atol=1e-8)
    Xa, ya = a.sample(2000, random_state=3)
    Xb, yb = b.sample(2000, random_state=3)
    assert np.array_equal(ya, yb)
    if compare_sample_values:
        np.testing.assert_allclose(Xa, Xb, rtol=1e-6, atol=1e-8)


def _sharded_fits(X, y, tmp_path, k):
    """The same fit four ways: in memory, 3 shards, 3 shards in 333-row chunks, memmaps."""
    a, b = 1000, 2200
    whole = _shard_synth(k).fit(X, y, classes=SHARD_CLASSES)
    shards = [(X[:a], y[:a]), (X[a:b], y[a:b]), (X[b:], y[b:])]
    sharded = _shard_synth(k).fit_shards(shards, classes=SHARD_CLASSES)
    chunked = _shard_synth(k, chunk_rows=333).fit_shards(shards, classes=SHARD_CLASSES)
    mapped = []
    for i, (Xs, ys) in enumerate(shards):
        mx = np.memmap(tmp_path / f"x{i}.dat", dtype=np.float64, mode="w+", shape=Xs.shape)
        my = np.memmap(tmp_path / f"y{i}.dat", dtype=np.int64, mode="w+", shape=ys.shape)
        mx[:], my[:] = Xs, ys
        mx.flush()
        my.flush()
        mapped.append((np.memmap(tmp_path / f"x{i}.dat", dtype=np.float64, mode="r",
                                 shape=Xs.shape),
                       np.memmap(tmp_path / f"y{i}.dat", dtype=np.int64, mode="r",
                                 shape=ys.shape)))
    memmapped = _shard_synth(k, chunk_rows=333).fit_shards(mapped, classes=SHARD_CLASSES)
    assert isinstance(mapped[0][0], np.memmap)
    return whole, [sharded, chunked, memmapped]


@SEEDED
@pytest.mark.parametrize("k", [1, 3])
def test_sharded_and_streamed_fits_equal_the_in_memory_fit(shard_data, tmp_path, k):
    X, y = shard_data
    whole, others = _sharded_fits(X, y, tmp_path, k)
    assert len(whole.mixture_.weights) >= (3 if k == 1 else 4)
    for other in others:
        _assert_same_fit(whole, other)


def _large_fits(dtype):
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, 20_000)
    X = (centres[y] + 0.5 * rng.normal(size=(20_000, 16))).astype(dtype)
    return [DPSynthesizer(INF, DELTA, subspace_dim=4, random_state=0, chunk_rows=rows)
            .fit(X, y, classes=SHARD_CLASSES) for rows in (16384, 1000)]


def _assert_same_subspace_and_mixture(fits, rtol=1e-6, atol=1e-8):
    # Compare the projectors V V^T (independent of the eigenvectors' signs).
    P0, P1 = (f.subspace_ @ f.subspace_.T for f in fits)
    np.testing.assert_allclose(P0, P1, rtol=rtol, atol=atol)
    for field in ("means", "covariances", "residual_var", "weights"):
        np.testing.assert_allclose(getattr(fits[0].mixture_, field),
                                   getattr(fits[1].mixture_, field), rtol=rtol, atol=atol,
                                   err_msg=field)


def test_fit_does_not_depend_on_chunk_size_for_large_chunks():
    # 16,384-row chunks vs 1,000-row chunks of float64 data (no noise: eps = inf).
    _assert_same_subspace_and_mixture(_large_fits(np.float64))


def test_float32_fit_depends_on_chunk_size_only_through_float32_rounding():
    # float32 input is summed in float32 within a chunk (documented in fit_shards), so two
    # chunkings agree to float32 rounding: ~1e-7 per operation, a few 1e-6 on O(1) projector
    # entries after 20k-row sums; an error in the statistics would be orders larger.
    _assert_same_subspace_and_mixture(_large_fits(np.float32), rtol=1e-4, atol=2e-5)


def test_noise_draws_match_the_plan(monkeypatch):
    """Every noisy release the fit makes is in the plan, as often as the plan accounts for:
    per-class releases once per class (parallel composition) times their repetitions."""
    calls = collections.Counter()

    class CountingNoise(NoiseSource):
        def gaussian(self, release, shape):
            calls[release.name] += 1
            return super().gaussian(release, shape)

    monkeypatch.setattr("dpsynth.synthesizer.NoiseSource", CountingNoise)
    rng = np.random.default_rng(8)
    n_classes, depth, rounds = 3, 4, 2
    y = np.repeat(np.arange(n_classes), 1000)
    X = rng.normal(size=(len(y), 16)) + 2.0 * np.eye(16)[y]
    synth = DPSynthesizer(1.0, DELTA, components_per_class=3, subspace_dim=4, lsh_depth=depth,
                          lloyd_rounds=rounds, random_state=0)
    synth.fit(X, y, classes=list(range(n_classes)))
    plan = synth.privacy_plan_
    assert set(calls) <= {r.name for r in plan.releases}
    assert plan.release("lsh_level_counts").repetitions == depth
    assert plan.release("lloyd_counts").repetitions == rounds
    assert plan.release("lloyd_sums").repetitions == rounds
    # Global and all-classes-at-once releases: one draw each.
    for name in ("subspace_second_moment", "class_counts", "class_sums", "component_counts",
                 "component_sums"):
        assert calls[name] == 1, name
    # DP k-means draws per class: one LSH level release per level, one Lloyd release a round.
    assert calls["lsh_level_counts"] == n_classes * depth
    assert calls["lloyd_counts"] == calls["lloyd_sums"] == n_classes * rounds
    assert 1 <= calls["lsh_leaf_sums"] <= n_classes
    # Second moments: one (joint) draw per component plus the residual energies.
    n_components = sum(len(c) for c in synth.clusterer_.centres_)
    assert calls["second_moments"] == n_components + 1


# ---------------------------------------------------------------------------- save/load
@SEEDED
def test_save_load_round_trip(shard_data, tmp_path):
    X, y = shard_data
    synth = _shard_synth(3).fit(X, y, classes=SHARD_CLASSES)
    path = synth.save(tmp_path / "model")
    meta = json.loads((path / "params.json").read_text())
    assert meta["privacy_plan"] == synth.privacy_plan_.to_dict()
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    np.testing.assert_array_equal(arrays["means"], synth.mixture_.means)
    np.testing.assert_array_equal(arrays["subspace"], synth.subspace_)

    loaded = DPSynthesizer.load(path)
    assert loaded.privacy_plan_.to_dict() == synth.privacy_plan_.to_dict()
    assert loaded.privacy_plan_ == synth.privacy_plan_
    assert loaded.private_ is False and loaded.epsilon_ == synth.epsilon_
    assert loaded.get_params() == synth.get_params()
    np.testing.assert_array_equal(loaded.classes_, synth.classes_)
    Xa, ya = synth.sample(700, random_state=5)
    Xb, yb = loaded.sample(700, random_state=5)
    np.testing.assert_array_equal(Xa, Xb)
    np.testing.assert_array_equal(ya, yb)
    # Without random_state both use the saved random_state.
    np.testing.assert_array_equal(synth.sample(50)[0], loaded.sample(50)[0])


def test_save_load_non_private_model_writes_strict_json(shard_data, tmp_path):
    X, y = shard_data
    synth = DPSynthesizer(INF, DELTA, subspace_dim=None, covariance="diagonal",
                          random_state=2).fit(X, y, classes=SHARD_CLASSES)
    path = synth.save(tmp_path / "m")

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    meta = json.loads((path / "params.json").read_text(), parse_constant=refuse)
    assert meta["privacy_plan"]["private"] is False
    loaded = DPSynthesizer.load(path)
    assert loaded.epsilon == INF and loaded.private_ is False and loaded.subspace_ is None
    np.testing.assert_array_equal(synth.sample(100)[0], loaded.sample(100)[0])


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        DPSynthesizer.load(tmp_path / "does-not-exist")


def test_save_before_fit():
    with pytest.raises(NotFittedError):
        DPSynthesizer(1.0, DELTA).save("unused")


@pytest.fixture(scope="module")
def saved_model(shard_data, tmp_path_factory):
    """A k = 3 lowrank model (subspace, DP k-means centres, full covariances) on disk."""
    X, y = shard_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the seeded-noise warning
        synth = _shard_synth(3).fit(X, y, classes=SHARD_CLASSES)
    assert len(synth.mixture_.weights) > 0
    return synth.save(tmp_path_factory.mktemp("saved") / "model")


def _model_copy(saved_model, tmp_path):
    return shutil.copytree(saved_model, tmp_path / "model")


def _edit_params(edit):
    def apply(path):
        meta = json.loads((path / "params.json").read_text())
        edit(meta)
        (path / "params.json").write_text(json.dumps(meta))
    return apply


def _edit_arrays(edit):
    def apply(path):
        with np.load(path / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        edit(arrays)
        np.savez(path / "arrays.npz", **arrays)
    return apply


def _truncate(name):
    def apply(path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])
    return apply


def _release(meta, name):
    return next(r for r in meta["privacy_plan"]["releases"] if r["name"] == name)


def _scale_noise(factor):
    """Multiply one release's noise multiplier (and, consistently, its sigma)."""
    def edit(meta):
        release = _release(meta, "class_sums")
        release["noise_multiplier"] *= factor
        release["sigma"] = release["noise_multiplier"] * release["sensitivity"]
    return edit


def _set(mapping_path, value):
    def edit(meta):
        node = meta
        for key in mapping_path[:-1]:
            node = node[key]
        node[mapping_path[-1]] = value
    return edit


def _set_array(name, make):
    def edit(arrays):
        arrays[name] = make(arrays[name])
    return edit


def _with_value(index, value):
    def make(x):
        x = x.copy()
        x[index] = value
        return x
    return make


def _drop(name):
    def edit(arrays):
        del arrays[name]
    return edit


def _edit_plan_epsilons(value):
    def edit(meta):
        meta["params"]["epsilon"] = value
        meta["privacy_plan"]["target_epsilon"] = value
        meta["privacy_plan"]["epsilon"] = value
    return edit


def _not_symmetric(covs):
    covs = covs.copy()
    covs[0, 0, 1] += 1.0
    return covs


CORRUPTIONS = [
    # (id, edit of the saved directory, file named, message)
    ("truncated arrays", _truncate("arrays.npz"), "arrays.npz", "cannot be read"),
    ("arrays not npz", lambda p: (p / "arrays.npz").write_bytes(b"not a zip"), "arrays.npz",
     "cannot be read"),
    ("truncated params", _truncate("params.json"), "params.json", "not valid JSON"),
    ("params not object", lambda p: (p / "params.json").write_text("[1, 2]"), "params.json",
     "must hold a JSON object"),
    ("params NaN", lambda p: (p / "params.json").write_text('{"format_version": NaN}'),
     "params.json", "non-standard JSON constant NaN"),
    ("format version", _edit_params(_set(["format_version"], 99)), "params.json",
     "unsupported format_version 99"),
    ("unknown param", _edit_params(_set(["params", "colour"], "red")), "params.json",
     r"unknown keys \['colour'\]"),
    ("bool epsilon", _edit_params(_set(["params", "epsilon"], True)), "params.json",
     "epsilon must be a number"),
    ("invalid param", _edit_params(_set(["params", "covariance"], "full")), "params.json",
     "invalid params: The 'covariance' parameter of DPSynthesizer must be a str among"),
    ("epsilon in params", _edit_params(_set(["params", "epsilon"], 0.1)), "params.json",
     r"params say epsilon=0.1, delta=1e-05, but the privacy plan's target is epsilon=1"),
    ("delta in params", _edit_params(_set(["params", "delta"], 1e-6)), "params.json",
     "but the privacy plan's target is"),
    ("noise seed in params", _edit_params(_set(["params", "noise_seed"], None)),
     "params.json", "noise_seeded=True"),
    ("epsilon in plan", _edit_params(_set(["privacy_plan", "target_epsilon"], 0.5)),
     "params.json", "recorded epsilon 0.99.* is not the target epsilon 0.5"),
    ("every recorded epsilon", _edit_params(_edit_plan_epsilons(0.5)), "params.json",
     "releases compose to epsilon 0.99"),
    ("less noise in a release", _edit_params(_scale_noise(0.5)), "params.json",
     r"releases compose to epsilon 1\.\d+ .* more than the recorded epsilon 0.99"),
    ("more noise in a release", _edit_params(_scale_noise(2.0)), "params.json",
     r"releases compose to epsilon 0\.\d+ at delta 1e-05, but the plan records 0.99"),
    ("sigma of a release", _edit_params(lambda m: _release(m, "class_sums").update(sigma=1.0)),
     "params.json", "'class_sums' records sigma 1.0"),
    ("plan marked private", _edit_params(_set(["privacy_plan", "private"], True)),
     "params.json", "'private' is True"),
    ("rdp of the plan", _edit_params(_set(["privacy_plan", "epsilon_rdp"], 0.5)),
     "params.json", "releases compose to epsilon_rdp"),
    ("missing plan key", _edit_params(lambda m: m["privacy_plan"].pop("noise_scale")),
     "params.json", "missing key 'noise_scale'"),
    ("dimension", _edit_params(_set(["n_features_in"], 15)), "params.json",
     "made for embedding_dim 16"),
    ("NaN mean", _edit_arrays(_set_array("means", _with_value((0, 3), np.nan))),
     "arrays.npz", "'means' holds NaN"),
    ("inf trace", _edit_arrays(_set_array("cluster_trace", lambda x: np.asarray(np.inf))),
     "arrays.npz", "'cluster_trace' holds NaN or infinite"),
    ("not PSD", _edit_arrays(_set_array("covariances", _with_value(0, -np.eye(4)))),
     "arrays.npz", "component 0 is not positive semi-definite"),
    ("not symmetric", _edit_arrays(_set_array("covariances", _not_symmetric)),
     "arrays.npz", "component 0 is not symmetric"),
    ("negative weight", _edit_arrays(_set_array("weights", _with_value(0, -1.0))),
     "arrays.npz", "'weights' has negative entries"),
    ("negative variance", _edit_arrays(_set_array("residual_var", _with_value(0, -1.0))),
     "arrays.npz", "'residual_var' has negative entries"),
    ("missing array", _edit_arrays(_drop("weights")), "arrays.npz", "'weights' is missing"),
    ("missing centres", _edit_arrays(_drop("cluster_centres")), "arrays.npz",
     "'cluster_centres' is missing"),
    ("means shape", _edit_arrays(_set_array("means", lambda x: x[:, :-1])), "arrays.npz",
     r"'means' has shape \(\d+, 15\), expected \(\d+, 16\)"),
    ("weights shape", _edit_arrays(_set_array("weights", lambda x: x[:-1])), "arrays.npz",
     "'weights' has shape"),
    ("covariance shape", _edit_arrays(_set_array("covariances", lambda x: x[:, :3, :3])),
     "arrays.npz", "'covariances' has shape"),
    ("class sums shape", _edit_arrays(_set_array("cluster_class_sums", lambda x: x[:2])),
     "arrays.npz", "'cluster_class_sums' has shape"),
    ("subspace", _edit_arrays(_set_array("subspace", lambda x: 2 * x)), "arrays.npz",
     "'subspace' is not orthonormal"),
    ("weights dtype", _edit_arrays(_set_array("weights", lambda x: x.astype(np.int64))),
     "arrays.npz", "'weights' has dtype int64, expected floats"),
    ("component class", _edit_arrays(_set_array("component_class", _with_value(0, 7))),
     "arrays.npz", "'component_class' has class indices outside"),
    ("class totals", _edit_arrays(_set_array("class_totals", lambda x: x + 1.0)),
     "arrays.npz", "'class_totals' is not the released class counts"),
    ("extra array", _edit_arrays(lambda a: a.update(extra=np.zeros(2))), "arrays.npz",
     r"unexpected arrays \['extra'\]"),
]


@pytest.mark.parametrize("edit, file, match", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_load_refuses_corrupt_or_edited_files_naming_the_file(saved_model, tmp_path, edit,
                                                              file, match):
    path = _model_copy(saved_model, tmp_path)
    assert DPSynthesizer.load(path).private_ is False  # the untouched copy loads
    edit(path)
    with pytest.raises(ModelFileError, match=match) as info:
        DPSynthesizer.load(path)
    assert str(info.value).startswith(str(path / file))


def test_load_names_the_missing_file(saved_model, tmp_path):
    path = _model_copy(saved_model, tmp_path)
    (path / "arrays.npz").unlink()
    with pytest.raises(FileNotFoundError, match="arrays.npz missing"):
        DPSynthesizer.load(path)


@SEEDED
def test_clusters_stage_model_round_trips(shard_data, tmp_path):
    # The pipeline saves after fit_clusters and fits the mixture on the loaded model.
    X, y = shard_data
    halves = _shard_synth(3).fit_clusters([(X, y)], classes=SHARD_CLASSES)
    loaded = DPSynthesizer.load(halves.save(tmp_path / "clusters"))
    assert not hasattr(loaded, "mixture_")
    for a, b in zip(loaded.clusters_.centres, halves.clusters_.centres, strict=True):
        np.testing.assert_array_equal(a, b)
    whole = _shard_synth(3).fit(X, y, classes=SHARD_CLASSES)
    _assert_same_fit(loaded.fit_gmm([(X, y)]), whole)


# ----------------------------------------------------------------------- invalid input
def _xy(n=40, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), np.repeat([0, 1], n // 2)


def _with(X, i, j, value):
    X = X.copy()
    X[i, j] = value
    return X


X_OK, Y_OK = _xy()
# scikit-learn's parameter validation names the parameter and the valid range.
SUBSPACE_DIM_REFUSED = (r"'subspace_dim' parameter of DPSynthesizer must be an int in the range "
                        r"\[1, inf\) \(not a boolean\) or None")
INVALID_FITS = [
    # (constructor kwargs, X, y, classes, message)
    ({}, X_OK[:, 0], Y_OK, [0, 1], "2-D"),
    ({}, _with(X_OK, 3, 2, np.nan), Y_OK, [0, 1], "NaN"),
    ({}, _with(X_OK, 3, 2, np.inf), Y_OK, [0, 1], "infinite"),
    ({}, X_OK, Y_OK[:-1], [0, 1], "one label per row"),
    ({}, X_OK, Y_OK.astype(float), [0, 1], "integer class labels"),
    ({}, np.zeros((0, 6)), np.zeros(0, dtype=np.int64), [0, 1], "empty"),
    ({}, X_OK, Y_OK + 1, [0, 1], r"not in classes"),
    ({}, X_OK, Y_OK, [0, 1, 1], "duplicates"),
    ({"components_per_class": 0}, X_OK, Y_OK, [0, 1], "components_per_class"),
    ({"covariance": "full"}, X_OK, Y_OK, [0, 1], "'covariance' parameter .* must be a str among"),
    ({"subspace_dim": 7}, X_OK, Y_OK, [0, 1], "exceeds the embedding dimension"),
    ({"subspace_dim": 0}, X_OK, Y_OK, [0, 1], SUBSPACE_DIM_REFUSED),
    ({"clip_norm": 0.0}, X_OK, Y_OK, [0, 1], "clip_norm"),
    ({"clip_norm": -1.0}, X_OK, Y_OK, [0, 1], "clip_norm"),
    ({"budget_weights": {"class_countz": 2.0}}, X_OK, Y_OK, [0, 1], "unknown budget_weights"),
    ({"second_moment_clip": 0.0}, X_OK, Y_OK, [0, 1], "second_moment_clip"),
    ({"second_moment_clip": float("nan")}, X_OK, Y_OK, [0, 1], "second_moment_clip"),
    # Bad rows are reported where they are, never bounded to a silent zero row.
    ({}, _with(X_OK, 3, 2, np.nan), Y_OK, [0, 1], r"NaN or infinite values: row 3, column 2"),
    ({}, _with(X_OK, 5, 1, 1e300), Y_OK, [0, 1], r"norm overflows float64: row 5 \("),
    ({}, _with(X_OK, 5, 1, 1e200), Y_OK, [0, 1], r"norm overflows float64: row 5 \("),
    # Booleans are not numbers: True must not be read as 1 (bool is an int subclass).
    ({"components_per_class": True}, X_OK, Y_OK, [0, 1], "components_per_class"),
    ({"subspace_dim": True}, X_OK, Y_OK, [0, 1], SUBSPACE_DIM_REFUSED),
    ({"clip_norm": True}, X_OK, Y_OK, [0, 1], "clip_norm"),
    ({"lsh_depth": True, "components_per_class": 2}, X_OK, Y_OK, [0, 1], "lsh_depth"),
    ({"lloyd_rounds": False}, X_OK, Y_OK, [0, 1], "lloyd_rounds"),
    ({"chunk_rows": True}, X_OK, Y_OK, [0, 1], "chunk_rows"),
    ({"second_moment_clip": True}, X_OK, Y_OK, [0, 1], "second_moment_clip"),
    ({"covariance_floor": True}, X_OK, Y_OK, [0, 1], "covariance_floor"),
    ({"normalize": 1}, X_OK, Y_OK, [0, 1], "'normalize' parameter .* an instance of 'bool'"),
    ({"random_state": True}, X_OK, Y_OK, [0, 1], "random_state"),
    ({"noise_seed": True}, X_OK, Y_OK, [0, 1], "noise_seed"),
    ({"budget_weights": {"class_counts": True}}, X_OK, Y_OK, [0, 1],
     r"budget_weights\['class_counts'\]"),
]


@pytest.mark.parametrize("kwargs, X, y, classes, match", INVALID_FITS,
                         ids=[case[-1] for case in INVALID_FITS])
def test_invalid_fit_inputs_are_refused(kwargs, X, y, classes, match):
    params = {"subspace_dim": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        DPSynthesizer(1.0, DELTA, **params).fit(X, y, classes=classes)


def test_epsilon_true_is_not_one():
    with pytest.raises(ValueError, match="epsilon must be a number, got the boolean True"):
        DPSynthesizer(True, DELTA, subspace_dim=3).fit(X_OK, Y_OK, classes=[0, 1])
    with pytest.raises(ValueError, match="delta must be a number, got the boolean"):
        DPSynthesizer(1.0, np.bool_(True)).make_plan(6)


def test_bad_row_in_a_later_shard_names_the_shard_and_row():
    shards = [(X_OK[:20], Y_OK[:20]), (_with(X_OK[20:], 7, 0, -1e300), Y_OK[20:])]
    with pytest.raises(ValueError, match="row 7 of shard 1"):
        DPSynthesizer(1.0, DELTA, subspace_dim=3, chunk_rows=4).fit_shards(shards,
                                                                          classes=[0, 1])
    shards[1] = (_with(X_OK[20:], 9, 3, np.inf), Y_OK[20:])
    with pytest.raises(ValueError, match="row 9 of shard 1, column 3 is inf"):
        DPSynthesizer(1.0, DELTA, subspace_dim=3, chunk_rows=4).fit_shards(shards,
                                                                          classes=[0, 1])


def test_bound_norms_refuses_rows_whose_norm_overflows():
    X = np.ones((4, 3))
    X[2] = 1e300  # squares overflow float64: the norm would be inf and the row zeroed
    with pytest.raises(NormOverflowError, match=r"rows 2\)") as info:
        bound_norms(X, 1.0, normalize=True)
    assert info.value.rows.tolist() == [2]
    with pytest.raises(ValueError, match="non-finite L2 norm"):
        bound_norms(np.where(X > 1, np.nan, X), 1.0, normalize=False)


@pytest.mark.parametrize("normalize", [True, False])
def test_bound_norms_of_large_float32_rows_does_not_zero_them(normalize):
    # float32 squares overflow above ~1.8e19 although such a norm fits float32 easily.
    X = np.array([[3e20, 4e20, 0.0], [0.3, 0.4, 0.0]], dtype=np.float32)
    out = bound_norms(X, 2.0, normalize)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [1.2, 1.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [1.2, 1.6, 0.0] if normalize else [0.3, 0.4, 0.0],
                               rtol=1e-6)


def test_sample_before_fit():
    with pytest.raises(NotFittedError, match="not fitted"):
        DPSynthesizer(1.0, DELTA).sample(10)


@pytest.fixture(scope="module")
def small_fit():
    X, y = _xy(n=400, d=6)
    return DPSynthesizer(INF, DELTA, subspace_dim=3, random_state=0).fit(X, y, classes=[0, 1])


@pytest.mark.parametrize("kwargs, match", [
    ({"n": -1}, "non-negative integer"),
    ({"n": 2.5}, "non-negative integer"),
    ({"n": True}, "non-negative integer"),
    ({"n": np.bool_(True)}, "non-negative integer"),
    ({"n": 10, "random_state": True}, "random_state"),
    ({"n": 10, "class_balance": "x"}, "class_balance"),
])
def test_invalid_sample_arguments(small_fit, kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_fit.sample(**kwargs)


# -------------------------------------------------------------------------- modes
def test_infinite_epsilon_fit_is_marked_not_private(small_fit):
    assert small_fit.private_ is False
    plan = small_fit.privacy_plan_.to_dict()
    assert plan["private"] is False
    assert plan["epsilon"] == "inf"
    assert all(r["sigma"] == 0.0 for r in plan["releases"])


def test_default_private_fit_is_marked_private():
    X, y = _xy(n=600, d=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "NOT private" or class-inference warning
        synth = DPSynthesizer(1.0, DELTA, subspace_dim=3).fit(X, y, classes=[0, 1])
    assert synth.private_ is True
    assert synth.privacy_plan_.to_dict()["private"] is True
    assert synth.privacy_plan_.to_dict()["noise_seeded"] is False
    assert abs(synth.epsilon_ - 1.0) <= 0.01


def test_classes_inferred_from_labels_warn():
    X, _ = _xy(n=300, d=6)
    y = np.repeat([4, 9, 2], 100)
    with pytest.warns(UserWarning, match="classes were read from the labels"):
        synth = DPSynthesizer(INF, DELTA, subspace_dim=3).fit(X, y)
    np.testing.assert_array_equal(synth.classes_, [2, 4, 9])


def test_balanced_sampling_gives_equal_class_counts():
    # Unequal classes (100 / 300 / 600), so proportional sampling would not be balanced.
    rng = np.random.default_rng(3)
    y = np.repeat([5, 6, 7], [100, 300, 600])
    X = rng.normal(size=(len(y), 6)) + 2.0 * np.eye(6)[y - 5]
    synth = DPSynthesizer(INF, DELTA, subspace_dim=3, random_state=0).fit(X, y, classes=[5, 6, 7])
    _, y_bal = synth.sample(300, class_balance="balanced", random_state=0)
    assert [int((y_bal == c).sum()) for c in (5, 6, 7)] == [100, 100, 100]
    _, y_odd = synth.sample(301, class_balance="balanced", random_state=0)
    counts = [int((y_odd == c).sum()) for c in (5, 6, 7)]
    assert sum(counts) == 301 and max(counts) - min(counts) == 1
    _, y_prop = synth.sample(1000, random_state=0)
    assert [int((y_prop == c).sum()) for c in (5, 6, 7)] == [100, 300, 600]


@pytest.mark.parametrize("covariance", ["diagonal", "lowrank"])
def test_fit_with_no_component_above_threshold_warns(covariance):
    # One record of class 0, none of class 1: with eps = inf the threshold is 2 records.
    X = np.random.default_rng(0).normal(size=(1, 6))
    synth = DPSynthesizer(INF, DELTA, covariance=covariance, subspace_dim=None)
    with pytest.warns(UserWarning, match="no component above the noise threshold"):
        synth.fit(X, np.array([0]), classes=[0, 1])
    with pytest.raises(RuntimeError, match="no class has a released component"):
        synth.sample(5)


def test_failed_refit_does_not_relabel_the_previous_model(small_fit):
    synth = copy.deepcopy(small_fit)
    X, y = _xy(n=400, d=6)
    with pytest.raises(ValueError, match="NaN"):
        synth.fit(_with(X, 0, 0, np.nan), y + 5, classes=[5, 6])
    try:
        _, labels = synth.sample(50, random_state=0)
    except NotFittedError:
        return  # also acceptable: the failed fit invalidated the model
    assert set(labels.tolist()) <= {0, 1}


# ------------------------------------------------------------------ centred clipping
def test_centred_clipping_sets_the_second_moment_sensitivity():
    plain = DPSynthesizer(1.0, DELTA).make_plan(32).release("second_moments")
    clipped = DPSynthesizer(1.0, DELTA, second_moment_clip=0.5).make_plan(32)
    release = clipped.release("second_moments")
    assert plain.sensitivity == 1.0
    assert release.sensitivity == pytest.approx(0.25)
    # Same noise multiplier, quarter of the sensitivity: a quarter of the noise.
    assert release.sigma == pytest.approx(plain.sigma / 4, rel=1e-6)


@pytest.mark.parametrize("k", [1, 2])
def test_centred_clipping_recovers_covariances_without_noise(mixture_data, k):
    # Records lie within ~0.16 * 3 of their component mean and components of a class are
    # <= 1.2 apart, so a clip of 2 never binds: centred statistics must give the same
    # covariances as uncentred ones (up to float rounding), for one and two components.
    X, y, _ = mixture_data
    fits = [DPSynthesizer(INF, DELTA, components_per_class=k, covariance="lowrank",
                          subspace_dim=8, normalize=False, random_state=0,
                          second_moment_clip=clip).fit(X, y, classes=REC_CLASSES)
            for clip in (None, 2.0)]
    for field in ("means", "covariances", "residual_var", "weights"):
        np.testing.assert_allclose(getattr(fits[0].mixture_, field),
                                   getattr(fits[1].mixture_, field), rtol=1e-6, atol=1e-9,
                                   err_msg=field)


def test_centred_clipping_shrinks_spread_beyond_the_clip(mixture_data):
    # A clip well under the within-class spread (two components 0.4+ apart) must bound the
    # released second moment: total variance per class <= clip^2, plus what the repair adds
    # (subspace eigenvalues floored at the residual variance: at most r * residual_var).
    X, y, _ = mixture_data
    synth = DPSynthesizer(INF, DELTA, covariance="lowrank", subspace_dim=8, normalize=False,
                          second_moment_clip=0.1, random_state=0).fit(X, y, classes=REC_CLASSES)
    m = synth.mixture_
    d, r = X.shape[1], synth.subspace_.shape[1]
    total = np.trace(m.covariances, axis1=1, axis2=2) + m.residual_var * (d - r)
    assert (total <= 0.1**2 + r * m.residual_var + 1e-9).all()
    unclipped = DPSynthesizer(INF, DELTA, covariance="lowrank", subspace_dim=8,
                              normalize=False, random_state=0).fit(X, y, classes=REC_CLASSES)
    assert (np.trace(unclipped.mixture_.covariances, axis1=1, axis2=2) > 0.05).all()


# ------------------------------------------------------------------------ tied covariance
def test_tied_covariance_spends_no_budget_on_second_moments():
    plan = DPSynthesizer(1.0, DELTA, covariance="tied", subspace_dim=8).make_plan(32)
    assert [r.name for r in plan.releases] == ["subspace_second_moment", "class_counts",
                                               "class_sums"]
    with pytest.raises(ValueError, match="tied"):
        DPSynthesizer(1.0, DELTA, covariance="tied", components_per_class=2).make_plan(32)


def test_tied_covariance_recovers_the_pooled_within_class_covariance():
    # Three classes sharing one anisotropic covariance; with eps = inf the tied model must
    # recover it in the subspace (the top directions) and the residual variance outside.
    rng = np.random.default_rng(11)
    d, n = 12, 60_000
    scales = np.array([0.2, 0.1, 0.05] + [0.01] * (d - 3))
    means = np.zeros((3, d))
    means[:, 3:6] = 0.5 * np.eye(3)  # means differ only in low-variance coordinates
    y = rng.integers(0, 3, n)
    X = means[y] + scales * rng.standard_normal((n, d))
    synth = DPSynthesizer(INF, DELTA, covariance="tied", subspace_dim=6, normalize=False,
                          clip_norm=10.0).fit(X, y, classes=[0, 1, 2])
    V = synth.subspace_
    cov = V @ synth.mixture_.covariances[0] @ V.T
    np.testing.assert_allclose(np.diag(cov)[:3], scales[:3] ** 2, rtol=0.05)
    np.testing.assert_allclose(synth.mixture_.residual_var, 0.01**2, rtol=0.05)
    np.testing.assert_allclose(synth.mixture_.means, means, atol=0.01)


# ------------------------------------------------------- scikit-learn estimator contract
# Fitted on scikit-learn's small generated data: non-private (exact, deterministic), and
# DP with DP k-means (seeded noise). Neither has a subspace: some checks fit one feature.
SKLEARN_INSTANCES = [
    DPSynthesizer(INF, DELTA, subspace_dim=None, random_state=0),
    DPSynthesizer(1.0, DELTA, components_per_class=2, covariance="diagonal", subspace_dim=None,
                  random_state=0, noise_seed=0),
]
# Checks that do not apply to a generative model of private embeddings, with why.
SKLEARN_NOT_APPLICABLE = {
    "check_dtype_object": "object arrays are refused, never coerced: records are read as "
                          "numbers only",
    "check_complex_data": "complex X is refused as 'X must hold numbers, got dtype "
                          "complex128', not in scikit-learn's wording",
    "check_estimators_nan_inf": "the check's labels are floats, refused first ('y must hold "
                                "integer class labels'); NaN/inf rows are refused by row and "
                                "column (test_invalid_fit_inputs_are_refused)",
    "check_requires_y_none": "y=None is refused, as 'y must be 1-D with one label per row "
                             "of X', not in scikit-learn's wording",
}


@parametrize_with_checks(SKLEARN_INSTANCES,
                         expected_failed_checks=lambda est: SKLEARN_NOT_APPLICABLE)
@pytest.mark.filterwarnings("ignore::UserWarning")  # labels read from y, seeded noise
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_parameter_constraints_are_checked_as_scikit_learn_does():
    # Not among the checks above for a third-party estimator: every parameter has a
    # constraint, and a value outside it is refused by fit with InvalidParameterError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for estimator in SKLEARN_INSTANCES:
            check_param_validation(type(estimator).__name__, estimator)


NUMBER_PARAMETERS = [name for name, rules in DPSynthesizer._parameter_constraints.items()
                     if any(isinstance(r, Interval) for r in rules)]


@pytest.mark.parametrize("name", NUMBER_PARAMETERS)
@pytest.mark.parametrize("boolean", [True, np.bool_(False)])
def test_booleans_are_refused_for_every_number(name, boolean):
    # scikit-learn's Interval(Integral) takes True as 1; YAML's true must not mean 1.
    with pytest.raises(InvalidParameterError,
                       match=rf"'{name}' parameter of DPSynthesizer must be .*\(not a "
                             rf"boolean\).* Got (np\.)?{boolean!r}"):
        DPSynthesizer(1.0, DELTA, **{name: boolean})._validate_params()


def test_one_list_of_parameters():
    # The signature, the docstring's Parameters and the constraints name the same
    # parameters, and the run config's model section is generated from them.
    signature = [p for p in inspect.signature(DPSynthesizer.__init__).parameters
                 if p != "self"]
    assert list(DPSynthesizer._parameter_constraints) == signature
    assert list(config_module._parameter_docs(DPSynthesizer)) == signature
    assert list(ModelConfig.model_fields) == [
        p for p in signature if p not in config_module.PRIVACY_PARAMETERS]
    assert set(config_module.PRIVACY_PARAMETERS) <= set(PrivacyConfig.model_fields) | {
        "epsilon", "delta"}
    defaults = DPSynthesizer(1.0, DELTA).get_params()
    for name, field in ModelConfig.model_fields.items():
        override = config_module.MODEL_OVERRIDES.get(name, {})
        assert field.default == override.get("default", defaults[name]), name
        assert field.description, name
    # Config-only defaults: normalize follows the encoder, a run's random_state is 0.
    assert ModelConfig().normalize is None and ModelConfig().random_state == 0


def test_a_new_estimator_parameter_reaches_the_config_by_itself():
    class Extended(DPSynthesizer):
        """Parameters
        ----------
        epsilon, delta : float
            The guarantee.
        knob : int, default=5
            A new parameter, documented once.
        """

        _parameter_constraints = {"epsilon": "no_validation", "delta": "no_validation",
                                  "knob": [Interval(Integral, 2, None, closed="left")]}

        def __init__(self, epsilon: float, delta: float, *, knob: int = 5) -> None:
            self.epsilon = epsilon
            self.delta = delta
            self.knob = knob

    section = pydantic.create_model("Section", __base__=config_module._Section,
                                    **config_module._model_fields(Extended))
    assert list(section.model_fields) == ["knob"]
    assert section().knob == 5
    assert section.model_fields["knob"].description == "A new parameter, documented once."
    with pytest.raises(pydantic.ValidationError, match="greater than or equal to 2"):
        section(knob=1)
    with pytest.raises(pydantic.ValidationError, match="not the boolean true"):
        section(knob=True)
    assert sklearn.base.clone(Extended(1.0, DELTA, knob=3)).get_params() == {
        "epsilon": 1.0, "delta": DELTA, "knob": 3}


def test_build_synthesizer_passes_the_model_section_through():
    config = load_config(None, ["model.components_per_class=3", "model.subspace_dim=null",
                                "model.budget_weights={class_sums: 2.0}",
                                "privacy.noise_seed=4", "privacy.epsilon=inf"])
    params = steps.build_synthesizer(config, normalized_encoder=False).get_params()
    assert params == {**config.model.model_dump(), "normalize": False, "epsilon": INF,
                      "delta": config.privacy.delta, "noise_seed": 4}
    assert steps.build_synthesizer(config, normalized_encoder=True).normalize is True
    explicit = load_config(None, ["model.normalize=false"])
    assert steps.build_synthesizer(explicit, normalized_encoder=True).normalize is False


def test_get_params_returns_real_values_and_clone_keeps_them():
    synth = DPSynthesizer(INF, DELTA, components_per_class=2, clusterer_options={"rounds": 1},
                          budget_weights={"class_sums": 2.0}, random_state=3)
    params = synth.get_params(deep=True)
    assert params["epsilon"] == INF and isinstance(params["epsilon"], float)
    assert list(params) == [p for p in inspect.signature(DPSynthesizer).parameters]
    twin = sklearn.base.clone(synth)
    assert twin is not synth and twin.get_params() == params
    assert twin.clusterer_options == {"rounds": 1}
    assert twin.clusterer_options is not synth.clusterer_options  # a deep copy


def test_repr_shows_the_parameters_set():
    # scikit-learn's repr: the parameters that differ from their defaults, sorted by name.
    assert repr(DPSynthesizer(1.0, DELTA, components_per_class=2)) == \
        "DPSynthesizer(components_per_class=2, delta=1e-05, epsilon=1.0)"
    assert repr(DPSynthesizer(INF, DELTA)) == "DPSynthesizer(delta=1e-05, epsilon=inf)"


def test_set_params_then_fit(small_fit):
    X, y = _xy(n=400, d=6)
    synth = sklearn.base.clone(small_fit)
    assert not hasattr(synth, "mixture_")
    assert synth.set_params(covariance="spherical", components_per_class=2) is synth
    synth.fit(X, y, classes=[0, 1])
    assert synth.covariances_.shape == (len(synth.weights_),)
    assert synth.get_params()["covariance"] == "spherical"
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        synth.set_params(colour="red")
    with pytest.raises(InvalidParameterError, match="'covariance' parameter"):
        synth.set_params(covariance="full").fit(X, y, classes=[0, 1])


def test_not_fitted_error_is_scikit_learns():
    assert NotFittedError is sklearn.exceptions.NotFittedError
    assert dpsynth.synthesizer.NotFittedError is NotFittedError
    synth = DPSynthesizer(1.0, DELTA)
    with pytest.raises(sklearn.exceptions.NotFittedError, match="not fitted"):
        check_is_fitted(synth)
    with pytest.raises(NotFittedError, match="not fitted"):
        synth.means_  # noqa: B018
    assert not hasattr(synth, "weights_")  # like scikit-learn: absent until fitted


@SEEDED
def test_a_clusters_stage_model_is_not_fitted(shard_data):
    X, y = shard_data
    half = _shard_synth(1).fit_clusters([(X, y)], classes=SHARD_CLASSES)
    with pytest.raises(NotFittedError):
        check_is_fitted(half)
    check_is_fitted(half.fit_gmm([(X, y)]))


@pytest.mark.parametrize("field", ["weights", "means", "covariances", "residual_var",
                                   "component_class"])
def test_flat_views_are_the_mixture_arrays_read_only(small_fit, field):
    view = getattr(small_fit, field + "_")
    np.testing.assert_array_equal(view, getattr(small_fit.mixture_, field))
    assert np.shares_memory(view, getattr(small_fit.mixture_, field))
    with pytest.raises(ValueError, match="read-only"):
        view[...] = 0
    assert small_fit.means_.shape == (len(small_fit.weights_), small_fit.n_features_in_)
    assert DPSynthesizer.__doc__.count(f"\n    {field}_ : ") == 1  # documented


def test_params_json_keeps_its_format(small_fit, tmp_path):
    # epsilon inf is written "inf" (strict JSON) and read back as the float; the keys are
    # the signature's, in its order, as files saved before scikit-learn's contract.
    meta = json.loads((small_fit.save(tmp_path / "m") / "params.json").read_text())
    assert meta["params"]["epsilon"] == "inf"
    assert list(meta["params"]) == list(inspect.signature(DPSynthesizer).parameters)
    loaded = DPSynthesizer.load(tmp_path / "m")
    assert loaded.get_params() == small_fit.get_params() and loaded.epsilon == INF


# ------------------------------------------- a recorded plan as the source of the noise
@SEEDED
def test_a_recorded_plan_is_drawn_as_recorded_and_must_be_the_configurations():
    from dataclasses import replace

    from dpsynth.privacy.plan import PlanMismatchError

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    X = rng.normal(size=(400, 6)) + 2 * np.eye(6)[y]

    def synth(**kw):
        return DPSynthesizer(4.0, DELTA, subspace_dim=3, random_state=0, noise_seed=3, **kw)

    # Library fit: calibrates. Given its own plan back: the same draws, the same fit.
    calibrated = synth().fit(X, y, classes=[0, 1])
    recorded = synth().fit_clusters([(X, y)], classes=[0, 1],
                                    plan=calibrated.privacy_plan_)
    recorded.fit_gmm([(X, y)], plan=calibrated.privacy_plan_)
    np.testing.assert_array_equal(recorded.mixture_.means, calibrated.mixture_.means)
    assert recorded.privacy_plan_ == calibrated.privacy_plan_
    # Another split of the same budget is drawn as recorded, not re-derived.
    heavier = synth(budget_weights={"class_sums": 2.0}).make_plan(6)
    reweighted = synth().fit_clusters([(X, y)], classes=[0, 1], plan=heavier)
    assert reweighted.privacy_plan_.release("class_sums").sigma == \
        heavier.release("class_sums").sigma
    with pytest.raises(PlanMismatchError, match="has noise_multiplier .* in the plan the "
                                                "clusters were released under"):
        reweighted.fit_gmm([(X, y)], plan=calibrated.privacy_plan_)
    # Not this configuration's plan: refused before any release, naming what differs.
    for other, match in ((synth(covariance="spherical").make_plan(6),
                          r"release 'subspace_second_moment' \(.*\) is not in the plan"),
                         (synth().make_plan(5), "made for embedding_dim 5"),
                         (replace(calibrated.privacy_plan_, noise_seeded=False),
                          "noise_seeded=False"),
                         (DPSynthesizer(2.0, DELTA, subspace_dim=3, noise_seed=3).make_plan(6),
                          "privacy plan's target is epsilon=2")):
        with pytest.raises(PlanMismatchError, match=match):
            synth().fit_clusters([(X, y)], classes=[0, 1], plan=other)
