"""MLflow tracking of a run, and the MLflow mirror of the privacy budget ledger.

One parent run per ``dpsynth run``, a nested run per step. What is logged is public
configuration, the privacy plan, DP releases and metrics; never raw embeddings, private
images or exact statistics (tests/test_tracking.py scans the artifacts).

The ledger itself is an append-only table (:mod:`dpsynth.privacy.ledger_store`); each
charged run also carries its entry as tags here, a mirror that the run compares with the
store and never counts (anyone who can write to MLflow can delete a tag).

Where: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else an embedded SQLite store in the
per-user dpsynth home (:func:`dpsynth_home`), next to the budget ledger: every run of the
user, whatever its ``--out``, goes into one history. ``--out`` keeps a copy of the run's
own records (``run.json``, ``privacy_ledger.json``, ``privacy_plan.json``, ``config.yaml``,
``metrics.json``).

Two failure policies:
- Before any data is read (:meth:`Tracker.open`, :meth:`Tracker.start_run`), a tracking
  failure is fatal: a run that cannot be recorded must not start.
- After the run is charged, logging is best effort: the first failure marks the tracker
  down, later calls are skipped at once (no retry storm against a dead server), and every
  skipped item is listed in :attr:`Tracker.not_logged` so the run can say what is missing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpsynth.privacy.ledger import LedgerEntry
from dpsynth.stores import (  # noqa: F401 - HOME_ENV re-exported (tests, CLI)
    HOME_ENV,
    TrackingUnavailableError,
    dpsynth_home,
)

LEDGER_DATASET_TAG = "dpsynth.ledger.dataset_id"
LEDGER_ENTRY_TAG = "dpsynth.ledger.entry"
#: The ledger store's id of the run's charge: what the mirror is compared by.
LEDGER_CHARGE_TAG = "dpsynth.ledger.charge_id"
MAX_PARAM_LENGTH = 6000
#: Tags of a run whose life is one process's (``dpsynth run``): the host, the process id
#: and its start time, so a later run on this host can tell the process is gone.
HOST_TAG = "dpsynth.host"
PID_TAG = "dpsynth.pid"
PID_STARTED_TAG = "dpsynth.pid_started"
ENDED_BY_TAG = "dpsynth.ended_by"
_PROCESS_RUNS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "dpsynth_process_runs", default=False)
#: MLflow error codes meaning "the server is up but refused this item".
_REJECTED_ITEM_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS"}


def process_started(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, from ``/proc``), or "" where
    that cannot be read: with the pid it names one process, not a later one given the
    same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the name
    except (OSError, IndexError):
        return ""


def _process_alive(pid: int, started: str) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except (OverflowError, ValueError):
        return False
    return not started or process_started(pid) in ("", started)


def process_tags() -> dict[str, str]:
    """The tags naming this process: host, pid and its start time."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PID_STARTED_TAG: process_started(os.getpid())}


@contextlib.contextmanager
def runs_of_this_process() -> Iterator[None]:
    """Runs started inside this block (and their step runs) live and die with this
    process (``dpsynth run``): they carry :func:`process_tags`, so that once the process
    is gone a later run on the same host ends them KILLED (:meth:`Tracker.end_dead_runs`).
    A pipeline's plan step does not use it: its run outlives the plan pod."""
    token = _PROCESS_RUNS.set(True)
    try:
        yield
    finally:
        _PROCESS_RUNS.reset(token)




def default_tracking_uri() -> str:
    """The embedded MLflow store: ``sqlite:///<dpsynth home>/mlflow.db``."""
    return f"sqlite:///{dpsynth_home() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None) -> str:
    """``tracking.uri``, then ``$MLFLOW_TRACKING_URI``, then the embedded store in the
    per-user home (:func:`default_tracking_uri`), shared by every run of this user
    whatever its ``--out``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return default_tracking_uri()


def embedded_artifact_root(uri: str) -> Path | None:
    """Where an embedded (sqlite file) store keeps its artifacts: ``mlartifacts/`` beside
    the database file; None for a server, which has its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"


def create_embedded_store(uri: str) -> None:
    """Create a missing embedded (sqlite file) tracking store atomically.

    MLflow creates and migrates a sqlite store in place on first use; a failure halfway (a
    full disk) leaves a half-migrated file that every later run trips over
    (``_alembic_tmp_experiments already exists``). So the store is built under a temporary
    name and renamed into place only once it is complete; on failure nothing is left.
    """
    import uuid

    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists():
        return
    import logging

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingUnavailableError(
            f"cannot create the folder of the embedded tracking store {db}: {exc}") from None

    from mlflow.tracking import MlflowClient

    tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex}.tmp")
    # MLflow announces each migration at INFO on stderr; a new store is routine here.
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.WARNING)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        if not db.exists():  # another run may have made it meanwhile: keep theirs
            os.replace(tmp, db)
    except Exception as exc:  # noqa: BLE001 - any failure: say so, leave nothing behind
        raise TrackingUnavailableError(
            f"cannot create the embedded tracking store {db}: {type(exc).__name__}: "
            f"{str(exc)[:300]}") from None
    finally:
        db_log.setLevel(level)
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _quiet_client() -> None:
    # MLflow's default HTTP retry policy waits minutes on a dead server; a run that lost
    # its server should notice within seconds and carry on. Users may still override.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # dpsynth's summary names the run once; MLflow would print a URL per nested run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"privacy.epsilon": "1.0", ...} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


class Tracker:
    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self.artifact_root = artifact_root
        self.not_logged: list[str] = []
        self.rejected: list[str] = []
        self.error: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        #: Tags put on every run this tracker starts (:func:`runs_of_this_process`).
        self._process_tags: dict[str, str] = {}

    # ------------------------------------------------------- must-succeed (pre-data)
    def open(self) -> Tracker:
        """Connect and get or create the experiment; raises TrackingUnavailableError."""
        _quiet_client()
        from mlflow.tracking import MlflowClient

        create_embedded_store(self.uri)
        try:
            self._client = MlflowClient(tracking_uri=self.uri)
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                root = self.artifact_root or embedded_artifact_root(self.uri)
                location = (root.resolve().as_uri()
                            if root and self.uri.startswith("sqlite:") else None)
                self.experiment_id = self._client.create_experiment(
                    self.experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except Exception as exc:  # noqa: BLE001 - any client failure means unreachable
            raise TrackingUnavailableError(
                f"cannot reach the MLflow tracking store at {self.uri}: "
                f"{type(exc).__name__}: {str(exc)[:300]}") from None
        return self

    def ledger_entries(self, dataset_id: str) -> list[LedgerEntry]:
        """The mirror: every ledger entry tagged on ``dataset_id`` in *all* experiments,
        deleted runs included, with their run and charge ids. Not the truth (that is the
        ledger store): what the run compares the store with."""
        from mlflow.entities import ViewType

        escaped = dataset_id.replace("'", "\\'")
        query = f"tags.`{LEDGER_DATASET_TAG}` = '{escaped}'"
        entries: list[LedgerEntry] = []
        try:
            experiments = self._client.search_experiments(view_type=ViewType.ALL)
            ids = [e.experiment_id for e in experiments]
            token = None
            while ids:
                page = self._client.search_runs(ids, query, run_view_type=ViewType.ALL,
                                                max_results=1000, page_token=token)
                for run in page:
                    text = run.data.tags.get(LEDGER_ENTRY_TAG)
                    if text:
                        entries.append(LedgerEntry.from_json(
                            text, run.info.run_id, run.data.tags.get(LEDGER_CHARGE_TAG, "")))
                token = page.token
                if not token:
                    break
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailableError(
                f"cannot read the MLflow mirror of the privacy budget ledger from {self.uri}: "
                f"{type(exc).__name__}: {str(exc)[:300]}") from None
        return entries

    def start_run(self, name: str, tags: dict[str, str],
                  ledger_entry: LedgerEntry | None = None) -> str:
        """Create the parent run carrying the mirror of its ledger charge; raises if it
        cannot."""
        if _PROCESS_RUNS.get():
            self._process_tags = process_tags()
        all_tags = {**tags, **self._process_tags}
        if ledger_entry is not None:
            all_tags[LEDGER_DATASET_TAG] = ledger_entry.dataset_id
            all_tags[LEDGER_ENTRY_TAG] = ledger_entry.to_json()
            if ledger_entry.charge_id:
                all_tags[LEDGER_CHARGE_TAG] = ledger_entry.charge_id
        try:
            run = self._client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        except Exception as exc:  # noqa: BLE001
            raise TrackingUnavailableError(
                f"cannot create the MLflow run at {self.uri}: {type(exc).__name__}: "
                f"{str(exc)[:300]}") from None
        self.run_id = run.info.run_id
        return self.run_id

    # ------------------------------------------------------------ best effort (post)
    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if self.error is not None:
            self.not_logged.append(what)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - logging must never kill a charged run
            message = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.not_logged.append(what)
            if getattr(exc, "error_code", None) in _REJECTED_ITEM_CODES:
                # The server answered and refused this one item: keep logging the rest.
                self.rejected.append(f"{what}: {message}")
            else:
                self.error = message
            return None

    def log_params(self, run_id: str | None, params: dict[str, Any], what: str = "params"
                   ) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._call(what, self._client.log_batch, run_id or self.run_id,
                       params=items[start:start + 100])

    def log_metrics(self, run_id: str | None, metrics: dict[str, float],
                    what: str = "metrics") -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
        self._call(what, self._client.log_batch, run_id or self.run_id, metrics=items)

    def log_artifact(self, run_id: str | None, path: Path, artifact_path: str | None = None
                     ) -> None:
        path = Path(path)
        fn = self._client.log_artifacts if path.is_dir() else self._client.log_artifact
        self._call(f"artifact {path.name}", fn, run_id or self.run_id, str(path),
                   artifact_path)

    def end_run(self, run_id: str | None, status: str) -> None:
        self._call(f"run status {status}", self._client.set_terminated,
                   run_id or self.run_id, status)

    def end_dead_runs(self) -> list[tuple[str, int, bool]]:
        """End KILLED the runs of this experiment that a process on this host started
        (:func:`runs_of_this_process`) and left RUNNING when it died (SIGKILL, power
        loss): its pid is gone, or is now another process (another start time). Each gets
        a :data:`ENDED_BY_TAG` note. Best effort, never raises; returns (run id, pid,
        whether it is a step run) of each run ended."""
        from mlflow.entities import ViewType

        if self._client is None or self.experiment_id is None:
            return []
        host = socket.gethostname().replace("'", "\\'")
        query = f"tags.`{HOST_TAG}` = '{host}' and attributes.status = 'RUNNING'"
        ended: list[tuple[str, int, bool]] = []
        try:
            token = None
            found = []
            while True:
                page = self._client.search_runs([self.experiment_id], query,
                                                run_view_type=ViewType.ACTIVE_ONLY,
                                                max_results=1000, page_token=token)
                found += list(page)
                token = page.token
                if not token:
                    break
            for run in found:
                tags = run.data.tags
                try:
                    pid = int(tags.get(PID_TAG, ""))
                except ValueError:
                    continue
                if run.info.run_id == self.run_id or _process_alive(
                        pid, tags.get(PID_STARTED_TAG, "")):
                    continue
                note = (f"ended KILLED by the run {self.run_id} (process {os.getpid()} on "
                        f"{socket.gethostname()}): process {pid} that ran it is gone, so it "
                        "was stopped without finishing (SIGKILL, power loss)")
                self._client.set_tag(run.info.run_id, ENDED_BY_TAG, note)
                self._client.set_terminated(run.info.run_id, "KILLED")
                ended.append((run.info.run_id, pid, "dpsynth.step" in tags))
        except Exception:  # noqa: BLE001 - tidying up others' runs never stops this one
            pass
        return ended

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[str | None]:
        """A nested run for one step; FAILED if the step raises."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run = self._call(f"step run {name}", self._client.create_run, self.experiment_id,
                         tags={MLFLOW_PARENT_RUN_ID: self.run_id, "dpsynth.step": name,
                               **self._process_tags},
                         run_name=name)
        run_id = run.info.run_id if run is not None else None
        try:
            yield run_id
        except BaseException:
            if run_id:
                self.end_run(run_id, "FAILED")
            raise
        if run_id:
            self.end_run(run_id, "FINISHED")
