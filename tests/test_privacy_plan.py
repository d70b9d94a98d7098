"""The privacy plan: calibration, accounting, parameter validation and serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.privacy import (
    NoiseSource,
    PrivacyParameterError,
    PrivacyPlan,
    ReleaseSpec,
    build_plan,
    gaussian_epsilon_closed_form,
)

DELTA = 1e-5

# A plan shaped like a real fit: a global release with a small weight (less noise), counts with
# a large weight, sums and second moments, and one release repeated three times.
MULTI_SPECS = (
    ReleaseSpec("subspace", 1.0, 0.5, scope="global"),
    ReleaseSpec("counts", 1.0, 4.0),
    ReleaseSpec("sums", 2.0, 1.0),
    ReleaseSpec("second", 4.0, 1.0),
    ReleaseSpec("rounds", 1.0, 1.0, repetitions=3),
)


def _gdp_equivalent_epsilon(plan: PrivacyPlan, delta: float) -> float:
    """Independent accounting: a composition of Gaussian mechanisms is exactly mu-GDP with
    mu^2 = sum_i repetitions_i / multiplier_i^2, i.e. one Gaussian of multiplier 1/mu."""
    mu = math.sqrt(sum(r.repetitions / r.noise_multiplier**2 for r in plan.releases))
    return gaussian_epsilon_closed_form(1.0 / mu, delta)


# ------------------------------------------------------------------ single Gaussian release
@pytest.mark.parametrize("eps", [0.5, 1.0, 4.0])
def test_single_release_pld_matches_analytic_gaussian(eps):
    plan = build_plan([ReleaseSpec("a", 1.0)], eps, DELTA)
    closed = gaussian_epsilon_closed_form(plan.release("a").noise_multiplier, DELTA)
    # PLD with discretisation 1e-4 is exact up to well under 1% at these epsilons.
    assert abs(plan.epsilon_pld - closed) <= 0.01 * closed
    assert abs(plan.epsilon_pld - eps) <= 0.01 * eps
    assert plan.epsilon_pld <= eps * (1 + 1e-9)


def test_sigma_is_noise_multiplier_times_sensitivity():
    plan = build_plan([ReleaseSpec("one", 1.0), ReleaseSpec("two", 2.0)], 1.0, DELTA)
    one, two = plan.release("one"), plan.release("two")
    # Equal weights: equal multipliers, whatever the sensitivity (privacy is in its units).
    assert one.noise_multiplier == pytest.approx(two.noise_multiplier, rel=1e-12)
    assert two.noise_multiplier > 0
    assert two.sigma == pytest.approx(2.0 * two.noise_multiplier, rel=1e-12)
    assert one.sigma == pytest.approx(one.noise_multiplier, rel=1e-12)


# ------------------------------------------------------------------------- PLD vs RDP
@pytest.mark.parametrize("eps", [1.0, 4.0])
def test_pld_and_rdp_agree_within_ten_percent(eps):
    plan = build_plan(MULTI_SPECS, eps, DELTA)
    pld, rdp = plan.epsilon_pld, plan.epsilon_rdp
    assert math.isfinite(pld) and math.isfinite(rdp)
    # RDP is an upper bound on the (near-exact) PLD epsilon; 0.1% slack for PLD discretisation.
    assert rdp >= pld * 0.999
    assert abs(rdp - pld) / pld <= 0.10


# ------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("eps", [0.25, 1.0, 8.0])
def test_calibration_hits_target(eps):
    plan = build_plan(MULTI_SPECS, eps, DELTA)
    assert abs(plan.epsilon_pld - eps) <= 0.01 * eps
    # Never over budget: the calibrated noise errs on the private side of the target.
    assert plan.epsilon_pld <= eps * (1 + 1e-9)
    # The same target by an accountant that shares no code with the plan (closed-form GDP).
    assert abs(_gdp_equivalent_epsilon(plan, DELTA) - eps) <= 0.01 * eps
    # Every multiplier is the one scale times the release's weight.
    for spec in MULTI_SPECS:
        assert plan.release(spec.name).noise_multiplier == pytest.approx(
            plan.scale * spec.weight, rel=1e-12)
    assert plan.epsilon == eps and plan.delta == DELTA


def test_smaller_epsilon_means_more_noise():
    loose = build_plan(MULTI_SPECS, 1.0, DELTA)
    tight = build_plan(MULTI_SPECS, 0.25, DELTA)
    for spec in MULTI_SPECS:
        assert tight.release(spec.name).sigma > loose.release(spec.name).sigma


# ------------------------------------------------------- classes do not change epsilon
def _labelled(n_classes: int, per_class: int = 300, dim: int = 8, seed: int = 0):
    # 300 records a class: well above the drop threshold (3 sigma of the eps=1 class counts ~ 110).
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_classes * per_class, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return X, y


def test_number_of_classes_does_not_change_the_plan():
    dim = 8
    plans = []
    for n_classes in (2, 7):
        X, y = _labelled(n_classes, dim=dim)
        synth = DPSynthesizer(1.0, DELTA, subspace_dim=4, random_state=0)
        synth.fit(X, y, classes=list(range(n_classes)))
        plans.append(synth.privacy_plan_)
        assert synth.epsilon_ == synth.privacy_plan_.epsilon_pld
    two, seven = (p.to_dict() for p in plans)
    assert two["releases"] == seven["releases"]
    assert two["epsilon"] == seven["epsilon"]
    assert two["epsilon_rdp"] == seven["epsilon_rdp"]
    # The plan is a function of public configuration and the dimension only.
    before_data = DPSynthesizer(1.0, DELTA, subspace_dim=4, random_state=0).make_plan(dim)
    assert before_data.to_dict() == two == seven
    assert abs(before_data.epsilon_pld - 1.0) <= 0.01


# ------------------------------------------------------------------- invalid parameters
class _Untouchable:
    """Data that fails the test if anything reads it."""

    def __array__(self, *args, **kwargs):
        raise AssertionError("the data was read before the privacy parameters were checked")

    def __len__(self):
        raise AssertionError("the data was read before the privacy parameters were checked")


BAD_EPSILONS = [0, -1, float("nan"), float("-inf"), "abc"]
BAD_DELTAS = [0, -1e-6, float("nan"), 1e-3, 0.5]


def test_privacy_parameter_error_is_a_value_error():
    assert issubclass(PrivacyParameterError, ValueError)


@pytest.mark.parametrize("eps", BAD_EPSILONS)
def test_invalid_epsilon_is_refused_before_reading_data(eps):
    X_bad = np.full((10, 4), np.nan)  # itself invalid: must not be the reported problem
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(PrivacyParameterError, match="epsilon"):
        DPSynthesizer(eps, DELTA, subspace_dim=2).fit(X_bad, y, classes=[0])
    with pytest.raises(PrivacyParameterError, match="epsilon"):
        DPSynthesizer(eps, DELTA, subspace_dim=2).fit(_Untouchable(), _Untouchable(),
                                                       classes=[0])
    with pytest.raises(PrivacyParameterError, match="epsilon"):
        build_plan([ReleaseSpec("a", 1.0)], eps, DELTA)


@pytest.mark.parametrize("delta", BAD_DELTAS)
def test_invalid_delta_is_refused_before_reading_data(delta):
    X_bad = np.full((10, 4), np.nan)
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(PrivacyParameterError, match="delta"):
        DPSynthesizer(1.0, delta, subspace_dim=2).fit(X_bad, y, classes=[0])
    with pytest.raises(PrivacyParameterError, match="delta"):
        DPSynthesizer(1.0, delta, subspace_dim=2).fit(_Untouchable(), _Untouchable(),
                                                       classes=[0])
    with pytest.raises(PrivacyParameterError, match="delta"):
        build_plan([ReleaseSpec("a", 1.0)], 1.0, delta)


def test_infinite_epsilon_is_the_explicit_non_private_mode():
    plan = build_plan(list(MULTI_SPECS), float("inf"), DELTA)
    assert plan.private is False
    assert all(r.sigma == 0.0 and r.noise_multiplier == 0.0 for r in plan.releases)
    assert math.isinf(plan.epsilon_pld)
    assert plan.to_dict()["private"] is False
    draws = NoiseSource().gaussian(plan.release("counts"), 100)
    assert np.array_equal(draws, np.zeros(100))

    synth_plan = DPSynthesizer(float("inf"), DELTA, components_per_class=3,
                               subspace_dim=4).make_plan(16)
    assert synth_plan.private is False
    assert all(r.sigma == 0.0 for r in synth_plan.releases)


def test_noise_seed_marks_the_plan_not_private():
    seeded = build_plan(MULTI_SPECS, 1.0, DELTA, noise_seeded=True)
    assert seeded.private is False
    assert seeded.to_dict()["noise_seeded"] is True
    assert seeded.to_dict()["private"] is False
    unseeded = build_plan(MULTI_SPECS, 1.0, DELTA)
    assert unseeded.private is True
    assert unseeded.to_dict()["noise_seeded"] is False


def test_noise_seed_on_the_synthesizer_marks_the_fit_not_private():
    X, y = _labelled(2)
    synth = DPSynthesizer(1.0, DELTA, subspace_dim=4, noise_seed=3)
    with pytest.warns(UserWarning, match="NOT private"):
        synth.fit(X, y, classes=[0, 1])
    assert synth.private_ is False
    assert synth.privacy_plan_.to_dict()["noise_seeded"] is True
    assert synth.privacy_plan_.to_dict()["private"] is False


@pytest.mark.parametrize("kwargs, match", [
    ({"sensitivity": 0.0}, "sensitivity"),
    ({"sensitivity": float("inf")}, "sensitivity"),
    ({"weight": -1.0}, "weight"),
    ({"repetitions": 0}, "repetitions"),
    ({"repetitions": 1.5}, "repetitions"),
    ({"scope": "everywhere"}, "scope"),
])
def test_release_spec_validation(kwargs, match):
    args = {"name": "r", "sensitivity": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        ReleaseSpec(**args)


def test_build_plan_refuses_duplicate_or_no_releases():
    with pytest.raises(ValueError, match="unique"):
        build_plan([ReleaseSpec("a", 1.0), ReleaseSpec("a", 2.0)], 1.0, DELTA)
    with pytest.raises(ValueError, match="at least one release"):
        build_plan([], 1.0, DELTA)


# ---------------------------------------------------------------------- serialisation
def test_plan_dict_round_trip_through_json():
    plan = build_plan(MULTI_SPECS, 1.0, DELTA,
                             metadata={"embedding_dim": 16, "covariance": "lowrank"})
    back = PrivacyPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan
    assert back.to_dict() == plan.to_dict()
    assert back.release("rounds").repetitions == 3
    assert back.release("subspace").scope == "global"


def test_infinite_plan_round_trips_as_strict_json():
    plan = build_plan(list(MULTI_SPECS), float("inf"), DELTA, noise_seeded=True)

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    data = json.loads(json.dumps(plan.to_dict()), parse_constant=refuse)
    back = PrivacyPlan.from_dict(data)
    assert back == plan
    assert back.private is False and back.noise_seeded is True
    assert math.isinf(back.epsilon) and math.isinf(back.epsilon_pld)


def test_unknown_release_name_lists_the_known_ones():
    plan = build_plan(MULTI_SPECS, 1.0, DELTA)
    with pytest.raises(KeyError, match="nope") as info:
        plan.release("nope")
    for spec in MULTI_SPECS:
        assert spec.name in str(info.value)
    assert "counts" in plan and "nope" not in plan

