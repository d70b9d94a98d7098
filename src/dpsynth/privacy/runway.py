"""How many more runs of a plan fit in a dataset's lifetime budget: the budget runway.

Read from the ledger, nothing charged. ``dpsynth pipeline schedule`` prints it before it
creates a recurring run and refuses one that cannot run once; the plan step of each run
still checks and charges the budget itself (:func:`dpsynth.ledger_charge.charge_run`).
"""

from __future__ import annotations

#: The runway is counted up to this many runs; beyond it, "at least" this many.
RUNWAY_CAP = 10_000


def budget_runway(config, ledger_uri: str | None,
                  declared: tuple = ()) -> tuple[int | None, str]:
    """How many runs of ``config`` still fit in its dataset's lifetime budget, according
    to the ledger: ``(None, why)`` when no limit applies (a dataset marked non-private),
    ``(0, why)`` when not even one run fits, else ``(n, summary)`` (n may be
    :data:`RUNWAY_CAP`, meaning at least that many). Reads the ledger, charges nothing."""
    import dp_accounting

    from dpsynth import steps  # the plan of the configuration: no data read
    from dpsynth.data.sources import DataSourceError
    from dpsynth.privacy.accounting import pld_epsilon
    from dpsynth.privacy.identity import training_content_digest
    from dpsynth.privacy.ledger import LedgerEntry, check_budget
    from dpsynth.privacy.ledger_store import open_ledger

    plan = steps.make_plan(config, declared)
    limit = config.privacy.budget
    with open_ledger(ledger_uri or config.privacy.ledger_uri) as ledger:
        # The id the plan step will charge: the content's recorded id where the training
        # data is readable from here (a read, nothing recorded), else the config's.
        dataset_id = config.data.ledger_id()
        try:
            digest = training_content_digest(config.data)
        except (DataSourceError, OSError):
            digest = None  # the data lives on the cluster: the config's id
        if digest is not None:
            dataset_id = ledger.known_identity(digest) or dataset_id
        history = ledger.history(dataset_id)
    entry = LedgerEntry.from_plan(plan, dataset_id)
    previous = list(history.charges)
    first = check_budget(previous, entry, limit.epsilon, limit.delta,
                         nonprivate=history.nonprivate, recorded=history.limit)
    if first.nonprivate is not None:
        return None, first.summary_line()
    if not first.ok:
        return 0, first.message()

    def fits(k: int) -> bool:  # the plan step's check after k more runs of this plan
        event = dp_accounting.ComposedDpEvent(
            [e.dp_event() for e in previous]
            + [dp_accounting.SelfComposedDpEvent(entry.dp_event(), k)])
        return pld_epsilon(event, first.delta) <= first.limit

    low, high = 1, 2  # fits(low) holds; find the first high that does not fit
    while high <= RUNWAY_CAP and fits(high):
        low, high = high, high * 2
    if high > RUNWAY_CAP:
        low = RUNWAY_CAP if fits(RUNWAY_CAP) else low
        high = RUNWAY_CAP + 1 if low == RUNWAY_CAP else RUNWAY_CAP
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    at_least = "at least " if low >= RUNWAY_CAP else ""
    return low, (f"{at_least}{low} more run(s) fit in the lifetime budget of dataset "
                 f"{dataset_id!r}: eps {first.limit:.3g} at delta {first.delta:g}, eps "
                 f"{first.spent:.3g} spent over {first.previous_runs} earlier run(s), each "
                 f"run eps {first.requested:.3g} at that delta (PLD composition, as the plan "
                 "step checks)")
