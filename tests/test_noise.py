"""The DP noise source: calibrated scale, symmetry, entropy, and end-to-end calibration."""

from __future__ import annotations

import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.privacy import NoiseSource, ReleaseSpec, build_plan

DELTA = 1e-5
SPECS = (
    ReleaseSpec("subspace", 1.0, 0.5, scope="global"),
    ReleaseSpec("counts", 1.0, 4.0),
    ReleaseSpec("sums", 3.0, 1.0),
    ReleaseSpec("rounds", 1.0, 1.0, repetitions=3),
)
N_DRAWS = 20_000
# The sample std of n i.i.d. Gaussians has relative standard error ~ 1/sqrt(2n) = 0.5% at
# n = 20,000: a 5% tolerance is 10 standard errors, so a correct source never fails it while
# a wrong scale (e.g. sigma vs multiplier, off by the sensitivity 3 or a sqrt(2)) always does.
STD_RTOL = 0.05


@pytest.fixture(scope="module")
def plan():
    return build_plan(SPECS, 1.0, DELTA)


@pytest.mark.parametrize("index, name", list(enumerate(s.name for s in SPECS)))
def test_gaussian_draws_have_the_release_sigma(plan, index, name):
    release = plan.release(name)
    draws = NoiseSource(seed=index).gaussian(release, N_DRAWS)
    assert draws.shape == (N_DRAWS,)
    assert abs(draws.std() - release.sigma) <= STD_RTOL * release.sigma
    # Centred: the mean has standard error sigma / sqrt(n); allow 5 standard errors.
    assert abs(draws.mean()) <= 5 * release.sigma / np.sqrt(N_DRAWS)


def test_gaussian_shapes(plan):
    noise = NoiseSource(seed=0)
    assert noise.gaussian(plan.release("sums"), (3, 5)).shape == (3, 5)
    assert noise.gaussian(plan.release("sums"), 7).shape == (7,)


@pytest.mark.parametrize("index, name", list(enumerate(s.name for s in SPECS)))
def test_symmetric_gaussian_is_symmetric_with_the_release_sigma(plan, index, name):
    release = plan.release(name)
    dim = 200  # 20,100 entries in the upper triangle (diagonal included)
    M = NoiseSource(seed=100 + index).symmetric_gaussian(release, dim)
    assert M.shape == (dim, dim)
    assert np.array_equal(M, M.T)
    upper = M[np.triu_indices(dim)]
    assert abs(upper.std() - release.sigma) <= STD_RTOL * release.sigma
    # The diagonal is noisy too (200 entries: relative std error 5%, so allow 25%).
    assert abs(np.diag(M).std() - release.sigma) <= 0.25 * release.sigma


def test_zero_sigma_release_adds_no_noise():
    plan = build_plan(SPECS, float("inf"), DELTA)
    noise = NoiseSource()
    for release in plan.releases:
        assert np.array_equal(noise.gaussian(release, (4, 3)), np.zeros((4, 3)))
        assert np.array_equal(noise.symmetric_gaussian(release, 5), np.zeros((5, 5)))


# ----------------------------------------------------------------- entropy and seeds
def test_default_source_reads_os_entropy(plan):
    release = plan.release("sums")
    a, b = NoiseSource(), NoiseSource()
    assert a.is_private is True and b.is_private is True
    assert a.seed is None
    # Two independent 16-value draws from a continuous distribution never coincide.
    assert not np.array_equal(a.gaussian(release, 16), b.gaussian(release, 16))
    assert a.provenance() == {"noise_seeded": False, "noise_seed": None}


def test_seeded_source_is_reproducible_and_not_private(plan):
    release = plan.release("sums")
    a, b = NoiseSource(seed=1), NoiseSource(seed=1)
    assert a.is_private is False
    assert np.array_equal(a.gaussian(release, 16), b.gaussian(release, 16))
    assert not np.array_equal(NoiseSource(seed=1).gaussian(release, 16),
                              NoiseSource(seed=2).gaussian(release, 16))
    assert a.provenance() == {"noise_seeded": True, "noise_seed": 1}


# ---------------------------------------------------------- end-to-end calibration
@pytest.mark.filterwarnings("ignore:noise_seed is set:UserWarning")
def test_released_class_counts_have_the_planned_noise():
    """Fit the same data many times with different noise seeds; the spread of the released
    class counts must be the plan's class_counts sigma (the noise actually added in a fit)."""
    n_classes, per_class, dim, n_fits = 4, 500, 8, 300
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_classes * per_class, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    deviations = []
    sigma = None
    for seed in range(n_fits):
        synth = DPSynthesizer(1.0, DELTA, components_per_class=1, covariance="lowrank",
                              subspace_dim=4, random_state=0, noise_seed=seed)
        synth.fit(X, y, classes=list(range(n_classes)))
        # class_totals_ = max(noisy count, 0): with 500 records and sigma ~ 19 (eps = 1) the
        # clip at zero is 26 sigma away, so it never acts and the deviations are the noise.
        assert (synth.class_totals_ > 0).all()
        deviations.append(synth.class_totals_ - per_class)
        sigma = synth.privacy_plan_.release("class_counts").sigma
    deviations = np.concatenate(deviations)  # 1,200 independent draws
    assert 10 < sigma < per_class / 8  # moderate noise, far from the clip
    # 1,200 draws: the sample std has relative standard error 1/sqrt(2400) ~ 2%, so 10% is
    # 5 standard errors; the mean has standard error sigma/sqrt(1200), allow 5 of them.
    assert abs(deviations.std() - sigma) <= 0.10 * sigma
    assert abs(deviations.mean()) <= 5 * sigma / np.sqrt(len(deviations))
    # Different seeds gave different noise (not one draw replayed 300 times).
    assert len(np.unique(np.round(deviations, 9))) == len(deviations)
