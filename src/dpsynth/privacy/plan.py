"""The privacy plan: every noisy release, its sensitivity and noise, and the composed cost.

A plan is built before any private data is read. It lists releases in the spirit of
dp-accounting's event objects: each :class:`Release` is an immutable record of one
Gaussian mechanism (possibly repeated) and turns into a ``DpEvent`` directly.

Scopes and composition
    ``scope="global"`` releases touch every record. ``scope="per_class"`` releases run once
    per class, each over that class's records only. Classes partition the records, so a
    neighbouring dataset changes one class's releases and none of the others: by parallel
    composition the per-class releases cost the budget of one class, however many classes
    there are. The plan's ``dp_event`` therefore composes every release exactly once.

Calibration
    Releases carry a relative *weight*; the noise multiplier of release i is
    ``scale * weight_i``. One scale, found by bisection on the PLD epsilon
    (``dp_accounting.calibrate_dp_mechanism``), makes the composition hit the target
    epsilon at delta. RDP is reported beside it as an independent upper bound.

Ownership
    Each release is owned by the module whose function adds its noise: the spec (name,
    sensitivity argument, default weight) sits next to that function, and every spec and
    plan entry records it as ``mechanism`` (``"module:qualname"``, :func:`mechanism_of`),
    so ``privacy_plan.json`` leads in one hop to the line that draws the noise.

Recorded plans
    A plan once written (``privacy_plan.json``) is the source of the noise of the steps that
    read it: :func:`match_specs` checks that it holds exactly the releases a configuration
    makes (names, sensitivities, repetitions, scopes) and the noise is then drawn with the
    recorded sigmas, never re-calibrated.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.mechanism_calibration import ExplicitBracketInterval
from dp_accounting.pld import pld_privacy_accountant

from dpsynth.privacy.accounting import (
    PLD_DISCRETIZATION,
    gaussian_epsilon_closed_form,
    gaussian_event,
    pld_epsilon,
    rdp_epsilon,
)
from dpsynth.privacy.validation import PrivacyParameterError, validate_epsilon_delta

SCOPES = ("global", "per_class")


def mechanism_of(function: Callable) -> str:
    """``"module:qualname"`` of the function that adds a release's noise (see
    :func:`resolve_mechanism`)."""
    return f"{function.__module__}:{function.__qualname__}"


def resolve_mechanism(mechanism: str) -> Callable:
    """The function a plan entry's ``mechanism`` names (``"package.module:Class.method"``)."""
    module, _, qualname = mechanism.partition(":")
    if not module or not qualname:
        raise ValueError(f"a mechanism is 'module:function', got {mechanism!r}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ReleaseSpec:
    """A release before calibration: what is released and how much noise relative to others.

    ``mechanism``: ``"module:function"`` of the function that adds this release's noise
    (:func:`mechanism_of`); empty when unknown (e.g. a plugin that does not say).
    ``declared_by``: the pipeline step whose replacement component declared this release
    (its ``releases.yaml``); empty for dpsynth's own releases.
    """

    name: str
    sensitivity: float
    weight: float = 1.0
    repetitions: int = 1
    scope: str = "per_class"
    description: str = ""
    mechanism: str = ""
    declared_by: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a release needs a name")
        if not (self.sensitivity > 0 and math.isfinite(self.sensitivity)):
            raise ValueError(f"release {self.name!r}: sensitivity must be > 0, "
                             f"got {self.sensitivity}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"release {self.name!r}: weight must be > 0, got {self.weight}")
        if int(self.repetitions) != self.repetitions or self.repetitions < 1:
            raise ValueError(f"release {self.name!r}: repetitions must be an integer >= 1, "
                             f"got {self.repetitions}")
        if self.scope not in SCOPES:
            raise ValueError(f"release {self.name!r}: scope must be one of {SCOPES}, "
                             f"got {self.scope!r}")


@dataclass(frozen=True)
class Release:
    """One calibrated Gaussian mechanism: L2 ``sensitivity``, noise std ``sigma``.

    ``mechanism``: ``"module:function"`` of the function whose line adds the noise.
    ``declared_by``: see :class:`ReleaseSpec` (a replacement component's own release).
    """

    name: str
    sensitivity: float
    noise_multiplier: float
    repetitions: int = 1
    scope: str = "per_class"
    description: str = ""
    mechanism: str = ""
    declared_by: str = ""

    @property
    def sigma(self) -> float:
        """Standard deviation of the Gaussian noise added to each released coordinate."""
        return self.noise_multiplier * self.sensitivity

    def dp_event(self) -> dp_accounting.DpEvent:
        return gaussian_event(self.noise_multiplier, self.repetitions)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        if not self.declared_by:
            del out["declared_by"]  # dpsynth's own: plans read as they always have
        out["sigma"] = self.sigma
        return out


@dataclass(frozen=True)
class PrivacyPlan:
    """The calibrated plan. ``epsilon``/``delta`` are the target; ``epsilon_pld`` is achieved."""

    epsilon: float
    delta: float
    releases: tuple[Release, ...]
    scale: float
    epsilon_pld: float
    epsilon_rdp: float
    noise_seeded: bool = False
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def private(self) -> bool:
        """True only when noise is calibrated *and* drawn from OS entropy."""
        return math.isfinite(self.epsilon) and not self.noise_seeded

    def release(self, name: str) -> Release:
        for r in self.releases:
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.releases)
        raise KeyError(f"no release named {name!r} in the privacy plan (have: {known})")

    def __contains__(self, name: object) -> bool:
        return any(r.name == name for r in self.releases)

    def dp_event(self) -> dp_accounting.DpEvent:
        return compose_events(self.releases)

    def to_dict(self) -> dict[str, object]:
        return {
            "private": self.private,
            "noise_seeded": self.noise_seeded,
            "target_epsilon": epsilon_to_json(self.epsilon),
            "delta": self.delta,
            "epsilon": epsilon_to_json(self.epsilon_pld),
            "epsilon_rdp": epsilon_to_json(self.epsilon_rdp),
            "accountant": "dp_accounting PLD (add/remove one record); RDP cross-check",
            "composition": "sequential over releases; per_class releases compose in parallel "
                           "across classes (classes partition the records)",
            "noise_scale": self.scale,
            "releases": [r.to_dict() for r in self.releases],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PrivacyPlan:
        """Parse :meth:`to_dict`'s output. A missing key or a value of the wrong type raises
        ValueError naming it; the accounting is not re-checked (see :func:`verify_plan_dict`).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a privacy plan must be a JSON object, got {type(data).__name__}")
        raw = _field(data, "releases", list, "privacy plan")
        releases = []
        for i, r in enumerate(raw):
            where = f"privacy plan release {i}"
            if not isinstance(r, dict):
                raise ValueError(f"{where} must be a JSON object, got {r!r}")
            releases.append(Release(
                name=_field(r, "name", str, where),
                sensitivity=_field(r, "sensitivity", float, where),
                noise_multiplier=_field(r, "noise_multiplier", float, where),
                repetitions=_field(r, "repetitions", int, where),
                scope=_field(r, "scope", str, where),
                description=str(r.get("description", "")),
                # Plans written before releases named their mechanism have none.
                mechanism=_field(r, "mechanism", str, where) if "mechanism" in r else "",
                declared_by=_field(r, "declared_by", str, where) if "declared_by" in r
                else ""))
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"privacy plan: 'metadata' must be a JSON object, got {metadata!r}")
        return cls(
            epsilon=_field(data, "target_epsilon", "epsilon", "privacy plan"),
            delta=_field(data, "delta", float, "privacy plan"),
            releases=tuple(releases),
            scale=_field(data, "noise_scale", float, "privacy plan"),
            epsilon_pld=_field(data, "epsilon", "epsilon", "privacy plan"),
            epsilon_rdp=_field(data, "epsilon_rdp", "epsilon", "privacy plan"),
            noise_seeded=_field(data, "noise_seeded", bool, "privacy plan"),
            metadata=dict(metadata),
        )


def _field(data: dict, key: str, kind: object, where: str) -> Any:
    """``data[key]`` checked against ``kind`` (float, int, str, bool, list or "epsilon"),
    or ValueError naming ``where`` and the key. JSON true/false never pass as numbers."""
    if key not in data:
        raise ValueError(f"{where}: missing key {key!r}")
    value = data[key]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "epsilon":
        if value == "inf":
            return math.inf
        ok = number
    elif kind is float:
        ok = number
    elif kind is int:  # integral floats too: ReleaseSpec accepts repetitions=3.0
        ok = number and float(value).is_integer()
    else:
        ok = isinstance(value, kind)  # type: ignore[arg-type]
    if not ok:
        expected = {"epsilon": "a number or 'inf'", float: "a number", int: "an integer",
                    str: "a string", bool: "true or false", list: "a list"}[kind]
        raise ValueError(f"{where}: {key!r} must be {expected}, got {value!r}")
    return float(value) if kind in (float, "epsilon") else int(value) if kind is int else value


def compose_events(releases: Iterable[Release]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([r.dp_event() for r in releases])


def _with_scale(specs: Sequence[ReleaseSpec], scale: float) -> tuple[Release, ...]:
    return tuple(
        Release(s.name, s.sensitivity, scale * s.weight, s.repetitions, s.scope, s.description,
                s.mechanism, s.declared_by)
        for s in specs
    )


def calibrate_scale(specs: Sequence[ReleaseSpec], epsilon: float, delta: float) -> float:
    """The noise scale at which the composed specs are (epsilon, delta)-DP by PLD.

    ``epsilon`` must be finite and within the supported range (:data:`MIN_EPSILON` ..
    :data:`MAX_EPSILON`), which keeps calibration within seconds and well under a GB.
    Deterministic in its (public) inputs, so results are cached: refitting the same
    configuration does not pay for the bisection again.
    """
    epsilon, delta = validate_epsilon_delta(epsilon, delta, calibrated=True)
    if math.isinf(epsilon):
        raise PrivacyParameterError("epsilon=inf needs no calibration: it is the "
                                    "non-private mode (build_plan gives it zero noise)")
    return _calibrate_cached(tuple(specs), epsilon, delta)


@functools.lru_cache(maxsize=256)
def _calibrate_cached(specs: tuple[ReleaseSpec, ...], epsilon: float, delta: float) -> float:

    def fresh() -> pld_privacy_accountant.PLDAccountant:
        return pld_privacy_accountant.PLDAccountant(
            value_discretization_interval=PLD_DISCRETIZATION
        )

    def event(scale: float) -> dp_accounting.DpEvent:
        return compose_events(_with_scale(specs, scale))

    # A composition of Gaussian mechanisms is exactly mu-GDP with
    # mu^2 = sum_i repetitions_i / multiplier_i^2, so the scale is known in closed form up to
    # PLD's discretisation; bracket the PLD search tightly around it so that no bisection
    # step asks the PLD accountant about a nearly noiseless (and very expensive) mechanism.
    total = sum(s.repetitions / s.weight**2 for s in specs)
    lower = upper = math.nan
    try:
        gdp_scale = dp_accounting.get_sigma_gaussian(epsilon, delta) * math.sqrt(total)
        lower, upper = 0.8 * gdp_scale, 1.25 * gdp_scale
        return float(
            dp_accounting.calibrate_dp_mechanism(
                fresh, event, epsilon, delta,
                bracket_interval=ExplicitBracketInterval(lower, upper),
                tol=gdp_scale * 5e-4,
            )
        )
    except ValueError as exc:
        # In the supported range this does not happen for the plans DPSynthesizer makes;
        # a custom plan can still defeat the bracket. Say which target failed, not brentq's
        # internals.
        names = ", ".join(s.name for s in specs)
        where = (f"no noise scale in [{lower:.6g}, {upper:.6g}] (around the closed-form "
                 "Gaussian scale) meets the target" if math.isfinite(lower)
                 else "the closed-form Gaussian scale could not be computed")
        raise PrivacyParameterError(
            f"could not calibrate noise to epsilon={epsilon:g}, delta={delta:g} for the "
            f"{len(specs)} releases [{names}]: {where} ({str(exc)[:200]}). Use a larger "
            "epsilon or delta, or fewer releases (e.g. fewer Lloyd rounds or a smaller LSH "
            "depth)"
        ) from None


def build_plan(
    specs: Sequence[ReleaseSpec],
    epsilon: float,
    delta: float,
    *,
    noise_seeded: bool = False,
    metadata: dict[str, object] | None = None,
) -> PrivacyPlan:
    """Calibrate ``specs`` to (epsilon, delta). ``epsilon=inf`` gives a zero-noise plan.

    A finite epsilon must lie in [MIN_EPSILON, MAX_EPSILON] (validation.py says why).
    """
    epsilon, delta = validate_epsilon_delta(epsilon, delta, calibrated=True)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"release names must be unique, got {names}")
    if not specs:
        raise ValueError("a privacy plan needs at least one release")
    if math.isinf(epsilon):
        releases = _with_scale(specs, 0.0)
        return PrivacyPlan(epsilon, delta, releases, 0.0, math.inf, math.inf,
                           noise_seeded, dict(metadata or {}))
    scale = calibrate_scale(specs, epsilon, delta)
    releases = _with_scale(specs, scale)
    eps_pld, eps_rdp = _account(releases, delta)
    return PrivacyPlan(epsilon, delta, releases, scale, eps_pld, eps_rdp, noise_seeded,
                       dict(metadata or {}))


# ------------------------------------------------------------- the noise threshold
#: A mixture component is kept only when its noisy count reaches this many standard
#: deviations of the count's noise: below it, the noisy mean and covariance divide by a
#: count that may be mostly noise.
COUNT_THRESHOLD_SIGMAS = 3.0
#: ... and never below this many records (a zero-noise plan still needs a covariance).
COUNT_THRESHOLD_FLOOR = 2.0
#: The plan entries whose noise sets the threshold, the first one present: the component
#: counts (more than one component per class), else the class counts (one component per
#: class, whose count is the class count).
THRESHOLD_RELEASES = ("component_counts", "class_counts")
#: The chance of release that :attr:`ReleaseThreshold.reliable_class` guarantees: Phi(2).
RELIABLE_PROBABILITY = 0.977


@dataclass(frozen=True)
class ReleaseThreshold:
    """The smallest class a plan can release, known before any data is read.

    A component is kept only if its noisy count reaches ``threshold`` = max(3 sigma, 2),
    sigma the noise of the count release that sets it (:data:`THRESHOLD_RELEASES`). The
    derivation, for a class of n records:

    - One component per class: the class's noisy count is n + Z, Z ~ N(0, sigma^2), and
      the class is released iff n + Z >= threshold, with probability
      Phi((n - threshold) / sigma). So a class of ``smallest_class`` = ceil(threshold)
      records is released about half the time, one of ``reliable_class`` =
      ceil(threshold + 2 sigma) records at least 97.7% of the time (Phi(2)), and one under
      threshold - 2 sigma under 2.3% of the time. With eps = inf (sigma = 0) exactly the
      classes of at least 2 records are released.
    - k > 1 components per class: each component needs that many records of its own, so
      a class needs at least ``smallest_class`` records in one component, and a class
      whose records split evenly needs about k times ``reliable_class``.

    A class with no released component gets no synthetic samples; the run states it
    (``metrics.json`` ``classes_without_samples``, the summary, the report). ``sigma``,
    ``threshold`` and the class sizes are public: they follow from the plan alone.
    """

    release: str
    sigma: float
    threshold: float
    smallest_class: int
    reliable_class: int

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "reliable_probability": RELIABLE_PROBABILITY}

    def describe(self) -> str:
        """One line for ``dpsynth plan`` and the run's first lines."""
        unit, where = (("component", " in one mixture component")
                       if self.release == "component_counts" else ("class", ""))
        if self.sigma == 0.0:
            # eps = inf: no noise, so no noise threshold and nothing probabilistic to say;
            # only the floor remains (a mixture component needs 2 records for a covariance).
            return (f"no noise threshold: eps = inf, every class with "
                    f"{self.smallest_class}+ records{where} is released (a {unit} needs "
                    f"{self.smallest_class} records for a covariance).")
        return (f"smallest releasable class: about {self.smallest_class} records{where} "
                f"(a {unit} is released only when its noisy count reaches {self.threshold:.1f} = "
                f"max(3 sigma, 2), sigma = {self.sigma:.3g} in {self.release!r}); "
                f"{self.reliable_class}+ records{where}: released with "
                f"{100 * RELIABLE_PROBABILITY:.1f}% probability. A smaller class likely gets "
                "no synthetic samples.")


def count_threshold(sigma: float) -> float:
    """The smallest noisy count trusted, for a count released with noise ``sigma``:
    ``COUNT_THRESHOLD_SIGMAS`` standard deviations, at least ``COUNT_THRESHOLD_FLOOR``."""
    return max(COUNT_THRESHOLD_SIGMAS * sigma, COUNT_THRESHOLD_FLOOR)


def release_threshold(plan: PrivacyPlan) -> ReleaseThreshold:
    """The noise threshold of ``plan``'s mixture components and the smallest class it can
    release (:class:`ReleaseThreshold` derives it). Raises KeyError when the plan has none
    of the :data:`THRESHOLD_RELEASES`."""
    for name in THRESHOLD_RELEASES:
        if name in plan:
            sigma = plan.release(name).sigma
            threshold = count_threshold(sigma)
            return ReleaseThreshold(name, sigma, threshold, math.ceil(threshold),
                                    math.ceil(threshold + 2.0 * sigma))
    raise KeyError(f"the privacy plan has no count release that sets the noise threshold "
                   f"(one of {', '.join(THRESHOLD_RELEASES)})")


class PlanMismatchError(ValueError):
    """A recorded plan is not the one a configuration makes; ``release`` names the first
    release that differs ("" when the difference is the target or the dimension)."""

    def __init__(self, message: str, release: str = "") -> None:
        super().__init__(message)
        self.release = release


def match_specs(plan: PrivacyPlan, specs: Sequence[ReleaseSpec]) -> PrivacyPlan:
    """``plan`` (a recorded, calibrated plan) checked to hold exactly the releases ``specs``
    describe: the same names, and for each the same sensitivity, repetitions and scope.

    The noise (``noise_multiplier``, hence ``sigma``) is the plan's: weights are not
    compared, since a recorded plan is the source of the noise, not something to re-derive.
    Returns the plan with each release's ``mechanism`` filled from its spec where the plan
    records none (plans written before releases named their mechanism). Releases a
    replacement component declared (``declared_by``) are another step's: they are kept
    and not compared. Raises :class:`PlanMismatchError` naming the first release that
    differs.
    """
    by_name = {s.name: s for s in specs}
    recorded = {r.name for r in plan.releases}
    for s in specs:
        if s.name not in recorded:
            raise PlanMismatchError(
                f"release {s.name!r} ({s.description or 'no description'}) is not in the "
                f"plan, but this configuration makes it (the plan has: "
                f"{', '.join(sorted(recorded))})", s.name)
    releases = []
    for r in plan.releases:
        s = by_name.get(r.name)
        if s is None and r.declared_by:
            releases.append(r)
            continue
        if s is None:
            raise PlanMismatchError(
                f"release {r.name!r} is in the plan, but this configuration does not make it "
                f"(it makes: {', '.join(by_name)})", r.name)
        for what, recorded_value, expected in (("sensitivity", r.sensitivity, s.sensitivity),
                                               ("repetitions", r.repetitions, s.repetitions),
                                               ("scope", r.scope, s.scope)):
            same = (math.isclose(recorded_value, expected, rel_tol=1e-9, abs_tol=0.0)
                    if what == "sensitivity" else recorded_value == expected)
            if not same:
                raise PlanMismatchError(
                    f"release {r.name!r} has {what} {recorded_value!r} in the plan, but this "
                    f"configuration makes it with {what} {expected!r}", r.name)
        releases.append(r if r.mechanism else replace(r, mechanism=s.mechanism))
    return replace(plan, releases=tuple(releases))


def check_same_noise(plan: PrivacyPlan, other: PrivacyPlan, other_name: str) -> None:
    """Both plans add the same noise: the same releases with the same sensitivity, noise
    multiplier, repetitions and scope (e.g. a plan file and the plan an earlier step
    recorded). Raises :class:`PlanMismatchError` naming the first release that differs."""
    theirs = {r.name: r for r in other.releases}
    mine = {r.name for r in plan.releases}
    for name in sorted(mine ^ set(theirs)):
        where = "this plan" if name in mine else other_name
        raise PlanMismatchError(f"release {name!r} is only in {where}, not in both "
                                f"({other_name} and this plan differ)", name)
    for r in plan.releases:
        o = theirs[r.name]
        for what in ("sensitivity", "noise_multiplier", "repetitions", "scope"):
            a, b = getattr(r, what), getattr(o, what)
            same = (math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
                    if isinstance(a, float) else a == b)
            if not same:
                raise PlanMismatchError(f"release {r.name!r} has {what} {a!r} in this plan "
                                        f"but {b!r} in {other_name}", r.name)


@functools.lru_cache(maxsize=256)
def _account(releases: tuple[Release, ...], delta: float) -> tuple[float, float]:
    """(PLD, RDP) epsilon of the composed releases; cached like the calibration."""
    event = compose_events(releases)
    return pld_epsilon(event, delta), rdp_epsilon(event, delta)


def epsilon_to_json(x: float) -> float | str:
    """Strict JSON has no Infinity: the non-private epsilon is written as the string inf."""
    return "inf" if math.isinf(x) else x


def epsilon_from_json(x: float | str) -> float:
    """The inverse of :func:`epsilon_to_json`: a number, or the string ``"inf"``."""
    if x == "inf":
        return math.inf
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"epsilon must be a number or 'inf', got {x!r}")
    return float(x)


#: Relative tolerance when re-deriving a recorded plan's epsilon: the calibration lands
#: within ~0.1% of its target (brentq tolerance 5e-4 on the scale), so 1% only absorbs
#: accountant changes between dp-accounting versions, never a real edit.
PLAN_EPSILON_RTOL = 0.01


def _mismatch(recorded: float, derived: float) -> bool:
    if math.isinf(recorded) or math.isinf(derived):
        return recorded != derived
    return abs(recorded - derived) > PLAN_EPSILON_RTOL * max(abs(recorded), abs(derived))


def verify_plan_dict(data: dict) -> PrivacyPlan:
    """Parse a recorded plan (:meth:`PrivacyPlan.to_dict`) and re-check its accounting.

    Raises ValueError naming the first inconsistency: a target outside the supported
    range, a release whose recorded ``sigma`` is not ``noise_multiplier * sensitivity``,
    a ``private`` flag that does not follow from the plan, a recorded epsilon more than 1%
    from the target, or an epsilon (PLD or RDP) that the releases, composed again at the
    plan's delta, do not give. Costs one PLD composition of the plan (cached).
    """
    plan = PrivacyPlan.from_dict(data)
    try:
        validate_epsilon_delta(plan.epsilon, plan.delta, calibrated=True)
    except PrivacyParameterError as exc:
        raise ValueError(f"privacy plan target: {exc}") from None
    names = [r.name for r in plan.releases]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"privacy plan: release names must be unique and non-empty, "
                         f"got {names}")
    for r, raw in zip(plan.releases, data["releases"], strict=True):
        if not (math.isfinite(r.sensitivity) and r.sensitivity > 0):
            raise ValueError(f"privacy plan: release {r.name!r} has sensitivity "
                             f"{r.sensitivity!r}; it must be finite and > 0")
        if not (math.isfinite(r.noise_multiplier) and r.noise_multiplier >= 0):
            raise ValueError(f"privacy plan: release {r.name!r} has noise_multiplier "
                             f"{r.noise_multiplier!r}; it must be finite and >= 0")
        if r.repetitions < 1 or r.scope not in SCOPES:
            raise ValueError(f"privacy plan: release {r.name!r} needs repetitions >= 1 and "
                             f"a scope in {SCOPES}, got {r.repetitions!r}, {r.scope!r}")
        sigma = raw.get("sigma")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or \
                not math.isclose(sigma, r.sigma, rel_tol=1e-9, abs_tol=0.0):
            raise ValueError(f"privacy plan: release {r.name!r} records sigma {sigma!r}, but "
                             f"noise_multiplier * sensitivity = {r.sigma!r}")
    if data.get("private") is not plan.private:
        raise ValueError(f"privacy plan: 'private' is {data.get('private')!r}, but a plan with "
                         f"target epsilon {plan.epsilon:g} and noise_seeded="
                         f"{plan.noise_seeded} is {'' if plan.private else 'not '}private")
    if math.isinf(plan.epsilon):
        noisy = [r.name for r in plan.releases if r.noise_multiplier != 0]
        if noisy or plan.scale != 0 or not (math.isinf(plan.epsilon_pld)
                                            and math.isinf(plan.epsilon_rdp)):
            raise ValueError("privacy plan: the target epsilon is inf (no noise), but the plan "
                             f"records noise scale {plan.scale:g}, noisy releases {noisy}, "
                             f"epsilon {plan.epsilon_pld:g} and epsilon_rdp "
                             f"{plan.epsilon_rdp:g}")
        return plan
    silent = [r.name for r in plan.releases if r.noise_multiplier == 0]
    if silent or not (math.isfinite(plan.scale) and plan.scale > 0):
        raise ValueError(f"privacy plan: target epsilon {plan.epsilon:g} is finite, but the "
                         f"noise scale is {plan.scale:g} and releases {silent} add no noise")
    if _mismatch(plan.epsilon, plan.epsilon_pld):
        raise ValueError(f"privacy plan: recorded epsilon {plan.epsilon_pld:g} is not the "
                         f"target epsilon {plan.epsilon:g} (tolerance "
                         f"{PLAN_EPSILON_RTOL:.0%})")
    # The composition is exactly mu-GDP, and PLD never reports less than the exact epsilon:
    # when the exact epsilon is already too large, refuse without running PLD (a nearly
    # noiseless release would make it take minutes and gigabytes).
    mu = math.sqrt(sum(r.repetitions / r.noise_multiplier**2 for r in plan.releases))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        exact = gaussian_epsilon_closed_form(1.0 / mu, plan.delta)
    if not exact <= plan.epsilon_pld * (1 + PLAN_EPSILON_RTOL):
        raise ValueError(f"privacy plan: its releases compose to epsilon {exact:.6g} at delta "
                         f"{plan.delta:g} (exact Gaussian composition), more than the recorded "
                         f"epsilon {plan.epsilon_pld:g}")
    eps_pld, eps_rdp = _account(plan.releases, plan.delta)
    for what, recorded, derived in (("epsilon", plan.epsilon_pld, eps_pld),
                                    ("epsilon_rdp", plan.epsilon_rdp, eps_rdp)):
        if _mismatch(recorded, derived):
            raise ValueError(f"privacy plan: its releases compose to {what} {derived:.6g} at "
                             f"delta {plan.delta:g}, but the plan records {recorded:.6g} "
                             f"(tolerance {PLAN_EPSILON_RTOL:.0%})")
    return plan
