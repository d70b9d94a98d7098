"""Validation of user-supplied privacy parameters.

Invalid parameters are refused, never clamped: a silently "fixed" epsilon is a privacy
guarantee the user did not ask for.

Supported range
    Noise is calibrated with the PLD accountant (:mod:`dpsynth.privacy.accounting`, value
    discretisation 1e-4, Gaussian tails truncated at mass 1e-15). That fixes the range in
    which calibration is both possible and quick. Measured with ``make_plan(1280)`` of the
    DPSynthesizer default plan and of components_per_class=3 (times on a shared 2-core
    machine, so upper-ish; RSS is the whole process):

    * epsilon 1: ~1 s. 8: 5 s / 7 s (k = 1 / k = 3). 20: 15-17 s / 19-32 s, 0.4-0.5 GB.
      50: 22 s / 33-44 s, 0.65 GB. 100: 44 s / 73 s, 0.9 GB. 128: 79 s / 117 s, 1.2 GB.
      Cost grows about linearly with epsilon until memory runs out (issue 10: 1000 runs
      3 minutes and ends in MemoryError, 1e4 is OOM-killed at 24 GB; the PLD of a nearly
      noiseless mechanism has millions of points). 20 Lloyd rounds and LSH depth 20 at
      epsilon 20: 29 s. Hence MAX_EPSILON = 20: every epsilon this project uses
      (0.1 .. 16) with a margin, calibrated within half a minute and half a GB.
    * epsilon 1e-4 fails for k = 3 (delta 1e-5), 1e-3 fails for k = 3 at delta 1e-12 (the
      discretisation's pessimism alone exceeds the target, so the bracketed search finds
      no root); 3e-3 calibrates at every delta, also with 10 Lloyd rounds and LSH depth 16,
      in ~0.2 s. Hence MIN_EPSILON = 0.01, with a margin.
    * delta 1e-15 cannot be reached at epsilon 1 (the truncated tails alone carry that
      much); 1e-14 still can. Hence MIN_DELTA = 1e-12; (0.01, 1e-12) calibrates for k = 1, 3.

    ``epsilon=inf`` stays accepted as the explicit non-private mode (nothing is calibrated).
"""

from __future__ import annotations

import math

import numpy as np

#: Largest delta we accept. delta is the probability of a catastrophic failure of the
#: guarantee; the usual rule is delta << 1/n, and 1e-3 is already generous.
MAX_DELTA = 1e-3
#: Smallest delta the PLD accountant can certify (see the module docstring).
MIN_DELTA = 1e-12
#: Smallest finite epsilon noise can be calibrated to (see the module docstring).
MIN_EPSILON = 0.01
#: Largest finite epsilon noise is calibrated to, in bounded time and memory (see the
#: module docstring). Not a limit on lifetime budgets, which are composed, not calibrated.
MAX_EPSILON = 20.0


class PrivacyParameterError(ValueError):
    """An epsilon or delta that cannot give a meaningful (eps, delta) guarantee."""


def _as_float(name: str, value: object) -> float:
    # bool is an int subclass: without this, True would silently become epsilon = 1.
    if isinstance(value, bool | np.bool_):
        raise PrivacyParameterError(f"{name} must be a number, got the boolean {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"{name} must be a number, got {value!r}") from None


def validate_epsilon_delta(epsilon: float, delta: float, *,
                           calibrated: bool = False) -> tuple[float, float]:
    """Return ``(epsilon, delta)`` as floats or raise :class:`PrivacyParameterError`.

    ``epsilon=float('inf')`` is accepted and means the explicit non-private mode.
    ``calibrated=True``: noise will be calibrated to this epsilon, so a finite epsilon must
    also lie in [MIN_EPSILON, MAX_EPSILON]. Without it (a lifetime budget, which is only
    compared with composed costs) any epsilon > 0 is accepted.
    """
    eps = _as_float("epsilon", epsilon)
    dlt = _as_float("delta", delta)
    if math.isnan(eps):
        raise PrivacyParameterError("epsilon is NaN; give a positive number or float('inf')")
    if eps <= 0:
        raise PrivacyParameterError(
            f"epsilon must be > 0, got {eps}; use float('inf') for the non-private mode"
        )
    if calibrated and math.isfinite(eps) and eps < MIN_EPSILON:
        raise PrivacyParameterError(
            f"epsilon={eps:g} is below the smallest supported epsilon {MIN_EPSILON:g} "
            f"(allowed: {MIN_EPSILON:g} <= epsilon <= {MAX_EPSILON:g}, or inf): the PLD "
            "accountant cannot calibrate noise that finely, and such noise would drown "
            f"every statistic anyway. Use epsilon >= {MIN_EPSILON:g}"
        )
    if calibrated and math.isfinite(eps) and eps > MAX_EPSILON:
        raise PrivacyParameterError(
            f"epsilon={eps:g} is above the largest supported finite epsilon {MAX_EPSILON:g} "
            f"(allowed: {MIN_EPSILON:g} <= epsilon <= {MAX_EPSILON:g}, or inf): calibrating "
            "noise for a nearly noiseless mechanism takes minutes and gigabytes, and such "
            "an epsilon gives no meaningful guarantee. For a non-private run use "
            "epsilon=inf ('inf' in a config)"
        )
    if math.isnan(dlt):
        raise PrivacyParameterError(
            f"delta is NaN; give a number in [{MIN_DELTA:g}, {MAX_DELTA:g})")
    if dlt <= 0:
        raise PrivacyParameterError(
            f"delta must be > 0 for Gaussian noise, got {dlt}; typical is 1e-5 or 1/n^1.1"
        )
    if dlt < MIN_DELTA:
        raise PrivacyParameterError(
            f"delta={dlt:g} is below the smallest supported delta {MIN_DELTA:g} (allowed: "
            f"{MIN_DELTA:g} <= delta < {MAX_DELTA:g}): the PLD accountant truncates tails "
            "of mass ~1e-15 per mechanism, so it cannot certify a smaller delta. Use e.g. "
            "1e-5, or 1/n^1.1 for n records"
        )
    if dlt >= MAX_DELTA:
        raise PrivacyParameterError(
            f"delta must be < {MAX_DELTA:g}, got {dlt:g}; delta is a failure probability "
            "and should be well below 1/n (typical: 1e-5)"
        )
    return eps, dlt
