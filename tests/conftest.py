"""Shared helpers for the dpsynth test suite."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

import dpsynth.synthesizer
from dpsynth.privacy import PrivacyPlan, ReleaseSpec, build_plan

_PLAN_CACHE: dict[tuple, PrivacyPlan] = {}


def cached_build_plan(
    specs: Sequence[ReleaseSpec],
    epsilon: float,
    delta: float,
    *,
    noise_seeded: bool = False,
    metadata: dict[str, object] | None = None,
) -> PrivacyPlan:
    """The real :func:`build_plan`, memoised on its public inputs.

    Calibration is a deterministic function of (specs, epsilon, delta): a PLD bisection with a
    fixed discretisation and a fixed bracket. Reusing a result is therefore exact, and it keeps
    the suite fast on a 2-core machine (one calibration costs 1-10 s). ``metadata`` does not
    enter the calibration and is re-attached per call, so a plan returned here is equal to the
    one ``build_plan`` would return.
    """
    key = (tuple(specs), float(epsilon), float(delta), bool(noise_seeded))
    if key not in _PLAN_CACHE:
        _PLAN_CACHE[key] = build_plan(specs, epsilon, delta, noise_seeded=noise_seeded)
    return dataclasses.replace(_PLAN_CACHE[key], metadata=dict(metadata or {}))


@pytest.fixture
def fast_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make DPSynthesizer calibrate each distinct plan once per session (see above)."""
    monkeypatch.setattr(dpsynth.synthesizer, "build_plan", cached_build_plan)
