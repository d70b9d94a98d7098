"""The privacy budget ledger: what all runs on one dataset have spent, composed.

Each dataset id has a lifetime (epsilon, delta) budget. Every run that touches the data is
an entry (its releases as Gaussian mechanisms); entries compose *sequentially* (each run
sees the same records), accounted with dp-accounting's PLD accountant at the budget's
delta. A run is allowed only if the composition of all earlier entries and its own plan
stays within the budget. Storage is elsewhere (MLflow, :mod:`dpsynth.tracking`): this
module is the arithmetic, on plain records.

An entry is charged when the run starts, before it reads data, and is never refunded: a
run that crashes halfway may already have released something.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import dp_accounting

from dpsynth.privacy.accounting import gaussian_event, pld_epsilon
from dpsynth.privacy.plan import PrivacyPlan, epsilon_from_json, epsilon_to_json
from dpsynth.privacy.validation import validate_epsilon_delta


class BudgetExceededError(RuntimeError):
    """The run would take the dataset past its lifetime budget; nothing was read."""


@dataclass(frozen=True)
class LedgerEntry:
    """One run's charge: its releases as (noise multiplier, repetitions) pairs."""

    dataset_id: str
    releases: tuple[tuple[float, int], ...]
    epsilon: float
    delta: float
    run_id: str = ""

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
    def from_json(cls, text: str, run_id: str = "") -> LedgerEntry:
        data = json.loads(text)
        return cls(data["dataset_id"], tuple((float(nm), int(k)) for nm, k in data["releases"]),
                   epsilon_from_json(data["epsilon"]), float(data["delta"]), run_id)


def composed_epsilon(entries: Sequence[LedgerEntry], delta: float) -> float:
    """Epsilon at ``delta`` of running all ``entries`` on the same data (0 for none)."""
    if not entries:
        return 0.0
    if not all(e.private for e in entries):
        return math.inf
    return pld_epsilon(dp_accounting.ComposedDpEvent([e.dp_event() for e in entries]), delta)


@dataclass(frozen=True)
class BudgetCheck:
    dataset_id: str
    spent: float          # epsilon of earlier runs, composed
    requested: float      # epsilon of this run alone (at the budget's delta)
    total: float          # epsilon of earlier runs and this one, composed
    limit: float
    delta: float
    previous_runs: int

    @property
    def ok(self) -> bool:
        return self.total <= self.limit

    def message(self) -> str:
        head = (f"privacy budget of dataset {self.dataset_id!r} (delta = {self.delta:g}): "
                f"spent eps = {self.spent:.3g} over {self.previous_runs} earlier run(s), "
                f"this run requests eps = {self.requested:.3g}, together eps = "
                f"{self.total:.3g}, limit eps = {self.limit:.3g}")
        if self.ok:
            return head
        return (head + ". Refusing to start: nothing was read. Lower privacy.epsilon, use "
                "another dataset, or raise privacy.budget (a decision for the data owner).")

    def to_dict(self) -> dict[str, object]:
        return {"dataset_id": self.dataset_id, "spent_epsilon": epsilon_to_json(self.spent),
                "requested_epsilon": epsilon_to_json(self.requested),
                "total_epsilon": epsilon_to_json(self.total),
                "limit_epsilon": epsilon_to_json(self.limit), "delta": self.delta,
                "previous_runs": self.previous_runs, "within_budget": self.ok}


def check_budget(previous: Sequence[LedgerEntry], requested: LedgerEntry,
                 limit_epsilon: float, limit_delta: float) -> BudgetCheck:
    """Compose ``previous`` with ``requested`` and compare with the lifetime budget."""
    limit_epsilon, limit_delta = validate_epsilon_delta(limit_epsilon, limit_delta)
    spent = composed_epsilon(previous, limit_delta)
    total = composed_epsilon([*previous, requested], limit_delta)
    alone = composed_epsilon([requested], limit_delta)
    return BudgetCheck(requested.dataset_id, spent, alone, total, limit_epsilon, limit_delta,
                       len(previous))
