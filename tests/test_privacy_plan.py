"""The privacy plan: calibration, accounting, parameter validation and serialisation."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import textwrap
from dataclasses import replace

import dp_accounting
import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.gmm import budget
from dpsynth.privacy import (
    MAX_DELTA,
    NoiseSource,
    PrivacyParameterError,
    PrivacyPlan,
    ReleaseSpec,
    build_plan,
    calibrate_scale,
    gaussian_epsilon_closed_form,
    validate_epsilon_delta,
    validation,
)
from dpsynth.privacy.accounting import gaussian_event, pld_epsilon
from dpsynth.privacy.plan import (
    PlanMismatchError,
    check_same_noise,
    match_specs,
    resolve_mechanism,
    verify_plan_dict,
)
from dpsynth.privacy.validation import MAX_EPSILON, MIN_DELTA, MIN_EPSILON

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



# ------------------------------------------------------------- supported epsilon/delta range
# Calibration is bounded in time and memory only within [MIN_EPSILON, MAX_EPSILON] and for
# delta >= MIN_DELTA (validation.py has the measurements); outside it is refused up front.
def test_epsilon_above_the_supported_range_is_refused_before_calibrating():
    for eps in (MAX_EPSILON * 1.001, 1000.0, 1e4):
        with pytest.raises(PrivacyParameterError,
                           match=r"largest supported finite epsilon 20 .*use epsilon=inf"):
            DPSynthesizer(eps, DELTA).make_plan(1280)
        with pytest.raises(PrivacyParameterError, match="largest supported"):
            build_plan(MULTI_SPECS, eps, DELTA)
        with pytest.raises(PrivacyParameterError, match="largest supported"):
            calibrate_scale(MULTI_SPECS, eps, DELTA)
        with pytest.raises(PrivacyParameterError, match="largest supported"):
            DPSynthesizer(eps, DELTA).fit(_Untouchable(), _Untouchable(), classes=[0])


def test_epsilon_below_the_supported_range_is_refused():
    for eps in (MIN_EPSILON * 0.999, 1e-6):
        with pytest.raises(PrivacyParameterError,
                           match=r"below the smallest supported epsilon 0.01 \(allowed: "
                                 r"0.01 <= epsilon <= 20, or inf\)"):
            DPSynthesizer(eps, DELTA, components_per_class=3).make_plan(1280)
        with pytest.raises(PrivacyParameterError, match="smallest supported epsilon"):
            build_plan(MULTI_SPECS, eps, DELTA)


@pytest.mark.parametrize("delta", [MIN_DELTA * 0.999, 1e-15, 1e-300])
def test_delta_below_the_supported_range_is_refused(delta):
    with pytest.raises(PrivacyParameterError,
                       match=r"below the smallest supported delta 1e-12 \(allowed: "
                             r"1e-12 <= delta < 0.001\)"):
        DPSynthesizer(1.0, delta).make_plan(1280)
    # Also for budgets: the ledger's PLD accounting cannot certify it either.
    with pytest.raises(PrivacyParameterError, match="smallest supported delta"):
        validate_epsilon_delta(10.0, delta)


def test_budgets_are_not_limited_to_the_calibration_range():
    # A lifetime budget is compared with composed costs, never calibrated to.
    assert validate_epsilon_delta(1e4, DELTA) == (1e4, DELTA)
    assert validate_epsilon_delta(1e-3, DELTA) == (1e-3, DELTA)
    with pytest.raises(PrivacyParameterError, match="largest supported"):
        validate_epsilon_delta(1e4, DELTA, calibrated=True)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("delta", [MIN_DELTA, MAX_DELTA * 0.999])
def test_smallest_supported_epsilon_calibrates_at_both_ends_of_delta(k, delta):
    plan = DPSynthesizer(MIN_EPSILON, delta, components_per_class=k).make_plan(1280)
    assert abs(plan.epsilon_pld - MIN_EPSILON) <= 0.01 * MIN_EPSILON


def test_largest_supported_epsilon_calibrates():
    # One release: the cheapest plan at this epsilon (validation.py times the full plans).
    plan = build_plan([ReleaseSpec("sums", 1.0)], MAX_EPSILON, DELTA)
    assert abs(plan.epsilon_pld - MAX_EPSILON) <= 0.01 * MAX_EPSILON
    assert math.isinf(build_plan(MULTI_SPECS, math.inf, MIN_DELTA).epsilon_pld)


def test_failed_calibration_is_a_privacy_parameter_error(monkeypatch):
    # Below the supported range the 3-component plan cannot be calibrated (PLD's
    # discretisation alone exceeds epsilon = 1e-3 at delta = 1e-12): the bracket search
    # fails, and the error says which target and releases, not brentq's internals.
    monkeypatch.setattr(validation, "MIN_EPSILON", 1e-4)
    releases = DPSynthesizer(1.0, DELTA, components_per_class=3).make_plan(1280).releases
    specs = [ReleaseSpec(r.name, r.sensitivity, r.noise_multiplier, r.repetitions, r.scope)
             for r in releases]
    with pytest.raises(PrivacyParameterError,
                       match=r"^could not calibrate noise to epsilon=0.001, delta=1e-12 for "
                             r"the \d+ releases \[subspace_second_moment, class_counts"):
        calibrate_scale(specs, 1e-3, 1e-12)


def test_calibrate_scale_refuses_infinite_epsilon():
    with pytest.raises(PrivacyParameterError, match="epsilon=inf needs no calibration"):
        calibrate_scale(MULTI_SPECS, math.inf, DELTA)


@pytest.mark.parametrize("epsilon, delta, match", [
    (True, DELTA, "epsilon must be a number, got the boolean True"),
    (np.bool_(True), DELTA, "epsilon must be a number, got the boolean"),
    (1.0, False, "delta must be a number, got the boolean False"),
])
def test_booleans_are_not_privacy_parameters(epsilon, delta, match):
    with pytest.raises(PrivacyParameterError, match=match):
        validate_epsilon_delta(epsilon, delta)
    with pytest.raises(PrivacyParameterError, match=match):
        build_plan(MULTI_SPECS, epsilon, delta)
    with pytest.raises(PrivacyParameterError, match=match):
        DPSynthesizer(epsilon, delta).make_plan(16)


# ------------------------------------------------------------------- recorded plans
def test_verify_plan_dict_accepts_what_to_dict_writes():
    for plan in (build_plan(MULTI_SPECS, 1.0, DELTA),
                 build_plan(MULTI_SPECS, math.inf, DELTA, noise_seeded=True)):
        assert verify_plan_dict(json.loads(json.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(noise_scale=True), "'noise_scale' must be a number, got True"),
    (lambda d: d.update(target_epsilon="8"), "'target_epsilon' must be a number or 'inf'"),
    (lambda d: d["releases"][1].update(repetitions=2.5), "release 1: 'repetitions' must be"),
    (lambda d: d["releases"][0].pop("scope"), "release 0: missing key 'scope'"),
    (lambda d: d.update(target_epsilon=50.0, epsilon=50.0), "largest supported"),
    (lambda d: d["releases"][2].update(noise_multiplier=0.0, sigma=0.0),
     r"releases \['sums'\] add no noise"),
    (lambda d: d["releases"][0].update(noise_multiplier=1e-9, sigma=1e-9),
     "compose to epsilon .* more than the recorded epsilon"),
])
def test_verify_plan_dict_refuses_edited_plans(edit, match):
    data = json.loads(json.dumps(build_plan(MULTI_SPECS, 1.0, DELTA).to_dict()))
    edit(data)
    with pytest.raises(ValueError, match=match):
        verify_plan_dict(data)


def test_plans_written_before_releases_named_their_mechanism_still_load():
    data = json.loads(json.dumps(build_plan(MULTI_SPECS, 1.0, DELTA).to_dict()))
    for r in data["releases"]:
        assert r.pop("mechanism") == ""  # MULTI_SPECS name no mechanism
    assert verify_plan_dict(data).release("counts").mechanism == ""
    data["releases"][0]["mechanism"] = 3
    with pytest.raises(ValueError, match="release 0: 'mechanism' must be a string"):
        PrivacyPlan.from_dict(data)


# ---------------------------------------------- recorded plans against configurations
def test_a_recorded_plan_is_matched_to_specs_by_name_sensitivity_repetitions_scope():
    plan = build_plan(MULTI_SPECS, 1.0, DELTA)
    assert match_specs(plan, MULTI_SPECS) == plan
    # Weights are not compared: the recorded noise is what is drawn, not re-derived.
    assert match_specs(plan, [replace(s, weight=2 * s.weight) for s in MULTI_SPECS]) == plan
    # A plan without mechanisms (an old file) gets the specs'; a recorded one is kept.
    named = [replace(s, mechanism=f"pkg.mod:{s.name}") for s in MULTI_SPECS]
    assert [r.mechanism for r in match_specs(plan, named).releases] == \
        [s.mechanism for s in named]
    assert match_specs(build_plan(named, 1.0, DELTA), MULTI_SPECS).releases[0].mechanism == \
        "pkg.mod:subspace"


@pytest.mark.parametrize("edit, release, match", [
    (lambda s: [replace(x, sensitivity=3.0) if x.name == "sums" else x for x in s], "sums",
     "release 'sums' has sensitivity 2.0 in the plan, but this configuration makes it with "
     "sensitivity 3.0"),
    (lambda s: [replace(x, repetitions=4) if x.name == "rounds" else x for x in s], "rounds",
     "release 'rounds' has repetitions 3"),
    (lambda s: [replace(x, scope="global") if x.name == "counts" else x for x in s], "counts",
     "release 'counts' has scope 'per_class'"),
    (lambda s: [x for x in s if x.name != "second"], "second",
     "release 'second' is in the plan, but this configuration does not make it"),
    (lambda s: [*s, ReleaseSpec("extra", 1.0, description="more")], "extra",
     r"release 'extra' \(more\) is not in the plan"),
])
def test_a_recorded_plan_of_another_configuration_is_refused_naming_the_release(
        edit, release, match):
    plan = build_plan(MULTI_SPECS, 1.0, DELTA)
    with pytest.raises(PlanMismatchError, match=match) as info:
        match_specs(plan, edit(list(MULTI_SPECS)))
    assert info.value.release == release
    assert isinstance(info.value, ValueError)


def test_check_same_noise_names_the_release_whose_noise_differs():
    plan = build_plan(MULTI_SPECS, 1.0, DELTA)
    check_same_noise(plan, PrivacyPlan.from_dict(json.loads(json.dumps(plan.to_dict()))), "x")
    other = build_plan([replace(s, weight=2.0) if s.name == "sums" else s
                        for s in MULTI_SPECS], 1.0, DELTA)
    with pytest.raises(PlanMismatchError, match="release 'subspace' has noise_multiplier"):
        check_same_noise(plan, other, "the other plan")


# ------------------------------------------ ownership: one hop from plan entry to noise
#: The configurations whose plans are walked: together they make every built-in release.
OWNED_CONFIGS = {
    "lowrank-k1": {"subspace_dim": 4},
    "diagonal-k3-dp-kmeans": {"covariance": "diagonal", "components_per_class": 3,
                              "subspace_dim": 4},
    "tied": {"covariance": "tied", "subspace_dim": 4},
    "spherical": {"covariance": "spherical"},
    "lowrank-k2-centred": {"components_per_class": 2, "second_moment_clip": 0.5,
                           "subspace_dim": 4},
}


def _recorded_plan(params: dict) -> dict:
    """The plan as ``privacy_plan.json`` holds it (JSON text, parsed and verified)."""
    plan = DPSynthesizer(4.0, DELTA, **params).make_plan(16)
    data = json.loads(json.dumps(plan.to_dict()))
    verify_plan_dict(data)
    return data


def _noise_drawn(function) -> set[str]:
    """The release names whose noise ``function``'s own source draws: the first argument
    of a ``*.gaussian(...)`` / ``*.symmetric_gaussian(...)`` call is ``plan.release(NAME)``
    or a local variable assigned from it, NAME a string or a module constant."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    constants = function.__globals__

    def literal(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and isinstance(constants.get(node.id), str):
            return constants[node.id]
        return None

    def released(node):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "release" and len(node.args) == 1):
            return literal(node.args[0])
        return None

    local = {node.targets[0].id: released(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Assign) and len(node.targets) == 1
             and isinstance(node.targets[0], ast.Name) and released(node.value)}
    drawn = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("gaussian", "symmetric_gaussian") and node.args):
            arg = node.args[0]
            name = released(arg) or (local.get(arg.id) if isinstance(arg, ast.Name) else None)
            if name:
                drawn.add(name)
    return drawn


@pytest.mark.parametrize("config", list(OWNED_CONFIGS))
def test_every_plan_entry_names_the_function_whose_line_draws_its_noise(config):
    for entry in _recorded_plan(OWNED_CONFIGS[config])["releases"]:
        mechanism = entry["mechanism"]
        function = resolve_mechanism(mechanism)
        assert inspect.isfunction(function), mechanism
        # A math module (arrays in, arrays out), never the estimator or a step.
        assert mechanism.startswith(("dpsynth.gmm.", "dpsynth.clustering.")), mechanism
        assert entry["name"] in _noise_drawn(function), (
            f"{mechanism} does not draw the noise of {entry['name']!r}")


def test_the_walked_plans_make_every_built_in_release():
    made = {r["name"] for params in OWNED_CONFIGS.values()
            for r in _recorded_plan(params)["releases"]}
    assert made == set(budget.DEFAULT_WEIGHTS)
    assert len(made) == 10


@pytest.mark.parametrize("config", list(OWNED_CONFIGS))
def test_each_release_is_named_and_weighted_in_the_module_that_draws_its_noise(config):
    data = _recorded_plan(OWNED_CONFIGS[config])
    for entry in data["releases"]:
        module = importlib.import_module(entry["mechanism"].partition(":")[0])
        owned = module.DEFAULT_WEIGHTS
        assert entry["name"] in owned, (entry["name"], module.__name__)
        assert any(k.isupper() and v == entry["name"] for k, v in vars(module).items()), \
            f"{module.__name__} has no constant for {entry['name']!r}"
        # The plan's weight (noise multiplier / scale) is the owner's default.
        assert entry["noise_multiplier"] / data["noise_scale"] == \
            pytest.approx(owned[entry["name"]], rel=1e-12)


def test_the_budget_module_only_assembles():
    tree = ast.parse(inspect.getsource(budget))
    numbers = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, int | float) and not isinstance(n.value, bool)]
    # Only "components_per_class > 1": no weight, no sensitivity is defined here.
    assert set(numbers) <= {1}, f"numbers {numbers} in gmm/budget.py"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "ReleaseSpec"]
    # Today's defaults, assembled from their owners.
    assert budget.DEFAULT_WEIGHTS == {
        "subspace_second_moment": 0.5, "class_counts": 2.0, "class_sums": 1.0,
        "lsh_level_counts": 4.0, "lsh_leaf_sums": 1.0, "lloyd_counts": 4.0,
        "lloyd_sums": 1.0, "component_counts": 4.0, "component_sums": 1.0,
        "second_moments": 1.0}


@pytest.mark.parametrize("event", [
    dp_accounting.GaussianDpEvent(1.3),
    dp_accounting.ComposedDpEvent([gaussian_event(0.74), gaussian_event(5.9, 3),
                                   gaussian_event(1.48), gaussian_event(1.48)]),
    dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent(
            [gaussian_event(0.74), gaussian_event(1.48, 2)]), 5),
        dp_accounting.NoOpDpEvent(), gaussian_event(2.0)]),
    dp_accounting.ComposedDpEvent([gaussian_event(1.0), dp_accounting.NonPrivateDpEvent()]),
    dp_accounting.ComposedDpEvent([gaussian_event(1.0), dp_accounting.LaplaceDpEvent(3.0)]),
])
def test_pld_epsilon_is_the_accountants_bit_for_bit(event):
    """The cached-Gaussian shortcut of pld_epsilon gives PLDAccountant's own number, also
    when the cache is warm (each event twice), and falls back for other mechanisms."""
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    from dpsynth.privacy.accounting import PLD_DISCRETIZATION

    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(event)
    expected = float(accountant.get_epsilon(1e-5))
    assert pld_epsilon(event, 1e-5) == expected
    assert pld_epsilon(event, 1e-5) == expected
