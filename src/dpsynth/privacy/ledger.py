"""The privacy budget ledger: what all runs on one dataset have spent, composed.

Each dataset id has a lifetime (epsilon, delta) budget. Every run that touches the data is
an entry (its releases as Gaussian mechanisms); entries compose *sequentially* (each run
sees the same records), accounted with dp-accounting's PLD accountant at the budget's
delta. A run is allowed only if the composition of all earlier entries and its own plan
stays within the budget. Storage is elsewhere (the append-only table of
:mod:`dpsynth.privacy.ledger_store`, mirrored in MLflow tags by :mod:`dpsynth.tracking`):
this module is the arithmetic, on plain records.

An entry is charged when the run starts, before it reads data, and is never refunded: a
run that crashes halfway may already have released something.

The lifetime limit is recorded, not configured anew by every run (:class:`RecordedLimit`):
the first charge of a dataset records its ``privacy.budget`` (epsilon and delta) in the
ledger, and from then on a run whose ``privacy.budget`` disagrees with the recorded limit
is refused, saying what is recorded. Only the data owner changes it, by an explicit action
that is itself a ledger entry (``dpsynth budget set --dataset-id ID --epsilon E --delta
D``): otherwise any run could raise the budget it is checked against.

Non-private runs (``privacy.epsilon = inf``) have no finite epsilon, so they would spend
any finite budget at once and lock the dataset for good. They are therefore allowed only
on a dataset its owner has marked non-private (public data, a test): with ``dpsynth
budget set --dataset-id ID --non-private``, or by charging a dataset for the first time
with ``privacy.budget.epsilon = inf``. A run never marks a dataset that already has
charges or a recorded finite limit: that is the owner's action alone. From the marking on
no lifetime budget applies to that dataset, whatever later configs say: a marking cannot
be taken back, because the non-private releases it allowed cannot be either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import dp_accounting

from dpsynth.privacy.accounting import gaussian_event, pld_epsilon
from dpsynth.privacy.plan import PrivacyPlan, epsilon_from_json, epsilon_to_json
from dpsynth.privacy.validation import validate_epsilon_delta


class BudgetExceededError(RuntimeError):
    """The run would take the dataset past its lifetime budget; nothing was read."""


@dataclass(frozen=True)
class LedgerEntry:
    """One run's charge: its releases as (noise multiplier, repetitions) pairs.

    ``charge_id`` names the charge in the ledger store (set once it is charged) and
    ``run_id`` the MLflow run it paid for; neither is part of :meth:`to_json`.
    """

    dataset_id: str
    releases: tuple[tuple[float, int], ...]
    epsilon: float
    delta: float
    run_id: str = ""
    charge_id: str = ""

    @classmethod
    def from_plan(cls, plan: PrivacyPlan, dataset_id: str, run_id: str = "") -> LedgerEntry:
        return cls(dataset_id, tuple((r.noise_multiplier, r.repetitions) for r in plan.releases),
                   plan.epsilon_pld, plan.delta, run_id)

    @property
    def private(self) -> bool:
        return all(nm > 0 for nm, _ in self.releases)

    def dp_event(self) -> dp_accounting.DpEvent:
        return dp_accounting.ComposedDpEvent([gaussian_event(nm, reps)
                                              for nm, reps in self.releases])

    def to_json(self) -> str:
        """Compact (fits an MLflow tag): a few dozen bytes per release."""
        return json.dumps({"dataset_id": self.dataset_id, "epsilon": epsilon_to_json(self.epsilon),
                           "delta": self.delta, "releases": [list(r) for r in self.releases]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, run_id: str = "", charge_id: str = "") -> LedgerEntry:
        data = json.loads(text)
        return cls(data["dataset_id"], tuple((float(nm), int(k)) for nm, k in data["releases"]),
                   epsilon_from_json(data["epsilon"]), float(data["delta"]), run_id, charge_id)


def composed_epsilon(entries: Sequence[LedgerEntry], delta: float) -> float:
    """Epsilon at ``delta`` of running all ``entries`` on the same data (0 for none)."""
    if not entries:
        return 0.0
    if not all(e.private for e in entries):
        return math.inf
    return pld_epsilon(dp_accounting.ComposedDpEvent([e.dp_event() for e in entries]), delta)


def _when(recorded_at: str) -> str:
    return f"{recorded_at[:16].replace('T', ' ')} UTC" if recorded_at else ""


@dataclass(frozen=True)
class NonPrivateMark:
    """The ledger's record that a dataset was declared non-private; it holds for good."""

    run_id: str = ""       # MLflow run of the run that declared it ("" until linked)
    charge_id: str = ""    # that run's charge in the ledger store (or the owner's entry)
    recorded_at: str = ""  # UTC, ISO 8601
    new: bool = False      # this run declares it: its charge appends the marking
    by_owner: bool = False  # declared by `dpsynth budget set --non-private`

    def since(self) -> str:
        """``run R, 2026-01-31 12:00 UTC``: who declared the marking, and when."""
        if self.by_owner:
            who = f"the data owner's `dpsynth budget set` (ledger entry {self.charge_id})"
        elif self.run_id:
            who = f"run {self.run_id}"
        elif self.new:
            who = "this run"
        else:  # its run was never created or linked: name the charge instead
            who = f"ledger charge {self.charge_id}"
        if not self.recorded_at:
            return who
        return f"{who}, {_when(self.recorded_at)}"


def _same(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9)


@dataclass(frozen=True)
class RecordedLimit:
    """A dataset's lifetime (epsilon, delta) as the ledger records it.

    ``by`` is ``"first charge"`` (the configuration of the run that first charged the
    dataset) or ``"owner"`` (``dpsynth budget set``); the latest entry holds. ``new``:
    this run's charge records it (the dataset had no limit recorded yet)."""

    epsilon: float
    delta: float
    by: str = "first charge"
    entry_id: str = ""     # the ledger entry (charge id of the first charge, or its own)
    recorded_at: str = ""  # UTC, ISO 8601
    new: bool = False

    def agrees(self, epsilon: float, delta: float) -> bool:
        return _same(self.epsilon, epsilon) and _same(self.delta, delta)

    def describe(self) -> str:
        """``eps 20 at delta 0.0001 (set by the data owner, 2026-01-31 12:00 UTC)``."""
        who = ("set by the data owner" if self.by == "owner"
               else "recorded by the dataset's first charge")
        when = _when(self.recorded_at)
        return (f"eps {self.epsilon:.6g} at delta {self.delta:g} ({who}"
                f"{', ' + when if when else ''})")

    def to_json(self) -> str:
        return json.dumps({"epsilon": epsilon_to_json(self.epsilon), "delta": self.delta,
                           "by": self.by}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, entry_id: str = "", recorded_at: str = "") -> RecordedLimit:
        data = json.loads(text)
        return cls(epsilon_from_json(data["epsilon"]), float(data["delta"]),
                   str(data.get("by", "owner")), entry_id, recorded_at)

    def to_dict(self) -> dict[str, object]:
        return {"epsilon": epsilon_to_json(self.epsilon), "delta": self.delta, "by": self.by,
                "entry_id": self.entry_id, "recorded_at": self.recorded_at}


def _set_command(dataset_id: str, epsilon: str = "E", delta: str = "D") -> str:
    return f"`dpsynth budget set --dataset-id {dataset_id} --epsilon {epsilon} --delta {delta}`"


@dataclass(frozen=True)
class BudgetCheck:
    dataset_id: str
    spent: float          # epsilon of earlier runs, composed
    requested: float      # epsilon of this run alone (at the budget's delta)
    total: float          # epsilon of earlier runs and this one, composed
    limit: float
    delta: float
    previous_runs: int
    #: Set when the dataset is (or by this run becomes) marked non-private.
    nonprivate: NonPrivateMark | None = None
    #: The ledger store's id of this run's charge ("" while not charged).
    charge_id: str = ""
    #: Where the MLflow mirror of the ledger disagrees with the ledger store.
    mirror_problems: tuple[str, ...] = field(default=())
    #: The dataset's recorded lifetime limit (``new``: this run's charge records it).
    recorded_limit: RecordedLimit | None = None
    #: Why the run's configured budget cannot be used (it disagrees with the recorded
    #: limit, or would mark a charged dataset non-private): the run is refused.
    limit_problem: str = ""

    @property
    def ok(self) -> bool:
        if self.limit_problem:
            return False
        if self.nonprivate is not None:
            return True
        # A non-private run on a dataset nobody marked: refused whatever the budget, so
        # that one run cannot lock the dataset (spent eps = inf) for every later run.
        return not math.isinf(self.requested) and self.total <= self.limit

    def summary_line(self) -> str:
        """One line for the run's summary."""
        if self.nonprivate is not None:
            return (f"dataset {self.dataset_id!r} is marked non-private (since "
                    f"{self.nonprivate.since()}): no lifetime budget applies")
        return (f"eps {self.total:.3g} of {self.limit:.3g} used on {self.dataset_id!r} "
                f"(delta {self.delta:g})")

    def message(self) -> str:
        if self.limit_problem:
            return (f"privacy budget of dataset {self.dataset_id!r}: {self.limit_problem}. "
                    "Refusing to start: nothing was read and nothing was charged.")
        if self.nonprivate is not None:
            text = (f"privacy budget: {self.summary_line()}. This run: eps = "
                    f"{self.requested:.3g} at delta = {self.delta:g}; "
                    f"{self.previous_runs} earlier run(s) recorded.")
            if self.nonprivate.new:
                text += (" This run records the marking (privacy.budget.epsilon = inf); it "
                         "holds for good.")
            elif not math.isinf(self.limit):
                text += (f" The configured privacy.budget.epsilon = {self.limit:.3g} does not "
                         "apply: the marking holds for good.")
            return text
        if math.isinf(self.requested):
            return (f"privacy.epsilon = inf asks for a non-private run, which is allowed only "
                    f"on a dataset marked non-private, and dataset {self.dataset_id!r} is not. "
                    "Refusing to start: nothing was read and nothing was charged. If its "
                    "records need no protection (public data, a test), the data owner marks "
                    "it for good with `dpsynth budget set --dataset-id "
                    f"{self.dataset_id} --non-private` (a dataset never charged may also be "
                    "marked by its first run: --set privacy.epsilon=inf --set "
                    "privacy.budget.epsilon=inf); otherwise give privacy.epsilon a finite "
                    "value.")
        head = (f"privacy budget of dataset {self.dataset_id!r} (delta = {self.delta:g}): "
                f"spent eps = {self.spent:.3g} over {self.previous_runs} earlier run(s), "
                f"this run requests eps = {self.requested:.3g}, together eps = "
                f"{self.total:.3g}, limit eps = {self.limit:.3g}")
        if self.ok:
            return head
        return (head + ". Refusing to start: nothing was read and nothing was charged. Lower "
                "privacy.epsilon or use another dataset; raising the lifetime budget is the "
                f"data owner's decision ({_set_command(self.dataset_id)}).")

    def to_dict(self) -> dict[str, object]:
        mark = self.nonprivate
        return {"dataset_id": self.dataset_id, "spent_epsilon": epsilon_to_json(self.spent),
                "requested_epsilon": epsilon_to_json(self.requested),
                "total_epsilon": epsilon_to_json(self.total),
                "limit_epsilon": epsilon_to_json(self.limit), "delta": self.delta,
                "previous_runs": self.previous_runs, "within_budget": self.ok,
                "nonprivate_dataset": mark is not None,
                "nonprivate_since": None if mark is None else {
                    "run_id": mark.run_id, "charge_id": mark.charge_id,
                    "recorded_at": mark.recorded_at},
                "charge_id": self.charge_id, "mirror_problems": list(self.mirror_problems),
                "recorded_limit": (None if self.recorded_limit is None
                                   else self.recorded_limit.to_dict())}


def _limit_problem(dataset_id: str, previous: Sequence[LedgerEntry], limit_epsilon: float,
                   limit_delta: float, recorded: RecordedLimit | None) -> str:
    """Why a run configured with (``limit_epsilon``, ``limit_delta``) may not be checked
    against it on an unmarked dataset, or ""."""
    if recorded is not None and not recorded.agrees(limit_epsilon, limit_delta):
        return (f"the configuration's privacy.budget (eps {limit_epsilon:.6g} at delta "
                f"{limit_delta:g}) disagrees with the lifetime budget recorded in the ledger, "
                f"{recorded.describe()}. A run's configuration does not set the limit: set "
                f"privacy.budget.epsilon={recorded.epsilon:.6g} and privacy.budget.delta="
                f"{recorded.delta:g}, or the data owner changes the recorded limit with "
                f"{_set_command(dataset_id)} (recorded in the ledger)")
    if math.isinf(limit_epsilon) and previous:
        return (f"privacy.budget.epsilon = inf would mark the dataset non-private, but it "
                f"already has {len(previous)} charge(s) in the ledger: a run does not mark "
                "a charged dataset; the data owner does, for good, with `dpsynth budget set "
                f"--dataset-id {dataset_id} --non-private`. Otherwise set privacy.budget to "
                "the dataset's lifetime budget")
    return ""


def check_budget(previous: Sequence[LedgerEntry], requested: LedgerEntry,
                 limit_epsilon: float, limit_delta: float, *,
                 nonprivate: NonPrivateMark | None = None,
                 recorded: RecordedLimit | None = None) -> BudgetCheck:
    """Compose ``previous`` with ``requested`` and compare with the lifetime budget.

    ``nonprivate`` is the dataset's marking in the ledger, if any; ``recorded`` its
    recorded lifetime limit, if any. On an unmarked dataset the configured limit
    (``limit_epsilon``, ``limit_delta``) must agree with the recorded one, else the check
    fails with :attr:`BudgetCheck.limit_problem`; with none recorded, the check carries a
    ``new`` :class:`RecordedLimit` for the store to record with the charge. An infinite
    ``limit_epsilon`` on a dataset never charged is the owner declaring it non-private:
    the check then carries a ``new`` marking; on a charged dataset it is refused.
    """
    limit_epsilon, limit_delta = validate_epsilon_delta(limit_epsilon, limit_delta)
    problem = ""
    if nonprivate is None:
        problem = _limit_problem(requested.dataset_id, previous, limit_epsilon, limit_delta,
                                 recorded)
        if not problem and math.isinf(limit_epsilon):
            nonprivate = NonPrivateMark(new=True)
        elif not problem and recorded is None:
            recorded = RecordedLimit(limit_epsilon, limit_delta, new=True)
    spent = composed_epsilon(previous, limit_delta)
    total = composed_epsilon([*previous, requested], limit_delta)
    alone = composed_epsilon([requested], limit_delta)
    return BudgetCheck(requested.dataset_id, spent, alone, total, limit_epsilon, limit_delta,
                       len(previous), nonprivate, recorded_limit=recorded,
                       limit_problem=problem)
