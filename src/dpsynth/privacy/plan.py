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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import dp_accounting
from dp_accounting.mechanism_calibration import ExplicitBracketInterval
from dp_accounting.pld import pld_privacy_accountant

from dpsynth.privacy.accounting import (
    PLD_DISCRETIZATION,
    gaussian_event,
    pld_epsilon,
    rdp_epsilon,
)
from dpsynth.privacy.validation import validate_epsilon_delta

SCOPES = ("global", "per_class")


@dataclass(frozen=True)
class ReleaseSpec:
    """A release before calibration: what is released and how much noise relative to others."""

    name: str
    sensitivity: float
    weight: float = 1.0
    repetitions: int = 1
    scope: str = "per_class"
    description: str = ""

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
    """One calibrated Gaussian mechanism: L2 ``sensitivity``, noise std ``sigma``."""

    name: str
    sensitivity: float
    noise_multiplier: float
    repetitions: int = 1
    scope: str = "per_class"
    description: str = ""

    @property
    def sigma(self) -> float:
        """Standard deviation of the Gaussian noise added to each released coordinate."""
        return self.noise_multiplier * self.sensitivity

    def dp_event(self) -> dp_accounting.DpEvent:
        return gaussian_event(self.noise_multiplier, self.repetitions)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
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
        releases = tuple(
            Release(name=r["name"], sensitivity=float(r["sensitivity"]),
                    noise_multiplier=float(r["noise_multiplier"]),
                    repetitions=int(r["repetitions"]), scope=r["scope"],
                    description=r.get("description", ""))
            for r in data["releases"]
        )
        return cls(
            epsilon=epsilon_from_json(data["target_epsilon"]),
            delta=float(data["delta"]),
            releases=releases,
            scale=float(data["noise_scale"]),
            epsilon_pld=epsilon_from_json(data["epsilon"]),
            epsilon_rdp=epsilon_from_json(data["epsilon_rdp"]),
            noise_seeded=bool(data["noise_seeded"]),
            metadata=dict(data.get("metadata", {})),
        )


def compose_events(releases: Iterable[Release]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([r.dp_event() for r in releases])


def _with_scale(specs: Sequence[ReleaseSpec], scale: float) -> tuple[Release, ...]:
    return tuple(
        Release(s.name, s.sensitivity, scale * s.weight, s.repetitions, s.scope, s.description)
        for s in specs
    )


def calibrate_scale(specs: Sequence[ReleaseSpec], epsilon: float, delta: float) -> float:
    """The noise scale at which the composed specs are (epsilon, delta)-DP by PLD.

    Deterministic in its (public) inputs, so results are cached: refitting the same
    configuration does not pay for the bisection again.
    """
    return _calibrate_cached(tuple(specs), float(epsilon), float(delta))


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
    gdp_scale = dp_accounting.get_sigma_gaussian(epsilon, delta) * math.sqrt(total)
    lower, upper = 0.8 * gdp_scale, 1.25 * gdp_scale
    return float(
        dp_accounting.calibrate_dp_mechanism(
            fresh, event, epsilon, delta,
            bracket_interval=ExplicitBracketInterval(lower, upper),
            tol=gdp_scale * 5e-4,
        )
    )


def build_plan(
    specs: Sequence[ReleaseSpec],
    epsilon: float,
    delta: float,
    *,
    noise_seeded: bool = False,
    metadata: dict[str, object] | None = None,
) -> PrivacyPlan:
    """Calibrate ``specs`` to (epsilon, delta). ``epsilon=inf`` gives a zero-noise plan."""
    epsilon, delta = validate_epsilon_delta(epsilon, delta)
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


@functools.lru_cache(maxsize=256)
def _account(releases: tuple[Release, ...], delta: float) -> tuple[float, float]:
    """(PLD, RDP) epsilon of the composed releases; cached like the calibration."""
    event = compose_events(releases)
    return pld_epsilon(event, delta), rdp_epsilon(event, delta)


def epsilon_to_json(x: float) -> float | str:
    """Strict JSON has no Infinity: the non-private epsilon is written as the string inf."""
    return "inf" if math.isinf(x) else x


def epsilon_from_json(x: float | str) -> float:
    return math.inf if x == "inf" else float(x)
