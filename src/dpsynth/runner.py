"""``dpsynth run``: every step in-process, tracked in MLflow, behind the budget ledger.

Order matters for privacy: the configuration is validated and the plan built (no data),
then the budget is checked and the run charged in one transaction of the ledger store
(:func:`dpsynth.ledger_charge.charge_run`, which the pipeline's plan step calls too), then
its MLflow run is made, and only then is any private record read. Any failure before the
charge leaves the data untouched; after it, tracking failures never stop the run (see
:mod:`dpsynth.tracking`).

The steps run in the order of :data:`dpsynth.step_graph.STEPS`, each reading the
artifacts the graph names and taking the configuration keys the graph lists; this module
adds only what an in-process run does around them (output paths, MLflow step runs,
``run.json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpsynth import steps
from dpsynth.config import RunConfig
from dpsynth.data.store import EmbeddingSet, write_json_atomic
from dpsynth.ledger_charge import ChargedRun, charge_run, finish_run, numeric_metrics
from dpsynth.preflight import preflight
from dpsynth.privacy.ledger import BudgetCheck
from dpsynth.step_graph import STEPS, Step
from dpsynth.tracking import Tracker, runs_of_this_process

#: Re-exported: ``charge_run`` and ``finish_run`` live in :mod:`dpsynth.ledger_charge`.
#: :func:`run` calls ``charge_run`` through this module, so patching ``runner.charge_run``
#: reaches it.
__all__ = ["ChargedRun", "RunFailedError", "RunResult", "charge_run", "finish_run", "run",
           "summary"]


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


def _end_dead_runs(tracker: Tracker, echo: Callable[[str], None]) -> None:
    """Runs of this experiment killed outright on this host, whatever their ``--out``,
    are left RUNNING in MLflow by their dead process: end them KILLED (best effort)."""
    ended = tracker.end_dead_runs()
    for run_id, pid, _ in [e for e in ended if not e[2]]:
        echo(f"note: MLflow run {run_id} (process {pid} on this host) was stopped without "
             "finishing and its process is gone; marked KILLED. Its privacy budget charge "
             "is kept.")
    if steps_ended := sum(1 for e in ended if e[2]):
        echo(f"note: marked {steps_ended} step run(s) of such runs KILLED too.")


def _expected_outputs(config: RunConfig) -> list[str]:
    from dpsynth.decoders import decoder_name_for

    wanted = ["clusters", "mixture", "synthetic_embeddings"]
    d = config.decode
    if d.enabled or (d.enabled is None and (d.decoder or decoder_name_for(
            config.encoder.name) is not None)):
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
    # What the ledger refuses without reading data is refused first, in a fraction of a
    # second: before the pre-flight builds the encoder and reads the data, and before
    # --out is made.
    refuse_before_preflight(config)
    preflight(config, out_dir, overwrite=overwrite)
    made_out = not out_dir.exists()
    owned = OutputDir.open(out_dir, overwrite=overwrite)
    try:
        previous = _previous_record(out_dir)
        try:
            # The MLflow run carries this process's host, pid and start time: if it is
            # killed outright, a later run on this host ends its MLflow run KILLED.
            with runs_of_this_process():
                charged = charge_run(config, out_dir, echo=echo)
        except BaseException:
            if made_out:
                # Refused (or failed) before the charge: a --out this run made and left
                # empty is not left behind.
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # only if empty
            raise
        finally:
            if out_dir.is_dir():
                owned.record()
        tracker, run_id, budget = charged.tracker, charged.run_id, charged.budget
        # ----- the run is charged: from here on private data may be read -----
        _close_abandoned_run(previous, tracker, echo)
        _end_dead_runs(tracker, echo)
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
    finally:
        owned.close()  # what this process writes from now on is not the run's


@contextlib.contextmanager
def _step(tracker: Tracker, name: str) -> Iterator[str | None]:
    with tracker.step(name) as run_id, warnings.catch_warnings():
        # A seeded-noise warning is already in every output; keep the terminal readable.
        warnings.filterwarnings("ignore", message="noise_seed is set")
        yield run_id


@dataclass
class _InProcess:
    """An in-process walk of the step graph: the artifacts written so far, by graph name
    (EmbeddingSets, folders, files; ``config`` is the RunConfig itself)."""

    config: RunConfig
    out: Path
    tracker: Tracker
    progress: bool
    outputs: dict[str, str]
    artifacts: dict[str, Any]
    metrics: dict[str, Any] | None = None

    def input(self, step: Step, name: str) -> Any:
        return self.artifacts[step.inputs[name]]

    def path(self, step: Step, name: str) -> Path:
        value = self.input(step, name)
        return value.path if isinstance(value, EmbeddingSet) else value

    def write(self, step: Step, name: str, value: Any, split: str | None = None) -> None:
        self.artifacts[step.produced(split)[name]] = value


def _plan(run: _InProcess, step: Step, rid: str | None) -> None:
    # charge_run planned and charged before any step: the step run holds its plan.
    run.tracker.log_artifact(rid, run.artifacts["privacy_plan"])


def _encode(run: _InProcess, step: Step, rid: str | None) -> None:
    config, sets = run.input(step, "config"), {}
    for split in step.splits:
        # Without the cache the sets are written under --out, marked private.
        private = None if config.encoder.cache else run.out / "private" / f"{split}-embeddings"
        sets[split] = steps.encode(config, split, private, progress=run.progress)
        run.write(step, "embeddings", sets[split], split)
    train, test = sets["train"], sets["test"]
    run.tracker.log_params(rid, {"encoder": train.encoder, "embedding_dim": train.dim,
                                 "dataset_id": train.manifest["dataset_id"],
                                 "test_dataset_id": test.manifest["dataset_id"],
                                 "n_test": test.count}, what="encode parameters")
    run.outputs["train_embeddings (private)"] = str(train.path)
    run.outputs["test_embeddings"] = str(test.path)


def _dp_cluster(run: _InProcess, step: Step, rid: str | None) -> None:
    clusters = steps.dp_cluster(run.path(step, "embeddings"), run.path(step, "privacy_plan"),
                                run.out / "clusters")
    run.tracker.log_artifact(rid, clusters, "clusters")
    run.outputs["clusters"] = str(clusters)
    run.write(step, "clusters", clusters)


def _fit_gmm(run: _InProcess, step: Step, rid: str | None) -> None:
    mixture = steps.fit_gmm(run.path(step, "embeddings"), run.path(step, "clusters"),
                            run.path(step, "privacy_plan"), run.out / "mixture")
    run.tracker.log_artifact(rid, mixture, "mixture")
    run.outputs["mixture"] = str(mixture)
    run.write(step, "mixture", mixture)


def _synthesize(run: _InProcess, step: Step, rid: str | None) -> None:
    kwargs = step.kwargs(run.input(step, "config"))
    synthetic = steps.synthesize(run.path(step, "mixture"), run.out / "synthetic", **kwargs)
    run.tracker.log_params(rid, {k: kwargs[k] for k in ("n", "class_balance", "random_state")},
                           what="synthesize parameters")
    run.outputs["synthetic_embeddings"] = str(synthetic.path)
    run.write(step, "synthetic", synthetic)


def _decode(run: _InProcess, step: Step, rid: str | None) -> None:
    config, synthetic = run.input(step, "config"), run.input(step, "synthetic")
    decoded = steps.decode(synthetic.path, run.out / "decoded", **step.kwargs(config))
    if decoded is None and config.decode.enabled:
        raise ValueError(f"decode.enabled is true but encoder {synthetic.encoder!r} "
                         "has no decoder")
    if decoded is not None:
        run.tracker.log_artifact(rid, decoded / "grid.png", "decoded")
        run.outputs["decoded_grid"] = str(decoded / "grid.png")
        run.write(step, "decoded", decoded)


def _evaluate(run: _InProcess, step: Step, rid: str | None) -> None:
    ev_dir = run.out / "evaluation"
    present = {kw: run.artifacts[art] for kw, art in step.reads_if_present.items()
               if art in run.artifacts}
    metrics = steps.evaluate_run(run.path(step, "synthetic"), run.path(step, "test"), ev_dir,
                                 run.input(step, "config"), train_dir=run.path(step, "train"),
                                 plan_path=run.path(step, "privacy_plan"),
                                 progress=run.progress, **present)
    run.tracker.log_metrics(rid, numeric_metrics(metrics), what="evaluate metrics")
    run.tracker.log_artifact(rid, ev_dir, "evaluation")
    run.outputs.update(report=str(ev_dir / "report.html"), plots=str(ev_dir / "plots"))
    run.write(step, "evaluation", ev_dir)
    run.metrics = metrics


#: What ``dpsynth run`` does for each step of the graph (paths under --out, MLflow).
_IN_PROCESS: dict[str, Callable[[_InProcess, Step, str | None], None]] = {
    "plan": _plan, "encode": _encode, "dp_cluster": _dp_cluster, "fit_gmm": _fit_gmm,
    "synthesize": _synthesize, "decode": _decode, "evaluate": _evaluate}
assert set(_IN_PROCESS) == {s.name for s in STEPS}, "every step of the graph runs in-process"


def _run_steps(config: RunConfig, out: Path, plan_path: Path, tracker: Tracker,
               progress: bool, state: _Progress) -> dict[str, Any]:
    """Walk the step graph in its order; the plan was charged before (``charge_run``)."""
    run = _InProcess(config, out, tracker, progress, state.outputs,
                     {"config": config, "privacy_plan": plan_path})
    for step in STEPS:
        if not step.enabled(config):
            continue
        state.begin(step.name)
        with _step(tracker, step.name) as rid:
            _IN_PROCESS[step.name](run, step, rid)
    metrics = run.metrics
    # metrics.json at the top of the output too: the one file a script reads.
    write_json_atomic(out / "metrics.json", metrics)
    state.outputs["metrics"] = str(out / "metrics.json")
    state.begin(None)
    return metrics


def refuse_before_preflight(config: RunConfig) -> None:
    """Raise :class:`BudgetExceededError` for a run the ledger will refuse whatever the
    data holds, before any expensive work: a configured budget that disagrees with the
    dataset's recorded lifetime limit (or would mark a charged dataset non-private), and a
    non-private run (``privacy.epsilon = inf``) on a dataset not marked non-private.

    Only a read of the ledger (nothing recorded) and no accounting. Where the ledger id
    follows the training files' content (a path-derived source without
    ``data.dataset_id``), finding it hashes every training file
    (:mod:`dpsynth.privacy.identity`), which the charge does again: that is done here for
    a non-private run only (cheaper than the pre-flight's encoder and reads), and a
    disagreeing limit is left to the charge. Skipped when the ledger cannot be opened or
    does not exist yet. :func:`~dpsynth.ledger_charge.charge_run` makes the same checks
    again, in the transaction that charges, and reports what this one skipped."""
    from dpsynth.privacy.identity import PATH_DERIVED, training_content_digest
    from dpsynth.privacy.ledger import BudgetExceededError, LedgerEntry, check_budget
    from dpsynth.privacy.ledger_store import open_ledger, resolve_ledger_uri

    data, budget = config.data, config.privacy.budget
    by_content = data.source in PATH_DERIVED and not data.dataset_id
    if by_content and not math.isinf(config.privacy.epsilon):
        return
    uri = resolve_ledger_uri(config.privacy.ledger_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return  # no ledger yet: a read must not create one (the charge will)
    try:
        with open_ledger(uri) as ledger:
            dataset_id = data.ledger_id()
            if by_content:
                # The id the charge will use: the content's recorded id, else the path's.
                dataset_id = ledger.known_identity(training_content_digest(data)) or (
                    dataset_id)
            history = ledger.history(dataset_id)
    except Exception:  # noqa: BLE001 - no ledger, unreadable data: later checks say it
        return
    if history.nonprivate is not None:
        return
    if math.isinf(config.privacy.epsilon):
        # Every release of an eps = inf plan has zero noise, so one zero-noise release
        # stands in for the plan: the check needs no more (making the plan would build
        # the encoder, for its dimension).
        entry = LedgerEntry(dataset_id, ((0.0, 1),), math.inf, config.privacy.delta)
    elif not (history.limit is None or history.limit.agrees(budget.epsilon, budget.delta)):
        # The recorded limit disagrees: refused whatever this run asks for, so an empty
        # request stands in for the plan (whose calibration takes seconds).
        entry = LedgerEntry(dataset_id, (), 0.0, config.privacy.delta)
    else:
        return  # what is left to refuse needs this run's plan: the charge checks it
    check = check_budget(history.charges, entry, budget.epsilon, budget.delta,
                         nonprivate=history.nonprivate, recorded=history.limit)
    if not check.ok:
        raise BudgetExceededError(check.message())


def _budget_line(budget: BudgetCheck, run_delta: float | None) -> str:
    """The summary's budget line. Its epsilon is the ledger's: every run of the dataset
    composed at the budget's delta, which is why it differs from the guarantee's (this run
    alone, at its own delta); the line says so."""
    if budget.nonprivate is not None:
        return budget.summary_line()
    why = f"all runs composed at the budget's delta {budget.delta:g}"
    if run_delta is not None and not math.isclose(float(run_delta), budget.delta):
        why += (f"; this run alone there: eps {budget.requested:.3g} (the guarantee above is "
                f"at the run's delta {float(run_delta):g})")
    return (f"eps {budget.total:.3g} of {budget.limit:.3g} used on {budget.dataset_id!r} "
            f"({why})")


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
    for gone in m.get("classes_without_samples") or []:
        # Name, then label: as the fit's warning names it.
        lines.append(f"  NO SAMPLES    : class {gone['name']!r} ({gone['class']}): "
                     f"{gone['reason']}")
    for noisy in m.get("classes_noise_dominated") or []:
        lines.append(f"  MOSTLY NOISE  : class {noisy['name']!r} ({noisy['class']}): "
                     f"{noisy['reason']}")
    lines.append(f"  budget        : {_budget_line(result.budget, m.get('delta'))}")
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

