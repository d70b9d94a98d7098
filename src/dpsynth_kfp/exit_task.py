"""What the pipeline's exit handler does (the ``finalize`` component in
:mod:`dpsynth_kfp.components` calls :func:`run`): it runs after every task of the run,
failed or not (``dsl.ExitHandler``), and when the run did not succeed

- marks the MLflow run that plan opened FAILED (a failed run must not stay RUNNING) and
  tags it with the step that failed (``dpsynth.failed_step``) and the Kubeflow state;
- deletes the run's private embeddings (every ``embeddings`` artifact, the encode tasks'
  outputs) from the pipeline root, so a failed run leaves no private-derived data behind.

The budget stays charged: plan charged it before any private data was read, and a
failed run keeps its charge (docs/pipeline.md). The run's folder in the pipeline root is
found from the exit task's own output artifact, whose URI lies in it; the MLflow run by
the tag plan sets (:data:`KFP_RUN_TAG`): kfp lets an exit task depend on no other task, so
it takes only pipeline parameters and the run id.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dpsynth.step_graph import STEPS

#: The MLflow tag naming the step that failed.
FAILED_STEP_TAG = "dpsynth.failed_step"
#: The MLflow tag plan sets to the Kubeflow run's id (how the exit task finds the run).
KFP_RUN_TAG = "dpsynth.kfp_run_id"
#: The encode tasks' output: the private embeddings.
PRIVATE_OUTPUT = "embeddings"


def _local(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" not in uri:
        return Path(uri)
    return None


def run_root(own_uri: str, kfp_run_id: str = "") -> str:
    """The run's folder in the pipeline root, from the URI of one of the exit task's own
    outputs (``<root>/.../<run>/<task>/[<execution>/]<output>``): up to the segment that is
    the Kubeflow run id, else two levels up (kfp.local's ``<run>/<task>/<output>``)."""
    uri = own_uri.rstrip("/")
    if kfp_run_id and f"/{kfp_run_id}/" in uri:
        return uri[:uri.index(f"/{kfp_run_id}/") + len(kfp_run_id) + 1]
    return uri.rsplit("/", 2)[0]


def store_uri(uri: str) -> str:
    """``uri`` as MLflow's artifact repositories name it: KFP writes its default pipeline
    root as ``minio://bucket/key``, which is S3's protocol at another endpoint
    (``MLFLOW_S3_ENDPOINT_URL``, set on the exit task from the cluster settings)."""
    return "s3://" + uri.removeprefix("minio://") if uri.startswith("minio://") else uri


def _repository(root: str):
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(store_uri(root))


def _walk(root: str) -> Iterable[str]:
    """Every path (relative, '/'-separated) under ``root``: a local folder, or any store
    MLflow's artifact repositories reach (minio:// and s3:// through boto3, gs://, ...)."""
    local = _local(root)
    if local is not None:
        if local.is_dir():
            yield from (p.relative_to(local).as_posix() for p in local.rglob("*"))
        return
    repo = _repository(root)
    todo = [None]
    while todo:
        for info in repo.list_artifacts(todo.pop()):
            yield info.path
            if info.is_dir:
                todo.append(info.path)


def failed_step(paths: Iterable[str], *, decode_enabled: bool) -> str:
    """The first step of the graph, in order, that wrote none of its outputs (the run's
    task folders are named after the steps, '_' as '-'); "unknown" if all did."""
    segments = {seg for p in paths for seg in p.split("/")}
    written = {p.rsplit("/", 1)[-1] for p in paths}
    for step in STEPS:
        if step.switch and not decode_enabled:
            continue
        task = step.name.replace("_", "-")
        ran = any(s == task or s.startswith(task + "-") for s in segments)
        if not ran or not set(step.outputs) & written:
            return step.name
    return "unknown"


def delete_private(root: str) -> list[str]:
    """Delete every ``embeddings`` artifact under the run's folder; the deleted paths."""
    found = sorted({p for p in _walk(root) if p.rsplit("/", 1)[-1] == PRIVATE_OUTPUT},
                   key=len)
    deleted: list[str] = []
    for rel in found:
        if any(rel.startswith(d + "/") for d in deleted):
            continue
        local = _local(root)
        if local is not None:
            target = local / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        else:
            _repository(root).delete_artifacts(rel)
        deleted.append(rel)
    return deleted


def find_run(tracking_uri: str | None, kfp_run_id: str) -> str | None:
    """The MLflow run that plan opened for the Kubeflow run (plan tags it with
    :data:`KFP_RUN_TAG`); None if plan never opened one (it failed before the charge)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'",
                              max_results=1) if ids and kfp_run_id else []
    return runs[0].info.run_id if runs else None


def mark_failed(tracking_uri: str | None, run_id: str, step: str, state: str) -> None:
    """Tag the MLflow run with the failed step and end it FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, FAILED_STEP_TAG, step)
    client.set_tag(run_id, "dpsynth.kfp_state", state)
    client.set_terminated(run_id, "FAILED")


def tracking_uri(config_yaml: str, mlflow_uri: str) -> str | None:
    """The store plan used: the mlflow_uri parameter, else the config's, else
    $MLFLOW_TRACKING_URI (None: MLflow reads the environment)."""
    import yaml

    config = yaml.safe_load(config_yaml or "") or {}
    return mlflow_uri or (config.get("tracking") or {}).get("uri") or \
        os.environ.get("MLFLOW_TRACKING_URI") or None


def run(*, status: Any, kfp_run_id: str, config_yaml: str, mlflow_uri: str, decode: bool,
        cleanup: Any) -> str:
    """Returns the failed step ("" when the run succeeded)."""
    state = status["state"] if isinstance(status, dict) else status.state
    if state == "SUCCEEDED":
        Path(cleanup.path).write_text("succeeded: nothing to do\n")
        return ""
    root = run_root(cleanup.uri, kfp_run_id)
    step = failed_step(list(_walk(root)), decode_enabled=decode)
    deleted = delete_private(root)
    uri = tracking_uri(config_yaml, mlflow_uri)
    mlflow_run_id = find_run(uri, kfp_run_id)
    if mlflow_run_id:
        mark_failed(uri, mlflow_run_id, step, state)
    Path(cleanup.path).write_text(
        f"state: {state}\nfailed step: {step}\nMLflow run: {mlflow_run_id or 'none'}"
        f"{' (FAILED)' if mlflow_run_id else ''}\ndeleted private embeddings:\n"
        + "".join(f"- {d}\n" for d in deleted))
    print(f"run {state}: step {step} failed; MLflow run {mlflow_run_id} marked FAILED; "
          f"deleted {len(deleted)} private embedding artifacts under {root}")
    return step
