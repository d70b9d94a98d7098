"""Method v3's designs (benchmarks/method_v3.py, issue 26): the teacher's releases are
calibrated as ``teacher_specs`` argues (one plan composed to eps, the stated share of it,
gradient sensitivity ``clip`` on neighbouring datasets), the teacher-LDA mixture has the
teacher's boundary, the eps switch reads eps alone, and every DESIGN_ROWS callable returns
what benchmarks/utility.py expects."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import method_v3 as mv3  # noqa: E402

from dpsynth import DPSynthesizer  # noqa: E402
from dpsynth.evaluation.baselines import clipped_gradient_sum, one_hot  # noqa: E402


def blobs(n_per=40, d=24, k=10, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    X = np.concatenate([c + 0.5 * rng.standard_normal((n_per, d)) for c in centres])
    y = np.repeat(np.arange(k), n_per)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


@pytest.mark.parametrize("share", [0.5, 0.75])
def test_teacher_plan_composes_to_eps_with_its_share(share):
    synth = DPSynthesizer(1.0, 1e-5)
    specs = synth._release_specs(32)
    teacher = mv3.teacher_specs(specs, share)
    load_mix, load_t = mv3.gaussian_load(specs), mv3.gaussian_load(teacher)
    assert load_t / (load_mix + load_t) == pytest.approx(share)
    gram, grad = teacher
    assert (gram.sensitivity, gram.scope) == (1.0, "global")
    assert (grad.sensitivity, grad.repetitions) == (mv3.TEACHER_CONFIG.clip,
                                                    mv3.TEACHER_CONFIG.steps)
    assert 1.0 / gram.weight**2 == pytest.approx(mv3.TEACHER_GRAM_SHARE * load_t)
    plan = synth.make_plan(32, teacher)
    assert plan.epsilon_pld == pytest.approx(1.0, abs=5e-3)
    assert plan.epsilon_pld <= 1.0 + 1e-6
    # one scale for all: each release's multiplier is scale * its weight
    for spec in [*specs, *teacher]:
        assert plan.release(spec.name).noise_multiplier == pytest.approx(
            plan.scale * spec.weight)


def test_teacher_gradient_sensitivity_on_neighbours():
    """Adding or removing one record moves the clipped gradient sum by at most ``clip``
    in Frobenius norm, whatever the current weights (the release's sensitivity)."""
    X, y = blobs(n_per=10)
    X = X.astype(np.float64)  # the sum runs in X's dtype: float32 rounds at ~1e-7
    rng = np.random.default_rng(1)
    clip = mv3.TEACHER_CONFIG.clip
    for _ in range(20):
        W = 5.0 * rng.standard_normal((X.shape[1], 10))
        full = clipped_gradient_sum(X, one_hot(y, 10), W, clip)
        i = int(rng.integers(len(X)))
        keep = np.arange(len(X)) != i
        less = clipped_gradient_sum(X[keep], one_hot(y[keep], 10), W, clip)
        assert np.linalg.norm(full - less) <= clip + 1e-9


def test_teacher_noise_is_the_plans(monkeypatch):
    """teacher_weights draws the gradient noise at the plan entry's sigma: with zero data
    signal (W = 0 start, lr scaled), the first step's noise std matches statistically."""
    X, y = blobs(n_per=20, d=16)
    synth = DPSynthesizer(0.5, 1e-5)
    plan = synth.make_plan(16, mv3.teacher_specs(synth._release_specs(16), 0.5))
    drawn = []
    from dpsynth.privacy import NoiseSource

    original = NoiseSource.gaussian

    def spy(self, release, shape):
        out = original(self, release, shape)
        if release.name == "dpfc_gradient":
            drawn.append((release.sigma, out))
        return out

    monkeypatch.setattr(NoiseSource, "gaussian", spy)
    mv3.teacher_weights(X, y, plan)
    sigma = plan.release(mv3.TEACHER_GRADIENT).sigma
    assert len(drawn) == mv3.TEACHER_CONFIG.steps
    noise = np.concatenate([d.ravel() for _, d in drawn])
    assert all(s == pytest.approx(sigma) for s, _ in drawn)
    # 1,600 draws: the sample std is within 10% of sigma with overwhelming probability
    assert noise.std() == pytest.approx(sigma, rel=0.1)


def test_teacher_lda_mixture_has_the_teachers_directions():
    X, y = blobs(d=80)
    synth = DPSynthesizer(math.inf, 1e-5, subspace_dim=8, random_state=0).fit(
        X, y, classes=np.arange(10))
    W = np.random.default_rng(2).standard_normal((X.shape[1], 10))
    params, info = mv3.teacher_lda_mixture(synth, W)
    V, A, s = synth.subspace_, params.covariances[0], params.residual_var[0]
    S = V @ A @ V.T + s * (np.eye(len(V)) - V @ V.T)
    directions = np.linalg.solve(S, params.means.T)  # (d, K): S^-1 mu_c
    diff = directions - info["alpha"] * W
    assert np.allclose(diff, diff[:, :1], atol=1e-6 * np.abs(directions).max())


def test_eps_switch_reads_eps_alone():
    assert mv3.switch_params(0.25) == mv3.switch_params(0.5) == {"covariance_ridge": 1.0}
    assert mv3.switch_params(1.0) == mv3.switch_params(math.inf) == {}


ROWS = {**mv3.DESIGN_ROWS,
        "teacher-lda": mv3.teacher_row(0.5, "lda")}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_design_rows_return_synthetic_sets(name):
    X, y = blobs(n_per=300, d=80)  # the default subspace has r = 64
    X_syn, y_syn = ROWS[name](X, y, 4.0, 1e-5, 0)
    assert X_syn.shape == X.shape and y_syn.shape == y.shape
    assert set(np.unique(y_syn)) <= set(range(10))
    assert np.allclose(np.linalg.norm(X_syn, axis=1), 1.0, atol=1e-4)
