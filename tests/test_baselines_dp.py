"""Privacy and correctness of the DP-LS / DP-FC baselines and the shared accounting
(issue 15): each release's stated sensitivity holds on neighbouring datasets, its noise
has the std dp-accounting calibrates, tuning-accounted schemes compose back to at most the
target epsilon, and without noise DP-LS is the exact ridge solution."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.evaluation.baselines import (
    DPLS_SENSITIVITY,
    GRAM_SENSITIVITY,
    DPFCConfig,
    accounted_epsilon,
    accounted_multiplier,
    clipped_gradient_sum,
    dp_fc,
    dp_least_squares,
    dp_least_squares_release,
    dpfc_gradient_release,
    dpfc_grid_event,
    dpfc_grid_gram_weight,
    dpfc_grid_load,
    dpls_release,
    dpsgd_noise_multiplier,
    least_squares_statistics,
    linear_predict,
    noisy_argmax,
    one_hot,
    per_record_gradient_norms,
    released_lda,
    released_least_squares,
    selection_multiplier,
    selection_sigma_records,
)
from dpsynth.preprocessing import bound_norms

DELTA = 1e-5


def easy_problem(n: int, d: int = 16, k: int = 3, seed: int = 0, spread: float = 0.3,
                 draw: int = 0):
    """Well-separated Gaussian classes (records L2-normalised later by the baselines); the
    class centres depend on ``seed`` only, so ``draw`` gives fresh records of one problem."""
    centres = np.random.default_rng(seed).normal(size=(k, d))
    rng = np.random.default_rng([seed, draw])
    y = rng.integers(0, k, size=n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


def released_part(gram: np.ndarray, xty: np.ndarray) -> np.ndarray:
    """The coordinates DP-LS adds noise to: the Gram's upper triangle (the lower one is a
    mirror, not an independent release) and X^T Y."""
    return np.concatenate([gram[np.triu_indices(len(gram))], xty.ravel()])


# ----------------------------------------------------------------- (a) sensitivity


def test_dpls_joint_release_sensitivity_on_neighbours():
    X, y = easy_problem(60, d=8, k=4)
    X[0] *= 50.0  # an unnormalised record: the release must still bound it
    full = released_part(*least_squares_statistics(X, y, 4))
    changes = [np.linalg.norm(full - released_part(*least_squares_statistics(
        np.delete(X, i, 0), np.delete(y, i), 4))) for i in range(len(X))]
    assert max(changes) <= DPLS_SENSITIVITY + 1e-12
    # Not vacuous: the X^T Y part alone moves by ||x|| ||y|| = 1.
    assert min(changes) >= 1.0


def test_gram_release_sensitivity_on_neighbours():
    X, y = easy_problem(40, d=10)
    gram = least_squares_statistics(X, y, 3)[0]
    iu = np.triu_indices(10)
    for i in range(len(X)):
        other = least_squares_statistics(np.delete(X, i, 0), np.delete(y, i), 3)[0]
        assert np.linalg.norm((gram - other)[iu]) <= GRAM_SENSITIVITY + 1e-12


@pytest.mark.parametrize("clip", [0.3, 1.0, 5.0])
def test_dpfc_gradient_sum_sensitivity_on_neighbours(clip):
    X, y = easy_problem(50, d=6, k=3, seed=1)
    Xb = bound_norms(X, 1.0, normalize=True)
    Y = one_hot(y, 3)
    W = np.random.default_rng(2).normal(scale=3.0, size=(6, 3))
    full = clipped_gradient_sum(Xb, Y, W, clip)
    for i in range(len(X)):
        other = clipped_gradient_sum(np.delete(Xb, i, 0), np.delete(Y, i, 0), W, clip)
        assert np.linalg.norm(full - other) <= clip + 1e-12
    # The rank-one shortcut for the per-record norms is the explicit Frobenius norm.
    logits = Xb @ W
    P = np.exp(logits - logits.max(1, keepdims=True))
    R = P / P.sum(1, keepdims=True) - Y
    explicit = [np.linalg.norm(np.outer(x, r)) for x, r in zip(Xb, R, strict=True)]
    np.testing.assert_allclose(per_record_gradient_norms(Xb, R), explicit, rtol=1e-12)


def test_selection_counts_sensitivity_on_neighbours():
    rng = np.random.default_rng(3)
    y_val = rng.integers(0, 3, size=80)
    preds = rng.integers(0, 3, size=(5, 80))  # five configurations' predictions

    def counts(keep):
        return np.array([(p[keep] == y_val[keep]).sum() for p in preds], dtype=float)

    full = counts(np.ones(80, bool))
    for i in range(80):
        keep = np.ones(80, bool)
        keep[i] = False
        assert np.linalg.norm(full - counts(keep)) <= math.sqrt(5) + 1e-12
    # sigma_records of noise on counts of sensitivity sqrt(m): multiplier sigma / sqrt(m).
    assert selection_multiplier(5, 30.0) == pytest.approx(30.0 / math.sqrt(5))


# ------------------------------------------------------------- (b) noise calibration


def test_dpls_noise_std_is_the_calibrated_sigma():
    eps = 1.0
    z = accounted_multiplier(lambda m: dpls_release(m).dp_event(), eps, DELTA,
                             gaussian_load=1.0)
    # One Gaussian mechanism: PLD's multiplier agrees with the analytic Gaussian's.
    assert z == pytest.approx(dp_accounting.get_sigma_gaussian(eps, DELTA), rel=0.01)
    assert accounted_epsilon(dpls_release(z).dp_event(), DELTA) <= eps
    d, k = 160, 32  # 12,880 + 5,120 draws: the std's standard error is under 1%
    big = 1e6  # keeps every eigenvalue positive, so the PSD repair leaves the noise as is
    rel = dp_least_squares_release(np.zeros((1, d)), np.zeros(1), k, z, noise_seed=7,
                                   stats=(big * np.eye(d), np.zeros((d, k))))
    gram_noise = (rel.vecs * rel.vals) @ rel.vecs.T - big * np.eye(d)
    sigma = z * DPLS_SENSITIVITY
    assert rel.sigma == pytest.approx(sigma)
    for draws in (gram_noise[np.triu_indices(d)], rel.xty.ravel()):
        assert abs(draws.mean()) < 0.05 * sigma
        assert draws.std() == pytest.approx(sigma, rel=0.04)
    np.testing.assert_allclose(gram_noise, gram_noise.T, atol=1e-6 * sigma)


def test_dpfc_multiplier_composes_to_target_with_its_gram_share():
    eps = 0.5
    cfg = DPFCConfig(steps=20, gram_share=0.25, clip=0.5)
    z = accounted_multiplier(cfg.dp_event, eps, DELTA, gaussian_load=cfg.gaussian_load())
    got = accounted_epsilon(cfg.dp_event(z), DELTA)
    assert 0.97 * eps <= got <= eps
    # Gaussian composition is mu-GDP: the Gram's share of mu^2 is gram_share.
    w = cfg.gram_weight()
    assert (1 / (w * z) ** 2) / (cfg.steps / z**2 + 1 / (w * z) ** 2) == pytest.approx(0.25)
    assert dpfc_gradient_release(z, cfg).sigma == pytest.approx(z * 0.5)
    # Independent cross-check with the RDP accountant (an upper bound, looser than PLD).
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(cfg.dp_event(z))
    assert got <= rdp.get_epsilon(DELTA) <= 1.3 * eps


def test_tuning_accounted_schemes_compose_back_to_at_most_target():
    eps = 1.0
    grid = [DPFCConfig(steps=5), DPFCConfig(steps=15, lr=1.0, ridge_scale=4.0)]
    sel = selection_multiplier(len(grid), 30.0)
    z = accounted_multiplier(lambda m: dpfc_grid_event(grid, m), eps, DELTA,
                             selection_multiplier=sel, gaussian_load=dpfc_grid_load(grid))
    # Written out release by release: one shared Gram, each configuration's steps, the
    # selection.
    w = dpfc_grid_gram_weight(grid)
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(z * w),
        *(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), c.steps)
          for c in grid),
        dp_accounting.GaussianDpEvent(sel)])
    assert 0.97 * eps <= accounted_epsilon(event, DELTA) <= eps
    # The shared Gram takes gram_share of the grid's mu^2.
    steps_mu2 = sum(c.steps for c in grid) / z**2
    assert (1 / (w * z) ** 2) / (steps_mu2 + 1 / (w * z) ** 2) == pytest.approx(0.25)
    # One configuration: the shared scheme is that configuration's own.
    assert dpfc_grid_gram_weight(grid[:1]) == pytest.approx(grid[0].gram_weight())
    with pytest.raises(ValueError, match="gram_share"):
        dpfc_grid_gram_weight([DPFCConfig(gram_share=0.25), DPFCConfig(gram_share=0.5)])
    # DP-LS: one release + the selection among the ridges.
    sel_ls = selection_multiplier(6, 30.0)
    z_ls = accounted_multiplier(lambda m: dpls_release(m).dp_event(), eps, DELTA,
                                selection_multiplier=sel_ls, gaussian_load=1.0)
    event_ls = dp_accounting.ComposedDpEvent([dpls_release(z_ls).dp_event(),
                                              dp_accounting.GaussianDpEvent(sel_ls)])
    assert accounted_epsilon(event_ls, DELTA) <= eps
    # The selection's share costs the release some noise, never less.
    assert z_ls > accounted_multiplier(lambda m: dpls_release(m).dp_event(), eps, DELTA,
                                       gaussian_load=1.0)


@pytest.mark.parametrize("eps", [0.25, 0.5, 1.0])
def test_the_selection_noise_leaves_the_release_at_least_half_the_budget(eps):
    """At eps = 0.25 a fixed 30-record noisy max over 6 ridges alone spends more than eps;
    the budget-aware noise keeps its GDP share at most one half, and the whole composes to
    at most eps."""
    with pytest.raises(ValueError, match="selection alone"):
        accounted_multiplier(lambda m: dpls_release(m).dp_event(), 0.25, DELTA,
                             selection_multiplier=selection_multiplier(6, 30.0),
                             gaussian_load=1.0)
    sigma = selection_sigma_records(eps, DELTA, 6)
    assert sigma >= 30.0
    sel = selection_multiplier(6, sigma)
    mu2 = dp_accounting.get_sigma_gaussian(eps, DELTA) ** -2
    assert sel ** -2 <= 0.5 * mu2 * (1 + 1e-9)
    z = accounted_multiplier(lambda m: dpls_release(m).dp_event(), eps, DELTA,
                             selection_multiplier=sel, gaussian_load=1.0)
    event = dp_accounting.ComposedDpEvent([dpls_release(z).dp_event(),
                                           dp_accounting.GaussianDpEvent(sel)])
    assert accounted_epsilon(event, DELTA) <= eps


def test_many_models_multiplier_composes_m_runs_to_target():
    q, steps, eps = 0.05, 40, 1.0
    one = dpsgd_noise_multiplier(q, steps, eps, DELTA)
    four = dpsgd_noise_multiplier(q, steps, eps, DELTA, runs=4)
    assert four > one
    run = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(four)), steps)
    got = accounted_epsilon(dp_accounting.SelfComposedDpEvent(run, 4), DELTA)
    assert 0.95 * eps <= got <= eps


def test_noisy_argmax_is_exact_without_noise_and_noisy_with_it():
    rng = np.random.default_rng(0)
    assert noisy_argmax([3, 9, 4], 0.0, rng) == 1
    picks = {noisy_argmax([10, 11], 30.0, rng) for _ in range(50)}
    assert picks == {0, 1}


# ------------------------------------------------------------ (c) no noise: exactness


def test_dpls_without_noise_is_the_exact_ridge_solution():
    X, y = easy_problem(300, d=12, k=3)
    rel = dp_least_squares_release(X, y, 3, 0.0)
    Xb = bound_norms(X, 1.0, normalize=True)
    for ridge in (1e-3, 0.5, 10.0):
        exact = np.linalg.solve(Xb.T @ Xb + ridge * np.eye(12), Xb.T @ one_hot(y, 3))
        np.testing.assert_allclose(rel.solve(ridge), exact, rtol=1e-7, atol=1e-10)


def test_dpls_and_dpfc_learn_an_easy_problem():
    X, y = easy_problem(1500, seed=4)
    X_tr, y_tr, X_val, y_val = X[:1000], y[:1000], X[1000:], y[1000:]
    X_te, y_te = easy_problem(1000, seed=4, draw=1)
    for eps, floor in ((math.inf, 0.97), (4.0, 0.9)):
        ls = dp_least_squares(X_tr, y_tr, 3, eps, DELTA, (0.1, 1.0), X_val, y_val,
                              account_tuning=True, noise_seed=1)
        assert (linear_predict(ls.weights, X_te) == y_te).mean() >= floor
        for accounted in (False, True):
            fc = dp_fc(X_tr, y_tr, 3, eps, DELTA,
                       [DPFCConfig(steps=10, lr=0.5), DPFCConfig(steps=5, lr=1.0)], X_val,
                       y_val, account_tuning=accounted, noise_seed=1)
            assert (linear_predict(fc.weights, X_te) == y_te).mean() >= floor


def test_closed_forms_from_dpsynth_release_without_noise():
    X, y = easy_problem(900, d=12, k=3, seed=5)
    synth = DPSynthesizer(math.inf, DELTA, subspace_dim=11, random_state=0).fit(
        X, y, classes=np.arange(3))
    Xb = bound_norms(X, 1.0, normalize=True)
    # Without noise, top 11 eigenpairs + the trace's remainder on the one dimension left
    # is the exact Gram, and the class sums are X^T Y: the exact ridge solution.
    ls = released_least_squares(synth)
    exact = np.linalg.solve(Xb.T @ Xb + 0.5 * np.eye(12), Xb.T @ one_hot(y, 3))
    np.testing.assert_allclose(ls.solve(0.5), exact, rtol=1e-6, atol=1e-8)
    coef, intercept, component_class = released_lda(synth)
    pred = synth.classes_[component_class[linear_predict(coef, X, intercept)]]
    assert (pred == y).mean() >= 0.97
