"""The privacy budget ledger's arithmetic (storage: test_ledger_store.py; the MLflow mirror
and runs: test_tracking.py)."""

from __future__ import annotations

import functools
import math

import dp_accounting
import pytest

from dpsynth.privacy import ReleaseSpec, build_plan
from dpsynth.privacy.ledger import (
    LedgerEntry,
    NonPrivateMark,
    RecordedLimit,
    check_budget,
    composed_epsilon,
)

DELTA = 1e-5


@functools.cache  # calibrating a plan takes a while; entries are immutable
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


def _nonprivate(dataset: str = "d") -> LedgerEntry:
    return LedgerEntry.from_plan(build_plan([ReleaseSpec("s", 1.0)], math.inf, DELTA), dataset)


def test_a_non_private_run_on_an_unmarked_dataset_is_refused_with_how_to_mark_it():
    entry = _nonprivate()
    assert not entry.private
    check = check_budget([], entry, 1e9, DELTA)  # no finite budget is large enough
    assert not check.ok and check.nonprivate is None
    msg = check.message()
    assert "'d' is not" in msg and "nothing was charged" in msg
    assert "--set privacy.epsilon=inf --set privacy.budget.epsilon=inf" in msg


def test_an_infinite_budget_marks_a_dataset_never_charged_non_private():
    for entry in (_nonprivate(), _entry(1.0)):
        check = check_budget([], entry, math.inf, DELTA)
        assert check.ok and check.nonprivate == NonPrivateMark(new=True)
        assert "This run records the marking" in check.message()
        assert check.to_dict()["nonprivate_dataset"] is True


def test_an_infinite_budget_never_marks_a_charged_dataset():
    """Issue 27: a run with budget.epsilon = inf on a dataset with private charges used to
    mark it non-private for good as a side effect; only the owner may
    (``dpsynth budget set --non-private``)."""
    for entry in (_nonprivate(), _entry(1.0)):
        check = check_budget([_entry(5.0)], entry, math.inf, DELTA)
        assert not check.ok and check.nonprivate is None
        msg = check.message()
        assert "already has 1 charge(s)" in msg and "nothing was charged" in msg
        assert "dpsynth budget set --dataset-id d --non-private" in msg


def test_the_recorded_limit_holds_whatever_the_config_says():
    recorded = RecordedLimit(2.0, DELTA, "owner", "l1", "2026-01-31T12:00:00+00:00")
    assert check_budget([_entry(1.0)], _entry(1.0), 2.0, DELTA, recorded=recorded).ok
    for eps, delta in ((1000.0, DELTA), (2.0, 1e-4), (math.inf, DELTA)):
        check = check_budget([_entry(1.0)], _entry(1.0), eps, delta, recorded=recorded)
        assert not check.ok and check.recorded_limit is recorded
        assert "eps 2 at delta 1e-05 (set by the data owner, 2026-01-31 12:00 UTC)" in (
            check.message())
    first = check_budget([], _entry(1.0), 3.0, DELTA)
    assert first.ok and first.recorded_limit == RecordedLimit(3.0, DELTA, new=True)
    text = first.recorded_limit.to_json()
    assert RecordedLimit.from_json(text, "c", "t") == RecordedLimit(3.0, DELTA, entry_id="c",
                                                                   recorded_at="t")


def test_a_marked_dataset_enforces_no_budget_even_when_a_finite_one_is_configured():
    mark = NonPrivateMark("run-1", "c1", "2026-01-31T12:00:00+00:00")
    check = check_budget([_nonprivate(), _entry(3.0)], _nonprivate(), 1.0, DELTA,
                         nonprivate=mark)
    assert check.ok and math.isinf(check.spent) and check.previous_runs == 2
    line = check.summary_line()
    assert line == ("dataset 'd' is marked non-private (since run run-1, 2026-01-31 12:00 "
                    "UTC): no lifetime budget applies")
    msg = check.message()
    assert line in msg and "privacy.budget.epsilon = 1 does not apply" in msg
    assert "the marking holds for good" in msg
    assert check.to_dict()["nonprivate_since"]["run_id"] == "run-1"


def test_a_private_run_is_not_marked_and_reports_its_budget():
    check = check_budget([], _entry(1.0), 10.0, DELTA)
    assert check.nonprivate is None and check.summary_line().startswith("eps 1 of 10 used")
    assert check.to_dict()["nonprivate_dataset"] is False
    assert check.to_dict()["mirror_problems"] == []


def test_invalid_budget_is_refused():
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        check_budget([], _entry(1.0), 0.0, DELTA)


def test_entry_json_round_trip_is_compact():
    entry = _entry(2.0, "fashion-mnist/train")
    text = entry.to_json()
    assert len(text) < 300
    assert LedgerEntry.from_json(text, "r1", "c1") == LedgerEntry(
        entry.dataset_id, entry.releases, entry.epsilon, entry.delta, "r1", "c1")
