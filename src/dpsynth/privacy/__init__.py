"""Privacy accounting, the privacy plan, the noise source and parameter validation."""

from dpsynth.privacy.accounting import (
    gaussian_epsilon_closed_form,
    pld_epsilon,
    rdp_epsilon,
)
from dpsynth.privacy.noise import NoiseSource
from dpsynth.privacy.plan import (
    PrivacyPlan,
    Release,
    ReleaseSpec,
    build_plan,
    calibrate_scale,
)
from dpsynth.privacy.validation import (
    MAX_DELTA,
    MAX_EPSILON,
    MIN_DELTA,
    MIN_EPSILON,
    PrivacyParameterError,
    validate_epsilon_delta,
)

__all__ = [
    "MAX_DELTA",
    "MAX_EPSILON",
    "MIN_DELTA",
    "MIN_EPSILON",
    "NoiseSource",
    "PrivacyParameterError",
    "PrivacyPlan",
    "Release",
    "ReleaseSpec",
    "build_plan",
    "calibrate_scale",
    "gaussian_epsilon_closed_form",
    "pld_epsilon",
    "rdp_epsilon",
    "validate_epsilon_delta",
]
