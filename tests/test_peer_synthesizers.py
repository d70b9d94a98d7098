"""Privacy and correctness of the peer synthesizers (issue 26): DP-MERF's and Private
Evolution's releases have the stated sensitivity on neighbouring datasets (add or remove
one record), their noise has the std the plan calibrates, and the releases compose back to
the target epsilon (PLD, RDP as a cross-check)."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from dpsynth.evaluation.baselines import accounted_epsilon
from dpsynth.evaluation.peer_synthesizers import (
    DPMERF,
    MERF_COUNTS,
    MERF_SUMS,
    PE_HISTOGRAM,
    PrivateEvolution,
    merf_class_sums,
    merf_plan,
    nearest_votes,
    pe_plan,
    random_fourier_features,
)
from dpsynth.preprocessing import bound_norms

DELTA = 1e-5


def easy_problem(n: int, d: int = 16, k: int = 3, seed: int = 0, spread: float = 0.3):
    """Well-separated non-negative classes, rows L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(k, d))) * (rng.random((k, d)) < 0.4)
    y = rng.integers(0, k, size=n)
    X = np.abs(centres[y] + spread * rng.normal(size=(n, d)))
    return bound_norms(X, 1.0, normalize=True), y


# ----------------------------------------------------------------- (a) sensitivity


def test_random_fourier_features_have_norm_one_for_any_record():
    W = np.random.default_rng(0).normal(scale=3.0, size=(8, 50))
    X = np.random.default_rng(1).normal(scale=100.0, size=(20, 8))  # far from unit norm
    np.testing.assert_allclose(np.linalg.norm(random_fourier_features(X, W), axis=1), 1.0,
                               rtol=1e-12)


def test_merf_class_sums_sensitivity_on_neighbours():
    X, y = easy_problem(60, d=8, k=3)
    X = np.array(X)
    X[0] *= 50.0  # an unnormalised record: the feature map bounds it anyway
    W = np.random.default_rng(2).normal(scale=2.0, size=(8, 40))
    full = merf_class_sums(X, y, 3, W)
    changes = [np.linalg.norm(full - merf_class_sums(np.delete(X, i, 0), np.delete(y, i),
                                                     3, W)) for i in range(len(X))]
    assert max(changes) <= 1.0 + 1e-9
    assert min(changes) >= 1.0 - 1e-9  # tight: every record moves one row by exactly 1
    counts = np.bincount(y, minlength=3)
    for i in range(len(X)):
        assert np.abs(counts - np.bincount(np.delete(y, i), minlength=3)).sum() == 1


def test_pe_vote_histogram_sensitivity_on_neighbours():
    X, y = easy_problem(80, d=10, k=4, seed=3)
    cand = np.abs(np.random.default_rng(4).normal(size=(4, 7, 10)))
    cand /= np.linalg.norm(cand, axis=-1, keepdims=True)
    full = nearest_votes(X, y, cand)
    assert full.sum() == len(X)  # one vote per record
    for i in range(len(X)):
        diff = full - nearest_votes(np.delete(X, i, 0), np.delete(y, i), cand)
        assert np.linalg.norm(diff) == pytest.approx(1.0)  # one bin, by one vote
        assert np.abs(diff).sum() == 1


# ------------------------------------------------------------- (b) noise calibration


@pytest.mark.parametrize("eps", [0.25, 1.0])
def test_merf_noise_std_is_the_calibrated_sigma(eps):
    X, y = easy_problem(300, d=12, k=4, seed=5)
    merf = DPMERF(eps, DELTA, n_frequencies=1500, noise_seed=11).release(X, y)
    plan = merf.privacy_plan_
    sums_rel, counts_rel = plan.release(MERF_SUMS), plan.release(MERF_COUNTS)
    assert sums_rel.sensitivity == 1.0 and counts_rel.sensitivity == 1.0
    assert counts_rel.sigma == pytest.approx(4.0 * sums_rel.sigma)
    exact = merf_class_sums(X, y, 4, merf.frequencies_)
    # target = noisy sums / max(noisy counts, 1): recover the noisy sums.
    noisy = merf.target_ * np.maximum(merf.counts_, 1.0)[:, None]
    draws = (noisy - exact).ravel()  # 4 x 3,000 draws: the std's standard error is < 1%
    assert abs(draws.mean()) < 0.05 * sums_rel.sigma
    assert draws.std() == pytest.approx(sums_rel.sigma, rel=0.04)
    # One Gaussian-equivalent budget: sigma matches the analytic Gaussian's for the
    # composed pair (mu^2 adds: 1/z^2 + 1/(4z)^2).
    z = sums_rel.noise_multiplier
    mu = np.sqrt(1 / z**2 + 1 / (4 * z) ** 2)
    assert 1 / mu == pytest.approx(dp_accounting.get_sigma_gaussian(eps, DELTA), rel=0.01)


def test_pe_noise_std_is_the_calibrated_sigma():
    X, y = easy_problem(400, d=12, k=4, seed=6)
    pe = PrivateEvolution(1.0, DELTA, population=800, iterations=3, noise_seed=3,
                          threshold=0.0).fit(X, y)
    rel = pe.privacy_plan_.release(PE_HISTOGRAM)
    assert rel.sensitivity == 1.0 and rel.repetitions == 3
    exact = nearest_votes(X, y, pe.candidates_.astype(np.float32))
    draws = (pe.noisy_votes_ - exact).ravel()  # 3,200 draws
    assert abs(draws.mean()) < 0.06 * rel.sigma
    assert draws.std() == pytest.approx(rel.sigma, rel=0.05)


# -------------------------------------------------------------------- (c) composition


@pytest.mark.parametrize("eps", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_merf_releases_compose_back_to_target(eps):
    plan = merf_plan(eps, DELTA)
    z = plan.release(MERF_SUMS).noise_multiplier
    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z),
                                           dp_accounting.GaussianDpEvent(4.0 * z)])
    assert 0.97 * eps <= accounted_epsilon(event, DELTA) <= eps * 1.001
    assert plan.epsilon_pld <= eps
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    assert plan.epsilon_pld <= rdp.get_epsilon(DELTA) <= 1.5 * eps


@pytest.mark.parametrize("eps,T", [(0.25, 4), (1.0, 10), (4.0, 20)])
def test_pe_iterations_compose_back_to_target(eps, T):
    plan = pe_plan(eps, DELTA, T)
    rel = plan.release(PE_HISTOGRAM)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(rel.sigma), T)
    assert 0.97 * eps <= accounted_epsilon(event, DELTA) <= eps * 1.001
    # T Gaussian mechanisms of multiplier z are one of multiplier z / sqrt(T).
    assert rel.noise_multiplier / np.sqrt(T) == pytest.approx(
        dp_accounting.get_sigma_gaussian(eps, DELTA), rel=0.01)
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(event)
    assert plan.epsilon_pld <= rdp.get_epsilon(DELTA) <= 1.5 * eps


# ---------------------------------------------------------------------- (d) behaviour


def test_seeded_fits_are_marked_not_private():
    X, y = easy_problem(50)
    assert not DPMERF(1.0, DELTA, noise_seed=0).release(X, y).privacy_plan_.private
    assert DPMERF(1.0, DELTA).release(X, y).privacy_plan_.private
    pe = PrivateEvolution(1.0, DELTA, population=5, iterations=2).fit(X, y)
    assert pe.privacy_plan_.private


@pytest.mark.parametrize("make", [
    lambda: DPMERF(4.0, DELTA, n_frequencies=200, steps=150, lengthscale=1.0),
    lambda: PrivateEvolution(4.0, DELTA, population=20, iterations=5),
])
def test_samples_carry_the_classes(make):
    X, y = easy_problem(600, d=16, k=3, seed=7, spread=0.1)
    labels = np.array([10, 20, 30])[y]
    synth = make().fit(X, labels, classes=np.array([10, 20, 30]))
    Xs, ys = synth.sample(300)
    assert Xs.shape == (300, 16) and Xs.dtype == np.float32
    assert set(np.unique(ys)) == {10, 20, 30}
    np.testing.assert_allclose(np.linalg.norm(Xs, axis=1), 1.0, rtol=1e-5)
    # Better than chance: the nearest class mean of the samples labels the real records.
    means = np.stack([Xs[ys == c].mean(0) for c in (10, 20, 30)])
    pred = np.array([10, 20, 30])[(X @ means.T).argmax(1)]
    assert (pred == labels).mean() > 0.6


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="need X"):
        DPMERF(1.0, DELTA).fit(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="not in classes"):
        PrivateEvolution(1.0, DELTA).fit(np.ones((4, 3)), np.array([0, 1, 2, 3]),
                                         classes=np.array([0, 1]))
