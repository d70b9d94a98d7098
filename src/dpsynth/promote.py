"""Production refresh: promote a run's synthetic data to MLflow, fetch it, roll it back, and
refresh it by resampling.

Everything here is **post-processing** of differentially private releases and reads no
private data:

- :func:`promote` reads a ``dpsynth run`` output directory: the saved mixture (every array
  in it is a DP release or public configuration), the synthetic EmbeddingSet (sampled from
  that mixture), the privacy plan, and ``metrics.json`` (evaluation results computed by the
  run). It never opens the private training embeddings or images, whose paths ``run.json``
  only names.
- :func:`resample` draws new records from a promoted mixture. A function of a DP release
  that does not touch the private data again is itself DP with the same (epsilon, delta)
  (the post-processing property), so resampling has sensitivity zero with respect to the
  private data, spends no privacy budget and writes nothing to the budget ledger. Its
  metrics are carried over from the version it resamples (no evaluation runs: evaluating
  would read the held-out test data).
- :func:`fetch` and :func:`rollback` only read and move MLflow registry entries.

The registered model ``dpsynth-<dataset_id>`` (the id sanitised for model URIs) gets one
version per promoted or resampled release. Its model is the synthesizer as an MLflow pyfunc
(:class:`SynthesizerModel`): ``predict`` on a DataFrame with a column ``n`` (and optional
``class_balance``, ``random_state``) returns ``n`` fresh samples per row, with labels. So a
consumer can run ``mlflow.pyfunc.load_model("models:/dpsynth-<dataset>@production")``.

Release flow: the version is always registered first (so every candidate and its gate
result are on record), then the gates (:class:`Gates`) run; only when all pass does the
alias ``production`` move to the new version, and the version it replaces gets the alias
``previous`` (and the new version records it in the tag ``dpsynth.previous_production``),
which :func:`rollback` moves ``production`` back to. A failed gate leaves every alias where
it was, tags the version ``dpsynth.gate`` = ``failed: <gate>`` and raises
:class:`GateFailedError` naming the gate.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.config import DEFAULT_CLASS_BALANCE

PRODUCTION = "production"
PREVIOUS = "previous"
RELEASE_EXPERIMENT = "dpsynth-releases"
MODEL_ARTIFACT = "synthesizer"
TAG_PREFIX = "dpsynth."
#: Version tags (the gates read the production version's values from these).
TAG_KIND = "dpsynth.kind"  # "run" or "resample"
TAG_RESAMPLE_OF = "dpsynth.resample_of"
TAG_PREVIOUS = "dpsynth.previous_production"
TAG_GATE = "dpsynth.gate"
TAG_RELEASE_RUN = "dpsynth.release_run_id"
TAG_SOURCE_RUN = "dpsynth.source_run_id"
#: sha256 over the release's mixture files and its synthetic set's manifest (which holds
#: every shard's sha256): the same run promoted twice has the same digest. A digest of DP
#: releases and samples only, never of private data.
TAG_RELEASE_DIGEST = "dpsynth.release_digest"
#: Set by ``rollback --force``: why a version that did not pass the gates was made
#: production anyway (who decided and why), kept on the version.
TAG_FORCED = "dpsynth.forced_production"
#: The sha256 of the dpsynth wheel logged with the model (its exact build).
TAG_WHEEL = "dpsynth.wheel_sha256"
GATE_PASSED = "passed"
METRIC_TAGS = ("epsilon", "delta", "private", "noise_seeded", "accuracy",
               "frechet_distance_to_test")
RELEASE_FILE = "release.json"


class ReleaseError(RuntimeError):
    """A release cannot be made, found or moved (missing outputs, unknown alias)."""


class GateFailedError(ReleaseError):
    """A promotion gate refused the candidate; ``gate`` names it."""

    def __init__(self, gate: str, message: str, version: str) -> None:
        super().__init__(f"gate {gate!r} failed: {message} (version {version} is "
                         f"registered but not aliased '{PRODUCTION}')")
        self.gate = gate
        self.version = version


@dataclass(frozen=True)
class Gates:
    """What a candidate must meet before ``production`` moves to it.

    require_private: the release is DP (finite epsilon) and its noise is not seeded.
    max_epsilon, max_delta: ceilings on the release's (epsilon, delta).
    min_accuracy: floor on the synthetic-trained classifier's test accuracy.
    accuracy_tolerance: accuracy may be at most this much below production's.
    frechet_tolerance: Fréchet distance to the test set may be at most this much above
    production's (absolute, in the embedding's units).
    The two comparative gates are skipped while there is no production version.
    """

    require_private: bool = True
    max_epsilon: float = 10.0
    max_delta: float = 1e-5
    min_accuracy: float = 0.1
    accuracy_tolerance: float = 0.02
    frechet_tolerance: float = 0.05


@dataclass
class RegisteredRelease:
    """A registered version and where it stands."""

    model_name: str
    version: str
    dataset_id: str
    aliased: bool
    previous_production: str | None
    run_id: str
    tags: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_name(dataset_id: str) -> str:
    """``dpsynth-<dataset_id>``, one name per id. An id a model URI can carry as it is
    (letters, digits, ``.``, ``_``, ``-``) is used as it is; any other id has every run of
    other characters replaced by ``-`` and the first 16 hex digits of its sha256 appended,
    so ``probe:a`` and ``probe/a`` never name the same model (they did: both were
    ``dpsynth-probe-a``). A plain id that happens to end like such a suffix gets one too,
    so the two forms never meet."""
    import hashlib

    text = str(dataset_id)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    if not clean:
        raise ReleaseError(f"dataset id {dataset_id!r} has no usable characters")
    if clean == text and not _HASHED.search(text):
        return f"dpsynth-{text}"
    return f"dpsynth-{clean}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


#: The suffix :func:`model_name` adds to an id it had to rewrite.
_HASHED = re.compile(r"-[0-9a-f]{16}$")


def _keeps_tracking_globals(fn):
    """MLflow's fluent API (start_run, log_model) reads a process-wide tracking URI, which
    :func:`_client` sets; a library call must not leave it (or the env var MLflow mirrors
    it into) pointing elsewhere for the caller's later MLflow calls."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import mlflow

        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",
                                                    "MLFLOW_REGISTRY_URI")}
        had_uri = mlflow.tracking._tracking_service.utils.is_tracking_uri_set()
        saved_uri = mlflow.get_tracking_uri() if had_uri else None
        saved_registry = mlflow.get_registry_uri() if had_uri else None
        try:
            return fn(*args, **kwargs)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            mlflow.set_tracking_uri(saved_uri)
            mlflow.set_registry_uri(saved_registry)

    return wrapper


def _client(tracking_uri: str | None):
    """A client of ``tracking_uri``, else of the store ``dpsynth run`` logs to by default
    ($MLFLOW_TRACKING_URI, else the embedded store in the per-user home), which is also
    made MLflow's process-wide URI (see :func:`_restores_tracking_uri`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from dpsynth.tracking import _quiet_client, create_embedded_store, resolve_tracking_uri

    _quiet_client()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(tracking_uri)
    create_embedded_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _release_experiment() -> None:
    """Make the releases' experiment current, got or created as a run's is
    (:meth:`dpsynth.tracking.Tracker.open`: an embedded store keeps its artifacts beside
    its database, not in MLflow's ./mlruns of the working folder)."""
    import mlflow

    from dpsynth.tracking import Tracker

    tracker = Tracker(mlflow.get_tracking_uri(), RELEASE_EXPERIMENT).open()
    mlflow.set_experiment(experiment_id=tracker.experiment_id)


# ------------------------------------------------------------------------------ pyfunc
class SynthesizerModel:
    """Factory of the pyfunc (a class so that importing this module needs no mlflow)."""

    @staticmethod
    def create():
        import mlflow.pyfunc

        warnings.filterwarnings("ignore", message="(?s).*Add type hints to the `predict`")

        class _Model(mlflow.pyfunc.PythonModel):
            """The saved DP mixture; ``predict`` samples from it (post-processing)."""

            def load_context(self, context) -> None:
                from dpsynth.synthesizer import DPSynthesizer

                self.synth = DPSynthesizer.load(context.artifacts["mixture"])

            def predict(self, context, model_input, params=None):
                return sample_frame(self.synth, model_input)

        return _Model()


def sample_frame(synth, model_input) -> Any:
    """Samples for each row of ``model_input`` (``n``, optional ``class_balance`` and
    ``random_state``): a DataFrame with ``label`` and ``e0``..``e{d-1}``."""
    import pandas as pd

    frame = pd.DataFrame(model_input)
    if "n" not in frame.columns:
        raise ValueError("input needs a column 'n' (number of samples)")
    parts = []
    for _, row in frame.iterrows():
        balance = row.get("class_balance")
        seed = row.get("random_state")
        X, y = synth.sample(
            int(row["n"]),
            class_balance=str(balance) if isinstance(balance, str) else DEFAULT_CLASS_BALANCE,
            random_state=None if seed is None or pd.isna(seed) else int(seed))
        part = pd.DataFrame(X, columns=[f"e{i}" for i in range(X.shape[1])])
        part.insert(0, "label", y)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([
        ColSpec("long", "n"), ColSpec("string", "class_balance", required=False),
        ColSpec("long", "random_state", required=False)]))


# ------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"{path} is missing: not a finished dpsynth run output") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{path} is unreadable: {exc}") from None


def _dataset_id(out_dir: Path) -> str:
    run = out_dir / "run.json"
    if run.is_file():
        budget = _read_json(run).get("budget") or {}
        if budget.get("dataset_id"):
            return str(budget["dataset_id"])
    release = out_dir / RELEASE_FILE
    if release.is_file() and _read_json(release).get("dataset_id"):
        return str(_read_json(release)["dataset_id"])
    raise ReleaseError(f"{out_dir}: cannot tell the dataset id (no run.json budget entry)")


def _published_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without the non-private baseline, which the DP guarantee does not
    cover (see docs/design.md, "The private boundary")."""
    kept = {k: v for k, v in metrics.items() if not k.startswith("nonprivate_")}
    if len(kept) < len(metrics):
        kept["note"] = ("accuracy: MLP trained only on DP synthetic embeddings, scored on "
                        "the real test split. The run's non-private baseline is not "
                        "published with a release.")
    return kept


def _candidate_values(metrics: dict[str, Any]) -> dict[str, str]:
    return {f"{TAG_PREFIX}{k}": str(metrics[k]).lower() if isinstance(metrics[k], bool)
            else str(metrics[k]) for k in METRIC_TAGS if metrics.get(k) is not None}


def _recorded_plain(candidate: dict[str, str]) -> dict[str, Any]:
    """The recorded ``dpsynth.<metric>`` tags as plain JSON values (they overwrite the
    run folder's copies in the published metrics.json)."""
    out: dict[str, Any] = {}
    for tag, text in candidate.items():
        key = tag.removeprefix(TAG_PREFIX)
        out[key] = text == "true" if text in ("true", "false") else _float(candidate, key)
    return out


def _float(tags: dict[str, str], key: str) -> float | None:
    value = tags.get(f"{TAG_PREFIX}{key}")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


# ------------------------------------------------------------------------------ gates
def check_gates(candidate: dict[str, str], production: dict[str, str] | None,
                gates: Gates) -> tuple[str, str] | None:
    """The first failed gate as ``(name, reason)``, or None when all pass. Both arguments
    are version tags (``dpsynth.<metric>``)."""
    eps, delta = _float(candidate, "epsilon"), _float(candidate, "delta")
    acc, fd = _float(candidate, "accuracy"), _float(candidate, "frechet_distance_to_test")
    if gates.require_private:
        if candidate.get(f"{TAG_PREFIX}private") != "true" or eps is None \
                or not math.isfinite(eps):
            return "private", "the release is not differentially private (eps = inf)"
        if candidate.get(f"{TAG_PREFIX}noise_seeded") != "false":
            return "private", "the release's noise is seeded (reproducible, not private)"
    if eps is None or not eps <= gates.max_epsilon:
        return "max_epsilon", f"epsilon {eps} exceeds the ceiling {gates.max_epsilon}"
    if delta is None or not delta <= gates.max_delta:
        return "max_delta", f"delta {delta} exceeds the ceiling {gates.max_delta}"
    if acc is None or not acc >= gates.min_accuracy:
        return "min_accuracy", f"accuracy {acc} is below the floor {gates.min_accuracy}"
    if production is not None:
        p_acc = _float(production, "accuracy")
        if p_acc is not None and acc < p_acc - gates.accuracy_tolerance:
            return "accuracy_vs_production", (
                f"accuracy {acc:.4f} is below production's {p_acc:.4f} minus the "
                f"tolerance {gates.accuracy_tolerance}")
        p_fd = _float(production, "frechet_distance_to_test")
        if p_fd is not None and (fd is None or fd > p_fd + gates.frechet_tolerance):
            return "frechet_vs_production", (
                f"Fréchet distance {fd} is above production's {p_fd:.4f} plus the "
                f"tolerance {gates.frechet_tolerance}")
    return None


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@_keeps_tracking_globals
def promote_version(dataset_id: str, version: str, *, gates: Gates = Gates(),
                    tracking_uri: str | None = None) -> RegisteredRelease:
    """Run the gates on registered ``version`` and, if all pass, move ``production`` to it
    (the replaced version becomes ``previous``). Raises :class:`GateFailedError`."""
    client = _client(tracking_uri)
    name = model_name(dataset_id)
    mv = client.get_model_version(name, str(version))
    current = _alias_version(client, name, PRODUCTION)
    if current is not None and current.version == mv.version:
        return _release(client, name, mv.version, dataset_id, True)
    failed = check_gates(dict(mv.tags), dict(current.tags) if current else None, gates)
    if failed:
        client.set_model_version_tag(name, mv.version, TAG_GATE, f"failed: {failed[0]}")
        raise GateFailedError(failed[0], failed[1], mv.version)
    client.set_model_version_tag(name, mv.version, TAG_GATE, GATE_PASSED)
    previous = current
    if previous is not None and not _may_be_production(previous):
        # Production was moved outside the gates (an alias set by hand): it does not
        # become 'previous'; the last gated one it replaced does, if any.
        before = previous.tags.get(TAG_PREVIOUS)
        previous = client.get_model_version(name, before) if before else None
        if previous is not None and not _may_be_production(previous):
            previous = None
    if previous is not None:
        client.set_model_version_tag(name, mv.version, TAG_PREVIOUS, previous.version)
        client.set_registered_model_alias(name, PREVIOUS, previous.version)
    elif _alias_version(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)
    client.set_registered_model_alias(name, PRODUCTION, mv.version)
    return _release(client, name, mv.version, dataset_id, True)


def _release(client, name: str, version: str, dataset_id: str, aliased: bool) -> RegisteredRelease:
    mv = client.get_model_version(name, version)
    tags = dict(mv.tags)
    return RegisteredRelease(name, str(mv.version), dataset_id, aliased, tags.get(TAG_PREVIOUS),
                   tags.get(TAG_RELEASE_RUN, mv.run_id or ""), tags)


# ------------------------------------------------------------------------------ register
@_keeps_tracking_globals
def register(out_dir: Path, *, tracking_uri: str | None = None,
             extra_tags: dict[str, str] | None = None,
             recorded: dict[str, str] | None = None) -> tuple[str, str]:
    """Log an output directory (a ``dpsynth run`` or a :func:`resample`) as a release run
    and register its synthesizer as a new version; returns ``(dataset_id, version)``.

    Reads only DP releases, synthetic samples and run metadata (module docstring).
    """
    import mlflow
    import mlflow.data
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    from dpsynth.data.store import EmbeddingSet
    from dpsynth.synthesizer import DPSynthesizer

    out_dir = Path(out_dir)
    metrics = _read_json(out_dir / "metrics.json")
    dataset_id = _dataset_id(out_dir)
    mixture, synthetic = out_dir / "mixture", out_dir / "synthetic"
    DPSynthesizer.load(mixture)  # refuse a damaged model before anything is logged
    synth_set = EmbeddingSet.open(synthetic)
    client = _client(tracking_uri)
    name = model_name(dataset_id)
    digest = release_digest(mixture, synthetic)
    if (existing := _registered_with_digest(client, name, digest)) is not None:
        # Promoting the same release again (a retried task, a second command) returns
        # the version it already has instead of registering a duplicate.
        return dataset_id, existing
    source_run = (_read_json(out_dir / "run.json").get("run_id")
                  if (out_dir / "run.json").is_file() else None)
    # The gates read what the run recorded, never a file of the output folder that a user
    # can edit: a resample carries its source version's recorded values.
    candidate = (dict(recorded) if recorded is not None
                 else _recorded_candidate(client, out_dir, source_run))
    tags = {TAG_KIND: "run", **candidate,
            f"{TAG_PREFIX}dataset_id": dataset_id, TAG_RELEASE_DIGEST: digest,
            **(extra_tags or {})}
    if source_run:
        tags[TAG_SOURCE_RUN] = str(source_run)
    wheel = dpsynth_wheel()  # before anything is logged: a model that cannot be served
    tags[TAG_WHEEL] = _sha256(wheel)
    _release_experiment()
    with mlflow.start_run(run_name=f"release-{name}") as run:
        mlflow.set_tags(tags)
        # The recorded values (what the gates read), not the folder's metrics.json.
        numbers = {k: _float(candidate, k) for k in
                   ("accuracy", "frechet_distance_to_test", "epsilon", "delta")}
        mlflow.log_metrics({k: v for k, v in numbers.items()
                            if v is not None and math.isfinite(v)})
        mlflow.log_artifacts(str(synthetic), "synthetic")
        mlflow.log_artifacts(str(mixture), "mixture")
        # A release is published: only what the guarantee covers goes in. The run's
        # nonprivate_* numbers (the same MLP trained on the private data without noise)
        # stay behind, inside the private boundary.
        mlflow.log_dict({**_published_metrics(metrics), **_recorded_plain(candidate)},
                        "metrics.json")
        for file in ("privacy_plan.json", "config.yaml", RELEASE_FILE):
            if (out_dir / file).is_file():
                mlflow.log_artifact(str(out_dir / file))
        if (out_dir / "decoded" / "grid.png").is_file():
            mlflow.log_artifact(str(out_dir / "decoded" / "grid.png"), "decoded")
        # Lineage: the private dataset by id only (no data, no digest of it), and the
        # synthetic set with its digest, as the run's inputs.
        artifact_uri = mlflow.get_artifact_uri("synthetic")
        X, y = synth_set.load()
        synthetic_ds = mlflow.data.from_numpy(X, targets=y, source=_source(artifact_uri),
                                              name=f"synthetic:{dataset_id}")
        private_ds = MetaDataset(source=HTTPDatasetSource(f"dpsynth://{dataset_id}"),
                                 name=dataset_id)
        mlflow.log_input(private_ds, context="private-source (not logged; DP releases only)")
        mlflow.log_input(synthetic_ds, context="synthetic")
        with warnings.catch_warnings():
            # The signature is explicit; an input example would make MLflow sample once.
            warnings.filterwarnings("ignore", message="(?s).*(type hints|input example)")
            artifacts = {"mixture": str(mixture), "dpsynth_wheel": str(wheel)}
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=SynthesizerModel.create(),
                artifacts=artifacts, signature=_signature(),
                pip_requirements=model_requirements(wheel))
            mlflow.set_tag(TAG_WHEEL, tags[TAG_WHEEL])
        run_id = run.info.run_id
    mv = mlflow.register_model(info.model_uri, name, tags={**tags, TAG_RELEASE_RUN: run_id})
    client.set_model_version_tag(name, mv.version, TAG_RELEASE_RUN, run_id)
    return dataset_id, str(mv.version)


def _recorded_candidate(client, out_dir: Path, source_run: str | None) -> dict[str, str]:
    """The gates' inputs (``dpsynth.<metric>`` tags) from the run's record, not from the
    output folder: epsilon and delta recomposed from ``privacy_plan.json`` once it is
    checked to be the plan the run logged when it was charged (every release's sigma),
    ``private``/``noise_seeded`` from the run's tags, accuracy and the Fréchet distance from
    its logged metrics. An edited ``metrics.json`` or plan, a run that failed or whose
    record is not in the tracking store, is refused (:class:`ReleaseError`)."""
    from mlflow.exceptions import MlflowException

    from dpsynth.privacy.plan import verify_plan_dict

    run_file = out_dir / "run.json"
    status = _read_json(run_file).get("status") if run_file.is_file() else None
    if status not in (None, "finished"):
        raise ReleaseError(f"{out_dir}: the run's status is {status!r} (run.json): only a "
                           "finished run can be released")
    if not source_run:
        raise ReleaseError(f"{out_dir}: no MLflow run recorded (run.json has no run_id): the "
                           "gates read the run's record, so a run without one cannot be "
                           "released")
    try:
        run = client.get_run(str(source_run))
    except MlflowException as exc:
        raise ReleaseError(f"the run {source_run} is not in the tracking store "
                           f"{client.tracking_uri}: {exc.message}. Promote against the "
                           "store the run logged to") from None
    if run.info.status in ("FAILED", "KILLED"):
        raise ReleaseError(f"the run {source_run} ended {run.info.status}: only a finished "
                           "run can be released")
    try:
        plan = verify_plan_dict(_read_json(out_dir / "privacy_plan.json"))
    except ValueError as exc:
        raise ReleaseError(f"{out_dir / 'privacy_plan.json'}: {exc}") from None
    logged = run.data.params
    charged = {k.removeprefix("plan.").removesuffix(".sigma") for k in logged
               if k.startswith("plan.") and k.endswith(".sigma")}
    if missing := sorted(charged - {r.name for r in plan.releases}):
        # A release left out of the file would recompose to a smaller epsilon.
        raise ReleaseError(f"{out_dir / 'privacy_plan.json'} is not the plan run "
                           f"{source_run} was charged with: it lacks the releases {missing}")
    for r in plan.releases:
        key = f"plan.{r.name}.sigma"
        if key not in logged or not math.isclose(float(logged[key]), r.sigma, rel_tol=1e-9):
            raise ReleaseError(
                f"{out_dir / 'privacy_plan.json'} is not the plan run {source_run} was "
                f"charged with (release {r.name!r}: sigma {r.sigma!r} here, "
                f"{logged.get(key)!r} recorded)")
    tags, metrics = run.data.tags, run.data.metrics
    for flag, value in (("private", plan.private), ("noise_seeded", plan.noise_seeded)):
        if tags.get(f"{TAG_PREFIX}{flag}") != str(value).lower():
            raise ReleaseError(f"the run {source_run} recorded {TAG_PREFIX}{flag}="
                               f"{tags.get(f'{TAG_PREFIX}{flag}')!r}, its plan says "
                               f"{str(value).lower()!r}")
    values = {"epsilon": plan.epsilon_pld, "delta": plan.delta, "private": plan.private,
              "noise_seeded": plan.noise_seeded,
              "accuracy": metrics.get("accuracy"),
              "frechet_distance_to_test": metrics.get("frechet_distance_to_test")}
    return _candidate_values(values)


def release_digest(mixture: Path, synthetic: Path) -> str:
    """sha256 over the mixture's files and the synthetic set's manifest (its shards'
    sha256s): one value per release, the same for the same run promoted twice."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(mixture).rglob("*") if p.is_file()):
        h.update(path.relative_to(mixture).as_posix().encode() + b"\0")
        h.update(_sha256(path).encode())
    h.update((Path(synthetic) / "manifest.json").read_bytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _registered_with_digest(client, name: str, digest: str) -> str | None:
    """The version of ``name`` registered for the release ``digest``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = sorted(int(v.version) for v in versions
                    if v.tags.get(TAG_RELEASE_DIGEST) == digest)
    return str(found[0]) if found else None


#: A dpsynth wheel built or shipped for this process's dpsynth (see :func:`dpsynth_wheel`).
WHEEL_ENV = "DPSYNTH_WHEEL"


#: Wheels built by this process, by source tree (built once: pip takes seconds).
_BUILT_WHEELS: dict[Path, Path] = {}


def dpsynth_wheel() -> Path:
    """The wheel of the dpsynth that is running, logged with every registered model so
    that ``mlflow models serve`` installs this exact build, not whatever an index calls
    ``dpsynth``. ``$DPSYNTH_WHEEL`` (the images set it to the wheel they installed), else
    one built from the source tree of an editable install. ``$DPSYNTH_WHEEL`` may name the
    wheel or the folder that holds it. Raises :class:`ReleaseError`
    when neither exists (register nothing rather than a model that cannot be served)."""
    import importlib.metadata as md
    import subprocess
    import sys

    shipped = os.environ.get(WHEEL_ENV)
    if shipped:
        # The wheel, or the folder holding it (the images keep it in /opt/dpsynth/dist).
        found = sorted(Path(shipped).glob("dpsynth-*.whl")) if Path(shipped).is_dir() \
            else [Path(shipped)] if Path(shipped).is_file() else []
        if len(found) != 1:
            raise ReleaseError(f"${WHEEL_ENV} names {shipped}, which is not one dpsynth "
                               f"wheel (found {len(found)})")
        return found[0]
    direct = md.distribution("dpsynth").read_text("direct_url.json") or "{}"
    url = json.loads(direct).get("url", "")
    source = Path(url.removeprefix("file://")) if url.startswith("file://") else None
    if source is None or not (source / "pyproject.toml").is_file():
        raise ReleaseError(f"no dpsynth wheel to log with the model: set ${WHEEL_ENV} to "
                           "the wheel this dpsynth was installed from")
    if source in _BUILT_WHEELS and _BUILT_WHEELS[source].is_file():
        return _BUILT_WHEELS[source]
    workdir = Path(tempfile.mkdtemp(prefix="dpsynth-wheel-"))
    atexit.register(shutil.rmtree, workdir, True)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(workdir), str(source)],
        capture_output=True, text=True, timeout=300)
    wheels = sorted(workdir.glob("dpsynth-*.whl"))
    if built.returncode or not wheels:
        raise ReleaseError(f"building the dpsynth wheel from {source} failed: "
                           f"{(built.stderr or built.stdout).strip()[-500:]}")
    _BUILT_WHEELS[source] = wheels[0]
    return wheels[0]


def model_requirements(wheel: Path) -> list[str]:
    """The registered model's pip requirements: this dpsynth build (the wheel, shipped in
    the model's artifacts and named by its path there), and the exact versions of what
    the pyfunc itself imports."""
    import importlib.metadata as md

    return [f"artifacts/{wheel.name}",
            *(f"{dist}=={md.version(dist)}"
              for dist in ("mlflow", "numpy", "pandas", "scikit-learn"))]


def _source(uri: str):
    """A dataset source for an artifact URI: MLflow's own resolver where it has one (a
    local path, s3://, ...), else the URI kept as an opaque location (``mlflow-artifacts:``
    has no resolver)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    try:
        return resolve_dataset_source(uri)
    except Exception:  # noqa: BLE001 - no resolver for this scheme
        return HTTPDatasetSource(uri)


def promote(out_dir: Path, *, gates: Gates = Gates(),
            tracking_uri: str | None = None) -> RegisteredRelease:
    """Register the run in ``out_dir`` as a new version of ``dpsynth-<dataset_id>`` and
    promote it through the gates. On a failed gate the version stays registered (tag
    ``dpsynth.gate``) and :class:`GateFailedError` is raised; ``production`` is unchanged.
    """
    dataset_id, version = register(out_dir, tracking_uri=tracking_uri)
    return promote_version(dataset_id, version, gates=gates, tracking_uri=tracking_uri)


def promote_artifacts(*, mixture: Path, synthetic: Path, metrics: Path, privacy_plan: Path,
                      config: Path, decoded: Path | None = None, source_run_id: str = "",
                      gates: Gates = Gates(), tracking_uri: str | None = None) -> RegisteredRelease:
    """:func:`promote` for separate step outputs (a pipeline's artifacts) instead of a run's
    ``--out``: they are staged, as links or copies, in the layout :func:`register` reads.
    The dataset id is the config's ledger id. Raises :class:`GateFailedError` like
    :func:`promote`."""
    from dpsynth.config import load_config

    dataset_id = load_config(Path(config)).data.ledger_id()
    with tempfile.TemporaryDirectory(prefix="dpsynth-release-") as tmp:
        stage = Path(tmp)
        shutil.copytree(mixture, stage / "mixture")
        shutil.copytree(synthetic, stage / "synthetic")
        shutil.copy2(metrics, stage / "metrics.json")
        shutil.copy2(privacy_plan, stage / "privacy_plan.json")
        shutil.copy2(config, stage / "config.yaml")
        if decoded is not None and (Path(decoded) / "grid.png").is_file():
            (stage / "decoded").mkdir()
            shutil.copy2(Path(decoded) / "grid.png", stage / "decoded" / "grid.png")
        (stage / "run.json").write_text(json.dumps(
            {"run_id": source_run_id or None, "status": "finished",
             "budget": {"dataset_id": dataset_id}}))
        return promote(stage, gates=gates, tracking_uri=tracking_uri)


# ------------------------------------------------------------------------------ rollback
def _may_be_production(mv) -> bool:
    """Whether a version may hold ``production`` or ``previous``: it passed the gates, or
    an operator forced it with a recorded reason."""
    return mv.tags.get(TAG_GATE) == GATE_PASSED or bool(mv.tags.get(TAG_FORCED))


@_keeps_tracking_globals
def rollback(dataset_id: str, *, to_version: str | None = None,
             tracking_uri: str | None = None, force_reason: str | None = None) -> RegisteredRelease:
    """Move ``production`` back to the version it replaced (``to_version`` to choose one).
    The gates are not run again, but the target must have passed them when it was
    promoted: a version tagged ``dpsynth.gate = failed: ...`` (or never gated) is refused
    unless ``force_reason`` says why, which is recorded on the version
    (``dpsynth.forced_production``). ``previous`` then points at the version the target
    itself replaced (or is removed)."""
    if force_reason is not None and not force_reason.strip():
        raise ReleaseError("--force needs a reason (--reason TEXT): it is recorded on the "
                           "version")
    client = _client(tracking_uri)
    name = model_name(dataset_id)
    current = _alias_version(client, name, PRODUCTION)
    if current is None:
        raise ReleaseError(f"{name} has no '{PRODUCTION}' version to roll back")
    target = to_version or current.tags.get(TAG_PREVIOUS)
    if target is None:
        prev = _alias_version(client, name, PREVIOUS)
        target = prev.version if prev else None
    if target is None:
        raise ReleaseError(f"{name}@{PRODUCTION} (version {current.version}) replaced no "
                           "earlier version: nothing to roll back to")
    target_mv = client.get_model_version(name, str(target))
    if not _may_be_production(target_mv):
        gate = target_mv.tags.get(TAG_GATE) or "never gated"
        if force_reason is None:
            raise ReleaseError(
                f"version {target_mv.version} of {name} did not pass the promotion gates "
                f"({TAG_GATE} = {gate!r}): it cannot become '{PRODUCTION}'. Promote a "
                "version that passes, or roll back with --force --reason TEXT (recorded "
                "on the version)")
        client.set_model_version_tag(name, target_mv.version, TAG_FORCED,
                                     f"{force_reason.strip()} (gate: {gate})")
        target_mv = client.get_model_version(name, target_mv.version)
    client.set_registered_model_alias(name, PRODUCTION, target_mv.version)
    client.set_model_version_tag(name, current.version, f"{TAG_PREFIX}rolled_back", "true")
    before = target_mv.tags.get(TAG_PREVIOUS)
    if before and _may_be_production(client.get_model_version(name, before)):
        client.set_registered_model_alias(name, PREVIOUS, before)
    elif _alias_version(client, name, PREVIOUS) is not None:
        client.delete_registered_model_alias(name, PREVIOUS)
    return _release(client, name, target_mv.version, dataset_id, True)


# ------------------------------------------------------------------------------ fetch
def _prepare_out(out: Path) -> None:
    from dpsynth.outputs import remove_embedding_set

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReleaseError(f"--out {out} is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / RELEASE_FILE).is_file():
        raise ReleaseError(f"--out {out} is not empty and holds no earlier fetch or "
                           f"resample ({RELEASE_FILE}); choose an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)
    remove_embedding_set(out / "synthetic")
    if (out / "mixture").is_dir():
        for file in ("params.json", "arrays.npz", "embedding_info.json"):
            (out / "mixture" / file).unlink(missing_ok=True)


@_keeps_tracking_globals
def fetch(dataset_id: str, out: Path, *, alias: str = PRODUCTION,
          tracking_uri: str | None = None, with_mixture: bool = False) -> RegisteredRelease:
    """Download the ``alias`` version's synthetic EmbeddingSet to ``out/synthetic`` with its
    metadata (``metrics.json``, ``privacy_plan.json``, ``release.json``)."""
    from dpsynth.data.store import EmbeddingSet

    client = _client(tracking_uri)
    name = model_name(dataset_id)
    mv = _alias_version(client, name, alias)
    if mv is None:
        raise ReleaseError(f"{name} has no version with alias '{alias}'")
    release = _release(client, name, mv.version, dataset_id, True)
    out = Path(out)
    _prepare_out(out)
    with tempfile.TemporaryDirectory(prefix="dpsynth-fetch-") as tmp:
        wanted = ["synthetic", "metrics.json", "privacy_plan.json"]
        if with_mixture:
            wanted.append("mixture")
        listed = {a.path for a in client.list_artifacts(release.run_id)}
        for path in wanted:
            if path in listed:
                client.download_artifacts(release.run_id, path, tmp)
        for path in wanted:
            src = Path(tmp) / path
            if src.is_dir():
                shutil.copytree(src, out / path, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, out / path)
    EmbeddingSet.open(out / "synthetic")  # verify the shards against the manifest
    (out / RELEASE_FILE).write_text(json.dumps(
        {**release.to_dict(), "alias": alias, "model_uri": f"models:/{name}@{alias}"},
        indent=2))
    return release


# ------------------------------------------------------------------------------ resample
@_keeps_tracking_globals
def resample(dataset_id: str, n: int, out: Path, *, alias: str = PRODUCTION,
             class_balance: str = DEFAULT_CLASS_BALANCE, random_state: int | None = None,
             tracking_uri: str | None = None, register_version: bool = True,
             promote_gates: Gates | None = None) -> RegisteredRelease | None:
    """Resample-only refresh: ``n`` new records from the ``alias`` version's mixture,
    written to ``out/synthetic`` and (``register_version``) registered as a new version
    tagged ``dpsynth.resample_of`` = the source version; with ``promote_gates`` it is then
    promoted through them.

    Post-processing of a DP release: the mixture is read from MLflow, no private record is
    read, no budget is charged and the ledger is not touched; the privacy guarantee is the
    source version's. Metrics are the source version's (carried over, marked so).
    """
    from typing import get_args

    from dpsynth import steps
    from dpsynth.config import SynthesizeConfig
    from dpsynth.gmm.sampling import MAX_SAMPLE_ROWS

    # Checked before the registry is asked anything or --out touched.
    balances = get_args(SynthesizeConfig.model_fields["class_balance"].annotation)
    if class_balance not in balances:
        raise ReleaseError(f"class balance {class_balance!r} is not one of {list(balances)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLE_ROWS:
        raise ReleaseError(f"n must be an integer in [1, {MAX_SAMPLE_ROWS:,}], got {n!r}")
    if random_state is not None and (isinstance(random_state, bool) or
                                     not isinstance(random_state, int) or random_state < 0):
        raise ReleaseError(f"random_state must be an integer >= 0, got {random_state!r}")
    release = fetch(dataset_id, out, alias=alias, tracking_uri=tracking_uri,
                    with_mixture=True)
    out = Path(out)
    if not (out / "mixture" / "params.json").is_file():
        raise ReleaseError(f"version {release.version} carries no mixture to resample")
    seed = random_state if random_state is not None else int(
        np.random.default_rng().integers(0, 2**31 - 1))
    from dpsynth.outputs import remove_embedding_set

    remove_embedding_set(out / "synthetic")
    steps.synthesize(out / "mixture", out / "synthetic", n=int(n),
                     class_balance=class_balance, random_state=seed)
    metrics_file = out / "metrics.json"
    metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
    metrics.update({"n_synthetic": int(n), "metrics_from_version": release.version,
                    "resample_of_version": release.version})
    metrics_file.write_text(json.dumps(metrics, indent=2))
    (out / RELEASE_FILE).write_text(json.dumps(
        {"dataset_id": dataset_id, "resample_of": f"{release.model_name}/{release.version}",
         "n": int(n), "class_balance": class_balance, "random_state": seed,
         "note": "post-processing of a DP release: no privacy budget spent, no private "
                 "data read"}, indent=2))
    if not register_version:
        return None
    _, version = register(out, tracking_uri=tracking_uri, extra_tags={
        TAG_KIND: "resample", TAG_RESAMPLE_OF: release.version,
        f"{TAG_PREFIX}metrics_from_version": release.version},
        recorded={k: v for k, v in release.tags.items()
                  if k in {f"{TAG_PREFIX}{m}" for m in METRIC_TAGS}})
    if promote_gates is not None:
        return promote_version(dataset_id, version, gates=promote_gates,
                               tracking_uri=tracking_uri)
    client = _client(tracking_uri)
    return _release(client, model_name(dataset_id), version, dataset_id, False)
