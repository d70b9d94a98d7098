"""The budget charge of a run: plan, check and charge the dataset's budget in the ledger
store, open the run's MLflow record (:func:`charge_run`), and close it (:func:`finish_run`).

``dpsynth run`` (:mod:`dpsynth.runner`) and the Kubeflow pipeline's plan and evaluate
components both call these, so a run is charged the same way wherever it runs.

Order matters for privacy: the configuration is validated and the plan built (no data),
then the budget is checked and the run charged in one transaction of the ledger store
(:mod:`dpsynth.privacy.ledger_store`), and only then is its MLflow run made. Nothing here
reads a private record.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dpsynth import steps
from dpsynth.config import RunConfig
from dpsynth.data.store import write_json_atomic
from dpsynth.gmm.noise_dominance import describe_plan
from dpsynth.preflight import check_decoding
from dpsynth.privacy.identity import resolve_ledger_id
from dpsynth.privacy.ledger import BudgetCheck, BudgetExceededError, LedgerEntry
from dpsynth.privacy.ledger_store import (
    LedgerIncompleteError,
    LedgerMirrorWarning,
    LedgerStore,
    LedgerUnavailableError,
    ledger_gap,
    mirror_problems,
    open_ledger,
)
from dpsynth.privacy.plan import PrivacyPlan, ReleaseSpec, release_threshold
from dpsynth.tracking import Tracker, TrackingUnavailableError, flatten, resolve_tracking_uri


def _data_independent_seeds(config: RunConfig) -> dict[str, Any]:
    return {"seed.model_random_state": config.model.random_state,
            "seed.synthesize_random_state": config.synthesize.random_state,
            "seed.evaluate_random_state": config.evaluate.random_state,
            "seed.noise_seed": config.privacy.noise_seed}


@dataclass
class ChargedRun:
    """A run that passed the budget check and is charged in the ledger: data may be read."""

    tracker: Tracker
    run_id: str
    budget: BudgetCheck
    plan_path: Path


def charge_run(config: RunConfig, out_dir: Path, *,
               echo: Callable[[str], None] = print,
               declared: Sequence[ReleaseSpec] = ()) -> ChargedRun:
    """Plan, check the budget and charge the run in the ledger store, then create its
    MLflow run (which mirrors the charge in its tags).

    Reads no private data. Refuses (BudgetExceededError, TrackingUnavailableError) before
    writing anything into ``out_dir``; on success writes ``config.yaml``,
    ``privacy_plan.json`` and ``privacy_ledger.json`` there and logs them with every
    parameter. ``dpsynth run`` and the pipeline's plan step both start here. A charge once
    made is kept, even if creating the MLflow run then fails.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} exists and is not a directory")
    plan = steps.make_plan(config, declared)
    # Stated up front, from the plan alone: the classes too small to release.
    # ... and the records a released class needs not to be mostly noise (same message).
    echo("\n".join(line for line in (release_threshold(plan).describe(),
                                     describe_plan(plan)) if line))
    check_decoding(config)
    out_dir.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(config.tracking.uri)
    tracker = Tracker(uri, config.tracking.experiment)
    tracker.open()
    limit = config.privacy.budget
    with open_ledger(config.privacy.ledger_uri) as ledger:
        # The records' identity, not their path: a renamed training folder is charged
        # under the id its content was first charged under (dpsynth.privacy.identity).
        dataset_id = resolve_ledger_id(config.data, ledger)
        if dataset_id != config.data.ledger_id():
            echo(f"the training records were first charged as dataset {dataset_id!r} "
                 "(the same files, now elsewhere): charged under that id")
            # Every later step, output and release of this run names the same id.
            config.data.dataset_id = dataset_id
        problems = _mirror_problems(ledger, tracker, dataset_id)
        # One transaction checks and appends only if the charge fits: runs racing on one
        # dataset are checked one after the other, so no charge is ever withdrawn.
        budget = ledger.charge(LedgerEntry.from_plan(plan, dataset_id), limit.epsilon,
                               limit.delta, private=plan.private)
        budget = replace(budget, mirror_problems=tuple(problems))
        if not budget.ok:
            # Nothing is written: a refused run leaves an earlier run's outputs as they were.
            raise BudgetExceededError(budget.message() + _mirror_note(problems, tracker.uri))
        # ----- charged, for good: nothing below takes the charge back -----
        run_id = _start_charged_run(tracker, config, plan, budget, ledger)
        budget = _link_run(ledger, budget, run_id, tracker.uri, echo)
    echo(budget.message())
    if problems:
        # The line says it; the warning carries every problem (`dpsynth run` prints it on
        # stderr), and privacy_ledger.json keeps them.
        echo(f"warning: the MLflow mirror of the privacy budget ledger disagrees with the "
             f"ledger store ({len(problems)} problem(s), in privacy_ledger.json "
             "mirror_problems); the store is the truth")
        warnings.warn(_mirror_note(problems, tracker.uri).strip(), LedgerMirrorWarning,
                      stacklevel=2)
    write_json_atomic(out_dir / "privacy_ledger.json",
                      {**budget.to_dict(), "ledger_uri": ledger.uri})
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    plan_path = out_dir / steps.PLAN_FILE
    write_json_atomic(plan_path, plan.to_dict())
    from dpsynth.encoders import encoder_options

    # The encoder's options with its defaults filled in: its input size is on the run even
    # when the configuration leaves it out.
    options = encoder_options(config.encoder.name, config.encoder.options)
    tracker.log_params(run_id, {**flatten(config.to_yaml_dict(), "config."),
                                **_data_independent_seeds(config),
                                "dataset_id": dataset_id, "encoder": config.encoder.name,
                                **{f"encoder_option.{k}": v for k, v in options.items()}},
                       what="run parameters")
    tracker.log_params(run_id, _plan_params(plan.to_dict()), what="privacy plan parameters")
    for name in ("config.yaml", "privacy_ledger.json", steps.PLAN_FILE):
        tracker.log_artifact(run_id, out_dir / name)
    return ChargedRun(tracker, run_id, budget, plan_path)


def _mirror_problems(ledger: LedgerStore, tracker: Tracker, dataset_id: str) -> list[str]:
    """Compare the ledger store with its MLflow mirror (read between two store reads:
    see :func:`mirror_problems`).

    The two are the budget's witnesses. A ledger that holds fewer charges than the mirror
    (deleted, emptied, an old backup put back) refuses the run
    (:class:`LedgerIncompleteError`): counting only what the ledger still holds would
    reset the budget. Other disagreements (a deleted or edited mirror tag) are problems
    to report: the ledger still counts every charge it holds. The tracking store was
    just opened, so an unreadable mirror is reported, not refused."""
    before = ledger.history(dataset_id)
    try:
        mirror = tracker.ledger_entries(dataset_id)
    except TrackingUnavailableError as exc:
        return [f"the mirror could not be read, so it was not compared ({exc})"]
    after = ledger.history(dataset_id)
    gap = ledger_gap(after, mirror, ledger.uri, tracker.uri)
    if gap:
        raise LedgerIncompleteError(gap)
    return mirror_problems(before, mirror, after, tracker.uri)


def _mirror_note(problems: list[str], tracking_uri: str) -> str:
    if not problems:
        return ""
    return (f" The MLflow mirror of the privacy budget ledger at {tracking_uri} disagrees "
            "with the ledger store (the store is the truth; every charge in it is counted): "
            + "; ".join(problems) + ".")


def _start_charged_run(tracker: Tracker, config: RunConfig, plan: PrivacyPlan,
                       budget: BudgetCheck, ledger: LedgerStore) -> str:
    """The MLflow run of a charged run, its tags mirroring the ledger entry."""
    charge = replace(LedgerEntry.from_plan(plan, budget.dataset_id),
                     charge_id=budget.charge_id)
    try:
        return tracker.start_run(config.name, {
            "dpsynth.dataset_id": budget.dataset_id, "dpsynth.encoder": config.encoder.name,
            "dpsynth.private": str(plan.private).lower(),
            "dpsynth.noise_seeded": str(plan.noise_seeded).lower()}, ledger_entry=charge)
    except TrackingUnavailableError as exc:
        raise TrackingUnavailableError(
            f"{exc}. Nothing was read, but the privacy budget was already charged (ledger "
            f"charge {budget.charge_id} at {ledger.uri}, eps = {budget.requested:.3g} on "
            f"{budget.dataset_id!r}) and the charge is kept: charges are never "
            "withdrawn.") from None


def _link_run(ledger: LedgerStore, budget: BudgetCheck, run_id: str, tracking_uri: str,
              echo: Callable[[str], None]) -> BudgetCheck:
    """Append the charge -> MLflow run link; a failure loses only that link (the charge
    is made and counted), so it is reported, not fatal."""
    try:
        ledger.link_run(budget.charge_id, budget.dataset_id, run_id, tracking_uri)
    except LedgerUnavailableError as exc:
        echo(f"warning: {exc}. Ledger charge {budget.charge_id} is counted but not linked "
             f"to MLflow run {run_id}.")
    mark = budget.nonprivate
    if mark is not None and mark.new:
        budget = replace(budget, nonprivate=replace(mark, run_id=run_id))
    return budget


def finish_run(tracker: Tracker, run_id: str, metrics: dict[str, Any] | None,
               metrics_file: Path | None) -> None:
    """Log the final metrics to the parent run and close it (best effort)."""
    if metrics is not None:
        tracker.log_metrics(run_id, numeric_metrics(metrics), what="metrics")
    if metrics_file is not None:
        tracker.log_artifact(run_id, metrics_file)
    tracker.end_run(run_id, "FINISHED" if metrics is not None else "FAILED")


def _plan_params(plan: dict[str, Any]) -> dict[str, Any]:
    out = {f"plan.{k}": plan[k] for k in ("target_epsilon", "epsilon", "epsilon_rdp", "delta",
                                           "noise_scale", "private", "noise_seeded")}
    for r in plan["releases"]:
        out[f"plan.{r['name']}.sigma"] = r["sigma"]
        out[f"plan.{r['name']}.sensitivity"] = r["sensitivity"]
        out[f"plan.{r['name']}.repetitions"] = r["repetitions"]
    return out


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics`` as MLflow metrics (per-class values flattened, keyed by
    class label): accuracies, each released class's ``noise_to_signal`` (left out where
    no signal is left: None) and ``noise_dominated`` (1 or 0)."""
    out = {k: v for k, v in metrics.items() if isinstance(v, int | float)
           and not isinstance(v, bool)}
    for prefix in ("per_class_accuracy", "nonprivate_per_class_accuracy", "noise_to_signal"):
        for c, v in (metrics.get(prefix) or {}).items():
            if v is not None or prefix != "noise_to_signal":
                out[f"{prefix}.{c}"] = v
    flagged = {str(m["class"]) for m in metrics.get("classes_noise_dominated") or []}
    for c in metrics.get("noise_to_signal") or {}:
        out[f"noise_dominated.{c}"] = float(c in flagged)
    return out
