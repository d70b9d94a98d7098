"""Streaming synthesis (issue 14): shards drawn one at a time from per-shard random streams,
the same set whoever writes which shards, and the distribution of the model unchanged."""

from __future__ import annotations

import json
import tracemalloc
import warnings

import numpy as np
import pytest

from dpsynth import DPSynthesizer, steps
from dpsynth.data.store import EmbeddingSetError
from dpsynth.gmm.mixture import MixtureSampler, shard_class_counts, shard_sizes
from dpsynth.gmm.sampling import SAMPLE_SHARD_ROWS
from dpsynth.gmm.sampling import apportion as _apportion

INF, DELTA = float("inf"), 1e-5
D, R, CLASSES = 12, 4, [3, 5, 8]


def _data(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(CLASSES, size=n, p=[0.2, 0.3, 0.5])
    centres = {c: rng.normal(size=D) for c in CLASSES}
    scales = rng.uniform(0.2, 1.0, size=D)
    X = np.stack([centres[c] for c in y]) + rng.normal(size=(n, D)) * scales
    X[:, :3] += rng.normal(size=(n, 1)) * 2.0  # a strong shared direction for the subspace
    return X, y


def _fit(**kwargs) -> DPSynthesizer:
    # eps = inf: exact statistics, no noise; clip_norm large and no normalisation, so the
    # samples are the mixture's Gaussians themselves (bounding would change the moments).
    params = {"subspace_dim": R, "normalize": False, "clip_norm": 1e3, "random_state": 0,
              **kwargs}
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPSynthesizer(INF, DELTA, **params).fit(X, y, classes=CLASSES)


MODELS = {
    "lowrank-k1": {},
    "diagonal-k1": {"covariance": "diagonal"},
    "spherical-k1": {"covariance": "spherical"},
    "tied-k1": {"covariance": "tied"},
    "lowrank-k2": {"components_per_class": 2},
    "lowrank-full-space": {"subspace_dim": None},
    "diagonal-full-space-k2": {"covariance": "diagonal", "subspace_dim": None,
                               "components_per_class": 2},
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request) -> DPSynthesizer:
    return _fit(**MODELS[request.param])


def _component_covariance(synth: DPSynthesizer, j: int) -> np.ndarray:
    """The full (d, d) covariance of component j, as the model defines it."""
    m, V = synth.mixture_, synth.subspace_
    cov = np.asarray(m.covariances[j], dtype=np.float64)
    if cov.ndim == 0:
        return cov * np.eye(D)
    inner = np.diag(cov) if cov.ndim == 1 else cov
    if V is None:
        return inner
    return V @ inner @ V.T + m.residual_var[j] * (np.eye(D) - V @ V.T)


def _class_moments(synth: DPSynthesizer, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of class c's mixture (its components weighted by weight)."""
    m = synth.mixture_
    comps = np.flatnonzero(m.component_class == c)
    w = m.weights[comps] / m.weights[comps].sum()
    mean = w @ m.means[comps]
    second = sum(wj * (_component_covariance(synth, j) + np.outer(m.means[j], m.means[j]))
                 for wj, j in zip(w, comps, strict=True))
    return mean, second - np.outer(mean, mean)


def test_sharded_sampler_moments_match_the_model(model):
    n = 240_000
    X = np.empty((n, D), np.float32)
    y = np.empty(n, np.int64)
    pos = 0
    for Xs, ys in model.sample_shards(n, 7_000, random_state=11):
        assert Xs.dtype == np.float32 and len(Xs) <= 7_000
        X[pos:pos + len(Xs)], y[pos:pos + len(ys)] = Xs, ys
        pos += len(Xs)
    assert pos == n
    # Class counts are exact: the largest-remainder split of n by the released totals.
    want = _apportion(n, model.class_totals_ / model.class_totals_.sum())
    assert [int((y == c).sum()) for c in CLASSES] == want.tolist()
    for c, label in enumerate(CLASSES):
        Xc = X[y == label].astype(np.float64)
        mean, cov = _class_moments(model, c)
        k = len(Xc)
        # 5 standard errors: of each mean coordinate, and of each covariance entry
        # (Var of a sample covariance entry ~ (S_ii S_jj + S_ij^2) / k for Gaussians;
        # a mixture of two is not Gaussian, hence the extra margin factor 2 there).
        sd = np.sqrt(np.diag(cov))
        assert np.all(np.abs(Xc.mean(0) - mean) <= 5 * sd / np.sqrt(k)), label
        err = np.abs(np.cov(Xc, rowvar=False) - cov)
        se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / k)
        assert np.all(err <= 10 * se + 1e-6), (label, float((err / se).max()))


def test_samples_are_bounded_like_the_records():
    synth = _fit(normalize=True, clip_norm=2.0)
    norms = np.linalg.norm(synth.sample(3000, random_state=0)[0].astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 2.0, rtol=1e-6)
    synth = _fit(normalize=False, clip_norm=1.0)
    norms = np.linalg.norm(synth.sample(3000, random_state=0)[0].astype(np.float64), axis=1)
    assert norms.max() <= 1.0 + 1e-6 and norms.min() < 0.999


def test_shard_streams_are_children_of_one_root_seed():
    root = np.random.SeedSequence(42)
    deal, shards = root.spawn(2)
    children = shards.spawn(5)
    for i, child in enumerate(children):
        by_key = np.random.SeedSequence(42, spawn_key=(1, i))
        assert np.array_equal(child.generate_state(4), by_key.generate_state(4))
    assert np.array_equal(deal.generate_state(4),
                          np.random.SeedSequence(42, spawn_key=(0,)).generate_state(4))


def test_any_split_of_the_shards_gives_the_same_sample():
    synth = _fit(components_per_class=2)
    n, rows = 2_050, 300
    whole = list(synth.sample_shards(n, rows, random_state=9))
    assert [len(X) for X, _ in whole] == shard_sizes(n, rows).tolist() == [300] * 6 + [250]
    for bounds in ([0, 7], [0, 1, 7], [0, 3, 4, 7], [0, 2, 2, 5, 7]):
        parts = [shard for a, b in zip(bounds, bounds[1:], strict=False)
                 for shard in synth.sample_shards(n, rows, random_state=9, start_shard=a,
                                                  stop_shard=b)]
        assert len(parts) == len(whole)
        for (Xa, ya), (Xb, yb) in zip(whole, parts, strict=True):
            assert np.array_equal(Xa, Xb) and np.array_equal(ya, yb)
    # sample() is the concatenation of the default shards, in memory.
    X, y = synth.sample(n, random_state=9)
    shards = list(synth.sample_shards(n, SAMPLE_SHARD_ROWS, random_state=9))
    assert np.array_equal(X, np.concatenate([s[0] for s in shards]))
    assert np.array_equal(y, np.concatenate([s[1] for s in shards]))
    # Another seed, another sample; no seed at all refuses a range of shards.
    other = next(synth.sample_shards(n, rows, random_state=10))
    assert not np.array_equal(other[0], whole[0][0])
    synth.random_state = None
    with pytest.raises(ValueError, match="needs a seed"):
        synth.sample_shards(n, rows, start_shard=1)
    assert sum(len(X) for X, _ in synth.sample_shards(n, rows)) == n


@pytest.mark.parametrize("case", ["lowrank-k2", "spherical-k1", "lowrank-full-space"])
def test_a_shard_is_the_same_for_any_number_of_threads(case, monkeypatch):
    # Each block of draws has its own child stream and its own rows, so the shard does
    # not depend on which worker thread drew which block, or on how many there were.
    synth = _fit(**MODELS[case], normalize=True, clip_norm=1.0)
    monkeypatch.setattr(MixtureSampler, "block_rows", 128)  # many blocks per shard
    counts = np.array([700, 0, 1_000])
    shards = []
    for threads in (1, 2, 5):
        sampler = MixtureSampler(synth.mixture_, synth.subspace_, normalize=True,
                                 radius=1.0, threads=threads)
        shards.append(sampler.draw(counts, np.random.default_rng(3)))
    for X, cls in shards[1:]:
        assert np.array_equal(X, shards[0][0]) and np.array_equal(cls, shards[0][1])
    assert np.bincount(shards[0][1], minlength=3).tolist() == [700, 0, 1_000]
    # the blocks are independent draws, not one stream repeated
    assert len(np.unique(shards[0][0][:, 0])) == 1_700
    with pytest.raises(ValueError, match="threads"):
        MixtureSampler(synth.mixture_, synth.subspace_, normalize=True, radius=1.0,
                       threads=0)


@pytest.mark.parametrize("content, cap", [("150000 100000", 2), ("100000 100000", 1),
                                          ("50000 100000", 1),
                                          ("max 100000", None), ("garbage", None),
                                          (None, None), ("3200000 100000", 8)])
def test_sampling_threads_follow_the_cgroup_cpu_quota(tmp_path, monkeypatch, content, cap):
    import os

    from dpsynth.gmm.mixture import default_threads

    monkeypatch.delenv("DPSYNTH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu_max = tmp_path / "cpu.max"
    if content is not None:
        cpu_max.write_text(content + "\n")
    cores = min(8, len(os.sched_getaffinity(0)))
    # load=0: an idle machine (the load average's share is tests/test_cpu_threads.py's).
    assert default_threads(cpu_max, load=0.0) == (cores if cap is None else min(cores, cap))


def test_shard_class_counts_deal_the_exact_totals():
    rng = np.random.default_rng(0)
    totals = np.array([1000, 0, 2501, 7])
    sizes = shard_sizes(int(totals.sum()), 512)
    counts = shard_class_counts(totals, sizes, len(sizes), rng)
    assert counts.sum(0).tolist() == totals.tolist()
    assert counts.sum(1).tolist() == sizes.tolist()
    assert (counts[:, 1] == 0).all()
    # A prefix of the deal is the deal's prefix (later processes replay earlier shards).
    again = shard_class_counts(totals, sizes, 3, np.random.default_rng(0))
    assert np.array_equal(again, counts[:3])


@pytest.mark.parametrize("kwargs, match", [
    ({"shard_rows": 0}, "shard_rows"),
    ({"shard_rows": True}, "shard_rows"),
    ({"start_shard": 2, "stop_shard": 1}, "start_shard"),
    ({"stop_shard": 99}, "start_shard"),
    ({"start_shard": -1}, "start_shard"),
])
def test_invalid_shard_arguments(kwargs, match):
    synth = _fit()
    with pytest.raises(ValueError, match=match):
        synth.sample_shards(100, **{"shard_rows": 30, "random_state": 0, **kwargs})


def test_a_sample_of_a_billion_rows_is_refused_up_front():
    with pytest.raises(ValueError, match="below 1e"):
        _fit().sample_shards(10**9, 65536, random_state=0)


# ------------------------------------------------------------------- steps: fan-out
@pytest.fixture(scope="module")
def mixture_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixture")
    _fit(components_per_class=2, normalize=True, clip_norm=1.0).save(out)
    (out / steps.EMBEDDING_INFO).write_text(json.dumps({
        "encoder": "pixels", "encoder_options": {}, "dim": D, "normalized": True,
        "classes": CLASSES, "class_names": ["a", "b", "c"], "dataset_id": "toy"}))
    return out


def _files(path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}


@pytest.mark.parametrize("parts", [1, 3, 9])
def test_parts_joined_equal_the_single_process_set_bit_for_bit(mixture_dir, tmp_path, parts):
    kwargs = {"n": 1_030, "random_state": 4, "shard_rows": 150}  # 7 shards, the last 130
    single = steps.synthesize(mixture_dir, tmp_path / "single", **kwargs)
    assert single.count == 1_030 and len(single.manifest["shards"]) == 7
    assert single.manifest["dtype"] == "float32"
    part_dirs = [tmp_path / f"part{p}" for p in range(parts)]
    for p in reversed(range(parts)):  # any order
        part = steps.synthesize_part(mixture_dir, part_dirs[p], part=p, parts=parts,
                                     **kwargs)
        assert part.manifest["complete"]
    joined = steps.join_synthetic(part_dirs[::-1], tmp_path / "joined")
    assert _files(joined.path) == _files(single.path)  # manifest and every shard
    X, y = single.load()
    Xs, ys = DPSynthesizer.load(mixture_dir).sample(1_030, random_state=4)
    assert X.shape == Xs.shape and np.array_equal(np.sort(y), np.sort(ys))


def test_join_refuses_missing_repeated_or_foreign_parts(mixture_dir, tmp_path):
    kwargs = {"n": 600, "random_state": 4, "shard_rows": 100}
    dirs = [tmp_path / f"p{p}" for p in range(3)]
    for p, d in enumerate(dirs):
        steps.synthesize_part(mixture_dir, d, part=p, parts=3, **kwargs)
    with pytest.raises(EmbeddingSetError, match="missing"):
        steps.join_synthetic(dirs[:2], tmp_path / "a")
    with pytest.raises(EmbeddingSetError, match="repeated"):
        steps.join_synthetic([*dirs, dirs[1]], tmp_path / "b")
    steps.synthesize_part(mixture_dir, tmp_path / "other", part=1, parts=3,
                          **{**kwargs, "random_state": 5})
    with pytest.raises(EmbeddingSetError, match="not parts of one set: key"):
        steps.join_synthetic([dirs[0], tmp_path / "other", dirs[2]], tmp_path / "c")
    with pytest.raises(ValueError, match="random_state"):
        steps.synthesize_part(mixture_dir, tmp_path / "d", part=0, parts=2,
                              **{**kwargs, "random_state": None})


def test_synthesize_memory_is_one_shard_not_the_set(mixture_dir, tmp_path):
    n, rows = 200_000, 20_000
    shard = rows * (D * 4 + 8)  # float32 embeddings and int64 labels of one shard
    tracemalloc.start()
    try:
        steps.synthesize(mixture_dir, tmp_path / "s", n=n, random_state=0, shard_rows=rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The shard being drawn, its row order and labels, and np.save's copy of it (in
    # 16 MiB pieces: the whole shard at this small d): ~2 shards, not the 10-shard set.
    # (At d = 1280, 65,536-row shards, synthesize peaks at ~1.15 shards.)
    assert peak < 2.5 * shard, f"peak {peak / shard:.2f} shards"


def test_join_copies_where_hard_links_are_refused(mixture_dir, tmp_path, monkeypatch):
    from dpsynth.data import store

    kwargs = {"n": 500, "random_state": 2, "shard_rows": 100}
    single = steps.synthesize(mixture_dir, tmp_path / "single", **kwargs)
    dirs = [tmp_path / f"p{p}" for p in range(2)]
    for p, d in enumerate(dirs):
        steps.synthesize_part(mixture_dir, d, part=p, parts=2, **kwargs)

    def refuse(*_args, **_kwargs):
        raise OSError("cross-device link")

    monkeypatch.setattr(store.os, "link", refuse)
    joined = steps.join_synthetic(dirs, tmp_path / "joined")
    assert _files(joined.path) == _files(single.path)
    shard = joined.manifest["shards"][0]["embeddings"]
    assert (joined.path / shard).stat().st_ino != (dirs[0] / shard).stat().st_ino
    assert not list(joined.path.glob(".*tmp"))


def _subspace_mixture(eigenvalues: list[float], residual_var: float):
    """One lowrank component in d = 12 with subspace covariance of the given eigenvalues."""
    from dpsynth.gmm.mixture import MixtureParams

    rng = np.random.default_rng(3)
    V = np.linalg.qr(rng.normal(size=(D, R)))[0]
    Q = np.linalg.qr(rng.normal(size=(R, R)))[0]
    C = (Q * np.asarray(eigenvalues)) @ Q.T
    params = MixtureParams(np.array([0]), np.array([1.0]), rng.normal(size=(1, D)),
                           C[None], np.array([residual_var]), class_totals=np.ones(1))
    return params, V, V @ C @ V.T + residual_var * (np.eye(D) - V @ V.T)


@pytest.mark.parametrize("eigenvalues, one_product", [
    ([2.0, 1.0, 0.5, 0.25], True),    # C - s^2 I positive definite
    ([2.0, 1.0, 0.25, 0.25], True),   # floored at s^2, as the repair leaves it
    ([2.0, 1.0, 0.5, 0.1], False),    # a direction below s^2: the two-product path
])
def test_both_subspace_sampling_paths_draw_the_model_covariance(eigenvalues, one_product):
    """mu + s h + (A g) V^T (A A^T = C - s^2 I) where that is PSD, else the projection of
    h: either way the draws have covariance V C V^T + s^2 (I - V V^T)."""
    params, V, cov = _subspace_mixture(eigenvalues, 0.25)
    sampler = MixtureSampler(params, V, normalize=False, radius=1e6, threads=1)
    A = sampler.excess[0]
    assert (A is not None) == one_product
    if one_product:
        np.testing.assert_allclose(A.astype(float) @ A.T, params.covariances[0]
                                   - 0.25 * np.eye(R), atol=1e-6)
    n = 200_000
    X, _ = sampler.draw(np.array([n]), np.random.default_rng(5))
    X = X.astype(np.float64)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(X.mean(0) - params.means[0]) <= 5 * sd / np.sqrt(n))
    se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n)
    err = np.abs(np.cov(X, rowvar=False) - cov)
    assert np.all(err <= 5 * se), float((err / se).max())
