"""The privacy budget ledger's arithmetic (storage is tested in test_tracking.py)."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from dpsynth.privacy import ReleaseSpec, build_plan
from dpsynth.privacy.ledger import LedgerEntry, check_budget, composed_epsilon

DELTA = 1e-5


def _entry(epsilon: float, dataset: str = "d") -> LedgerEntry:
    plan = build_plan([ReleaseSpec("sum", 1.0), ReleaseSpec("count", 1.0, weight=2.0)],
                      epsilon, DELTA)
    return LedgerEntry.from_plan(plan, dataset)


@pytest.mark.parametrize("runs", [1, 2, 5])
def test_runs_compose_like_one_gaussian_of_combined_noise(runs):
    """k runs of a composition of Gaussians are exactly mu-GDP with
    mu^2 = k * sum 1/sigma_i^2: the ledger's PLD composition must agree with that."""
    entry = _entry(1.0)
    mu2 = runs * sum(reps / nm**2 for nm, reps in entry.releases)
    exact = dp_accounting.get_epsilon_gaussian(1 / math.sqrt(mu2), DELTA)
    assert composed_epsilon([entry] * runs, DELTA) == pytest.approx(exact, rel=0.01)


def test_no_runs_spend_nothing_and_composition_grows():
    assert composed_epsilon([], DELTA) == 0.0
    one, two = composed_epsilon([_entry(1.0)], DELTA), composed_epsilon([_entry(1.0)] * 2, DELTA)
    assert one == pytest.approx(1.0, rel=0.01)
    assert 1.0 < two < 2.0  # better than naive addition, worse than one run


def test_check_budget_allows_then_refuses_with_spent_requested_limit():
    first = check_budget([], _entry(1.0), 1.6, DELTA)
    assert first.ok and first.spent == 0.0 and first.total == pytest.approx(1.0, rel=0.01)
    second = check_budget([_entry(1.0)], _entry(1.0), 1.4, DELTA)
    assert not second.ok
    msg = second.message()
    for part in ("spent eps = 1", "requests eps = 1", "limit eps = 1.4", "Refusing to start",
                 "'d'"):
        assert part in msg


def test_non_private_runs_exhaust_any_finite_budget():
    entry = LedgerEntry.from_plan(build_plan([ReleaseSpec("s", 1.0)], math.inf, DELTA), "d")
    assert not entry.private
    assert not check_budget([], entry, 100.0, DELTA).ok
    assert check_budget([entry], _entry(1.0), math.inf, DELTA).ok


def test_invalid_budget_is_refused():
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        check_budget([], _entry(1.0), 0.0, DELTA)


def test_entry_json_round_trip_is_compact():
    entry = _entry(2.0, "fashion-mnist/train")
    text = entry.to_json()
    assert len(text) < 300
    assert LedgerEntry.from_json(text, "r1") == LedgerEntry(
        entry.dataset_id, entry.releases, entry.epsilon, entry.delta, "r1")
