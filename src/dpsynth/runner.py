"""``dpsynth run``: every step in-process, tracked in MLflow, behind the budget ledger.

Order matters for privacy: the configuration is validated and the plan built (no data),
then the budget is checked and the run charged in one transaction of the ledger store
(:mod:`dpsynth.privacy.ledger_store`), then its MLflow run is made, and only then is any
private record read. Any failure before the charge leaves the data
untouched; after it, tracking failures never stop the run (see :mod:`dpsynth.tracking`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dpsynth import steps
from dpsynth.config import RunConfig
from dpsynth.data.store import write_json_atomic
from dpsynth.preflight import check_decoding, preflight
from dpsynth.privacy.ledger import BudgetCheck, BudgetExceededError, LedgerEntry
from dpsynth.privacy.ledger_store import (
    LedgerMirrorWarning,
    LedgerStore,
    LedgerUnavailableError,
    mirror_problems,
    open_ledger,
)
from dpsynth.privacy.plan import PrivacyPlan
from dpsynth.tracking import Tracker, TrackingUnavailableError, flatten, resolve_tracking_uri


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict[str, Any]
    budget: BudgetCheck
    tracking_uri: str
    run_id: str | None
    not_logged: list[str] = field(default_factory=list)
    tracking_error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


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
               echo: Callable[[str], None] = print) -> ChargedRun:
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
    plan = steps.make_plan(config)
    check_decoding(config)
    dataset_id = config.data.ledger_id()
    out_dir.mkdir(parents=True, exist_ok=True)

    uri = resolve_tracking_uri(config.tracking.uri, out_dir)
    tracker = Tracker(uri, config.tracking.experiment, artifact_root=out_dir / "mlartifacts")
    tracker.open()
    limit = config.privacy.budget
    with open_ledger(config.privacy.ledger_uri) as ledger:
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
    tracker.log_params(run_id, {**flatten(config.to_yaml_dict(), "config."),
                                **_data_independent_seeds(config),
                                "dataset_id": dataset_id, "encoder": config.encoder.name},
                       what="run parameters")
    tracker.log_params(run_id, _plan_params(plan.to_dict()), what="privacy plan parameters")
    for name in ("config.yaml", "privacy_ledger.json", steps.PLAN_FILE):
        tracker.log_artifact(run_id, out_dir / name)
    return ChargedRun(tracker, run_id, budget, plan_path)


def _mirror_problems(ledger: LedgerStore, tracker: Tracker, dataset_id: str) -> list[str]:
    """Compare the ledger store with its MLflow mirror (read between two store reads:
    see :func:`mirror_problems`). An unreadable mirror is a problem to report, not a
    reason to refuse: the store is the truth."""
    before = ledger.history(dataset_id)
    try:
        mirror = tracker.ledger_entries(dataset_id)
    except TrackingUnavailableError as exc:
        return [f"the mirror could not be read, so it was not compared ({exc})"]
    return mirror_problems(before, mirror, ledger.history(dataset_id), tracker.uri)


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
        tracker.log_metrics(run_id, _numeric(metrics), what="metrics")
    if metrics_file is not None:
        tracker.log_artifact(run_id, metrics_file)
    tracker.end_run(run_id, "FINISHED" if metrics is not None else "FAILED")


class RunFailedError(RuntimeError):
    """A run failed after its budget was charged: what it wrote is kept and listed."""


@dataclass
class _Progress:
    """What a run has done so far, for the record a failed run leaves behind."""

    step: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    #: Called between steps: records the files written so far as dpsynth's own, so even
    #: a killed run's outputs are removed by the next run into the same directory.
    on_step: Callable[[], object] | None = None

    def begin(self, step: str | None) -> None:
        if self.on_step is not None:
            with contextlib.suppress(OSError):
                self.on_step()
        self.step = step


def _previous_record(out_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((out_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _close_abandoned_run(previous: dict[str, Any], tracker: Tracker,
                         echo: Callable[[str], None]) -> None:
    """A run killed outright (SIGKILL, power loss) cannot mark its MLflow run: the next
    run into the same directory finds its ``running`` record and its process gone, and
    marks it KILLED. Its budget charge stays, as every charge does."""
    if previous.get("status") != "running" or previous.get("host") != socket.gethostname():
        return
    pid, run_id = previous.get("pid"), previous.get("run_id")
    if not isinstance(pid, int) or _pid_alive(pid) or not run_id:
        return
    if previous.get("tracking_uri") == tracker.uri:
        tracker.end_run(run_id, "KILLED")
    echo(f"note: the previous run into this directory (MLflow run {run_id}) was stopped "
         f"without finishing; marked KILLED. Its privacy budget charge is kept.")


def _expected_outputs(config: RunConfig) -> list[str]:
    from dpsynth.decoders import decoder_for

    wanted = ["clusters", "mixture", "synthetic_embeddings"]
    d = config.decode
    if d.enabled or (d.enabled is None and (d.decoder or decoder_for(
            config.encoder.name, **config.encoder.options) is not None)):
        wanted.append("decoded_grid")
    return [*wanted, "report", "metrics"]


def run(config: RunConfig, out_dir: Path, *, progress: bool = True,
        echo: Callable[[str], None] = print, overwrite: bool = False) -> RunResult:
    """Every step in-process. The pre-flight runs first: what fails there (bad paths,
    class names, encoder, cache, ``--out``) costs no budget. After the charge, a failure
    keeps the charge and everything written so far, records both in ``run.json`` and
    raises :class:`RunFailedError`."""
    from dpsynth.outputs import OutputDir

    started = time.monotonic()
    out_dir = Path(out_dir)
    preflight(config, out_dir, overwrite=overwrite)
    owned = OutputDir.open(out_dir, overwrite=overwrite)
    previous = _previous_record(out_dir)
    try:
        charged = charge_run(config, out_dir, echo=echo)
    finally:
        owned.record()
    tracker, run_id, budget = charged.tracker, charged.run_id, charged.budget
    # ----- the run is charged: from here on private data may be read -----
    _close_abandoned_run(previous, tracker, echo)
    write_json_atomic(out_dir / "run.json", {
        "status": "running", "run_id": run_id, "tracking_uri": tracker.uri,
        "pid": os.getpid(), "host": socket.gethostname(), "budget": budget.to_dict(),
        "budget_charge": "kept: the run is reading private data"})
    owned.clear_previous()
    state = _Progress(outputs={"privacy_plan": str(charged.plan_path)},
                      on_step=owned.record)
    metrics = None
    failure: BaseException | None = None
    try:
        metrics = _run_steps(config, out_dir, charged.plan_path, tracker, progress, state)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        finish_run(tracker, run_id, metrics, out_dir / "metrics.json" if metrics else None)
        res = RunResult(out_dir, metrics, budget, tracker.uri, run_id,
                        list(tracker.not_logged),
                        tracker.error or "; ".join(tracker.rejected) or None, state.outputs,
                        time.monotonic() - started)
        missing = [k for k in _expected_outputs(config) if k not in state.outputs]
        record = {
            "status": "finished" if failure is None else "failed",
            "tracking_uri": tracker.uri, "experiment": config.tracking.experiment,
            "run_id": run_id, "not_logged": res.not_logged,
            "tracking_error": res.tracking_error, "budget": budget.to_dict(),
            "outputs": state.outputs, "seconds": res.seconds}
        if failure is not None:
            record.update(failed_step=state.step, missing=missing,
                          error=f"{type(failure).__name__}: {failure}"[:2000],
                          budget_charge="kept: the run had started reading private data")
        with contextlib.suppress(OSError):  # a full disk must not hide the real error
            write_json_atomic(out_dir / "run.json", record)
        with contextlib.suppress(OSError):
            owned.record()
        if isinstance(failure, Exception):
            raise RunFailedError(
                f"the run failed in step {state.step!r}: {type(failure).__name__}: "
                f"{str(failure)[:500]}. The privacy budget charge is kept (eps = "
                f"{budget.requested:.3g} on {budget.dataset_id!r}): the run had started "
                f"reading private data. Kept in {out_dir}: "
                f"{', '.join(state.outputs) or 'nothing'}; missing: {', '.join(missing)}. "
                f"Details: {out_dir / 'run.json'}") from failure
    return res


def _plan_params(plan: dict[str, Any]) -> dict[str, Any]:
    out = {f"plan.{k}": plan[k] for k in ("target_epsilon", "epsilon", "epsilon_rdp", "delta",
                                           "noise_scale", "private", "noise_seeded")}
    for r in plan["releases"]:
        out[f"plan.{r['name']}.sigma"] = r["sigma"]
        out[f"plan.{r['name']}.sensitivity"] = r["sensitivity"]
        out[f"plan.{r['name']}.repetitions"] = r["repetitions"]
    return out


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {k: v for k, v in metrics.items() if isinstance(v, int | float)
           and not isinstance(v, bool)}
    for prefix in ("per_class_accuracy", "nonprivate_per_class_accuracy"):
        for c, v in (metrics.get(prefix) or {}).items():
            out[f"{prefix}.{c}"] = v
    return out


@contextlib.contextmanager
def _step(tracker: Tracker, name: str) -> Iterator[str | None]:
    with tracker.step(name) as run_id, warnings.catch_warnings():
        # A seeded-noise warning is already in every output; keep the terminal readable.
        warnings.filterwarnings("ignore", message="noise_seed is set")
        yield run_id


def _run_steps(config: RunConfig, out: Path, plan_path: Path, tracker: Tracker,
               progress: bool, state: _Progress) -> dict[str, Any]:
    outputs = state.outputs
    state.begin("plan")
    with _step(tracker, "plan") as rid:
        tracker.log_artifact(rid, plan_path)
    state.begin("encode")
    with _step(tracker, "encode") as rid:
        private_dir = None if config.encoder.cache else out / "private" / "train-embeddings"
        test_dir = None if config.encoder.cache else out / "private" / "test-embeddings"
        train = steps.encode(config, "train", private_dir, progress=progress)
        test = steps.encode(config, "test", test_dir, progress=progress)
        tracker.log_params(rid, {"encoder": train.encoder, "embedding_dim": train.dim,
                                 "dataset_id": train.manifest["dataset_id"],
                                 "test_dataset_id": test.manifest["dataset_id"],
                                 "n_test": test.count}, what="encode parameters")
        outputs["train_embeddings (private)"] = str(train.path)
        outputs["test_embeddings"] = str(test.path)
    state.begin("dp_cluster")
    with _step(tracker, "dp_cluster") as rid:
        clusters = steps.dp_cluster(train.path, plan_path, out / "clusters")
        tracker.log_artifact(rid, clusters, "clusters")
        outputs["clusters"] = str(clusters)
    state.begin("fit_gmm")
    with _step(tracker, "fit_gmm") as rid:
        mixture = steps.fit_gmm(train.path, clusters, plan_path, out / "mixture")
        tracker.log_artifact(rid, mixture, "mixture")
        outputs["mixture"] = str(mixture)
    s = config.synthesize
    state.begin("synthesize")
    with _step(tracker, "synthesize") as rid:
        synthetic = steps.synthesize(mixture, out / "synthetic", n=s.n,
                                     class_balance=s.class_balance,
                                     random_state=s.random_state, shard_rows=s.shard_rows)
        tracker.log_params(rid, {"n": s.n, "class_balance": s.class_balance,
                                 "random_state": s.random_state}, what="synthesize parameters")
        outputs["synthetic_embeddings"] = str(synthetic.path)
    decoded = None
    if config.decode.enabled is not False:
        state.begin("decode")
        with _step(tracker, "decode") as rid:
            decoded = steps.decode(synthetic.path, out / "decoded",
                                   per_class=config.decode.per_class,
                                   decoder=config.decode.decoder, options=config.decode.options)
            if decoded is None and config.decode.enabled:
                raise ValueError(f"decode.enabled is true but encoder {synthetic.encoder!r} "
                                 "has no decoder")
            if decoded is not None:
                tracker.log_artifact(rid, decoded / "grid.png", "decoded")
                outputs["decoded_grid"] = str(decoded / "grid.png")
    state.begin("evaluate")
    with _step(tracker, "evaluate") as rid:
        ev_dir = out / "evaluation"
        metrics = steps.evaluate_run(synthetic.path, test.path, ev_dir, config,
                                     train_dir=train.path, plan_path=plan_path,
                                     decoded_dir=decoded, progress=progress)
        tracker.log_metrics(rid, _numeric(metrics), what="evaluate metrics")
        tracker.log_artifact(rid, ev_dir, "evaluation")
        outputs.update(report=str(ev_dir / "report.html"), plots=str(ev_dir / "plots"))
    # metrics.json at the top of the output too: the one file a script reads.
    write_json_atomic(out / "metrics.json", metrics)
    outputs["metrics"] = str(out / "metrics.json")
    state.begin(None)
    return metrics


def summary(result: RunResult) -> str:
    m = result.metrics
    private = m.get("private")
    lines = [
        "",
        f"dpsynth run finished in {result.seconds:.0f} s",
        f"  guarantee     : (eps = {m['epsilon']:.3g}, delta = {m['delta']:.2g})-DP"
        if private else "  guarantee     : NOT PRIVATE (eps = inf or a fixed noise seed)",
        f"  accuracy      : {100 * m['accuracy']:.1f}% (MLP trained only on synthetic data, "
        "real test set)",
    ]
    if m.get("image_level_accuracy") is not None:
        lines.append(f"  image level   : {100 * m['image_level_accuracy']:.1f}% (MLP trained on "
                     f"{m['image_level_n']} decoded, re-encoded synthetic images)")
    if m.get("nonprivate_accuracy") is not None:
        lines.append(f"  non-private   : {100 * m['nonprivate_accuracy']:.1f}% (same MLP on the "
                     "real private data; not covered by the guarantee)")
    lines.append(f"  budget        : {result.budget.summary_line()}")
    lines.append(f"  outputs       : {result.out_dir}")
    for key in ("report", "metrics", "synthetic_embeddings", "decoded_grid", "privacy_plan"):
        if key in result.outputs:
            lines.append(f"    {key:<20}: {result.outputs[key]}")
    lines.append(f"  mlflow        : {result.tracking_uri} (run {result.run_id})")
    if result.not_logged:
        lines.append(f"  NOT LOGGED to MLflow ({result.tracking_error}): "
                     + ", ".join(dict.fromkeys(result.not_logged))
                     + ". Every output above is on disk; re-log it from there.")
    return "\n".join(lines)

