"""Thin wrappers over Google's dp-accounting: PLD for the reported epsilon, RDP as a check."""

from __future__ import annotations

import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

#: PLD discretisation. 1e-4 keeps calibration well inside the 1% target over the supported
#: range (validation.py: epsilon 0.01 .. 20, delta >= 1e-12), where a calibration takes
#: under a second at epsilon 1 and at most about half a minute at epsilon 20.
PLD_DISCRETIZATION = 1e-4


def pld_epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon at ``delta`` of ``event`` by the privacy-loss-distribution accountant."""
    accountant = pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=PLD_DISCRETIZATION
    )
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def rdp_epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon at ``delta`` of ``event`` by the Renyi accountant (an upper bound)."""
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def gaussian_epsilon_closed_form(noise_multiplier: float, delta: float) -> float:
    """Exact epsilon of one Gaussian mechanism (Balle & Wang 2018, analytic Gaussian)."""
    if noise_multiplier == 0:
        return math.inf
    return float(dp_accounting.get_epsilon_gaussian(noise_multiplier, delta))


def gaussian_event(noise_multiplier: float, repetitions: int = 1) -> dp_accounting.DpEvent:
    """``repetitions`` adaptive uses of a Gaussian mechanism with this noise multiplier."""
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    single = dp_accounting.GaussianDpEvent(noise_multiplier)
    return single if repetitions == 1 else dp_accounting.SelfComposedDpEvent(single, repetitions)
