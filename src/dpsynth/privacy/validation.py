"""Validation of user-supplied privacy parameters.

Invalid parameters are refused, never clamped: a silently "fixed" epsilon is a privacy
guarantee the user did not ask for.
"""

from __future__ import annotations

import math

#: Largest delta we accept. delta is the probability of a catastrophic failure of the
#: guarantee; the usual rule is delta << 1/n, and 1e-3 is already generous.
MAX_DELTA = 1e-3


class PrivacyParameterError(ValueError):
    """An epsilon or delta that cannot give a meaningful (eps, delta) guarantee."""


def validate_epsilon_delta(epsilon: float, delta: float) -> tuple[float, float]:
    """Return ``(epsilon, delta)`` as floats or raise :class:`PrivacyParameterError`.

    ``epsilon=float('inf')`` is accepted and means the explicit non-private mode.
    """
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"epsilon must be a number, got {epsilon!r}") from None
    try:
        dlt = float(delta)
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"delta must be a number, got {delta!r}") from None
    if math.isnan(eps):
        raise PrivacyParameterError("epsilon is NaN; give a positive number or float('inf')")
    if eps <= 0:
        raise PrivacyParameterError(
            f"epsilon must be > 0, got {eps}; use float('inf') for the non-private mode"
        )
    if math.isnan(dlt):
        raise PrivacyParameterError("delta is NaN; give a number in (0, 1e-3)")
    if dlt <= 0:
        raise PrivacyParameterError(
            f"delta must be > 0 for Gaussian noise, got {dlt}; typical is 1e-5 or 1/n^1.1"
        )
    if dlt >= MAX_DELTA:
        raise PrivacyParameterError(
            f"delta must be < {MAX_DELTA:g}, got {dlt:g}; delta is a failure probability "
            "and should be well below 1/n (typical: 1e-5)"
        )
    return eps, dlt
