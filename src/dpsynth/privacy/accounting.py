"""Thin wrappers over Google's dp-accounting: PLD for the reported epsilon, RDP as a check."""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant

#: PLD discretisation. 1e-4 keeps calibration well inside the 1% target over the supported
#: range (validation.py: epsilon 0.01 .. 20, delta >= 1e-12), where a calibration takes
#: under a second at epsilon 1 and at most about half a minute at epsilon 20.
PLD_DISCRETIZATION = 1e-4


def pld_epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """Epsilon at ``delta`` of ``event`` by the privacy-loss-distribution accountant.

    Events made only of Gaussian mechanisms (all that dpsynth's plans and ledger hold) take
    the accountant's own steps, in its order, with each Gaussian's PLD built once per
    standard deviation (:func:`_gaussian_pld`): the ledger composes the same few entries
    again and again, and the build, not the composition, is most of the accountant's time.
    The result equals ``PLDAccountant``'s bit for bit (tests/test_privacy_plan.py)."""
    stddevs = _gaussian_stddevs(event, 1)
    if stddevs is None:
        accountant = pld_privacy_accountant.PLDAccountant(
            value_discretization_interval=PLD_DISCRETIZATION
        )
        accountant.compose(event)
        return float(accountant.get_epsilon(delta))
    if any(s == 0 for s in stddevs):
        return math.inf
    pld = pld_lib.identity(value_discretization_interval=PLD_DISCRETIZATION)
    for s in stddevs:
        pld = pld.compose(_gaussian_pld(s))
    return float(pld.get_epsilon_for_delta(delta))


def _gaussian_stddevs(event: dp_accounting.DpEvent, count: int) -> list[float] | None:
    """The standard deviations of the Gaussian PLDs ``PLDAccountant`` composes for
    ``event`` (``count`` repetitions), in its order, 0 for a non-private event; None when
    the event holds anything else. Mirrors ``PLDAccountant._maybe_compose``, where a
    Gaussian repeated k times is one Gaussian of standard deviation sigma / sqrt(k)."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return []
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return [0.0]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _gaussian_stddevs(event.event, event.count * count)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        out: list[float] = []
        for e in event.events:
            inner = _gaussian_stddevs(e, count)
            if inner is None:
                return None
            out += inner
        return out
    if isinstance(event, dp_accounting.GaussianDpEvent):
        if event.noise_multiplier == 0:
            return [0.0]
        return [event.noise_multiplier / math.sqrt(count)]
    return None


@functools.lru_cache(maxsize=1024)
def _gaussian_pld(standard_deviation: float) -> pld_lib.PrivacyLossDistribution:
    """The accountant's PLD of one Gaussian mechanism (add/remove neighbours, sensitivity
    1). PLDs are immutable: ``compose`` returns a new one, so a cached one is safe to share."""
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=standard_deviation,
        value_discretization_interval=PLD_DISCRETIZATION,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)


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
