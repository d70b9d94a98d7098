"""Production refresh (`dpsynth promote` / `fetch` / `rollback` / `resample`) against a real
``mlflow server`` whose backend store is a throwaway PostgreSQL cluster.

One PostgreSQL, one MLflow server and one quick digits run per module. The tests run in
file order and build on each other's registry state: promote (version 1, production),
failing gates (versions registered, alias unchanged), fetch, resample-only refresh
promoted through the gates, rollback to version 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer
from pg_server import started_postgres
from typer.testing import CliRunner

from dpsynth import runner
from dpsynth.cli import app
from dpsynth.config import load_config
from dpsynth.data.store import EmbeddingSet
from dpsynth.privacy.ledger_store import LEDGER_URI_ENV, open_ledger
from dpsynth.promote import PREVIOUS, PRODUCTION, TAG_GATE, TAG_RESAMPLE_OF, model_name

DATASET = f"digits-promote/{uuid.uuid4().hex[:6]}"  # sanitised: '/' becomes '-'
NAME = model_name(DATASET)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = started_postgres()
    srv = None
    try:
        backend = pg.uri().replace("postgresql://", "postgresql+psycopg://", 1)
        srv = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), backend).start()
        yield srv
    finally:
        if srv is not None:
            srv.stop()
        pg.stop()


@pytest.fixture(scope="module")
def ledger_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('promote-ledger') / 'ledger.sqlite'}"


@pytest.fixture(scope="module")
def run_out(server, ledger_uri, tmp_path_factory):
    """One quick, private digits run tracked on the server (charged to ``ledger_uri``)."""
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    config = load_config("configs/digits-quick.yaml", [
        f"encoder.cache_dir={cache}", "evaluate.steps=40", "synthesize.n=2000",
        f"data.dataset_id={DATASET}", f"tracking.uri={server.uri}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LEDGER_URI_ENV, ledger_uri)
        runner.run(config, out, progress=False, echo=lambda _: None)
    return out


def _candidate(run_out, tmp_path, seed: int):
    """Another release of the same mixture: ``run_out`` with its synthetic set drawn again
    (post-processing), so its release digest differs from the run's."""
    import shutil

    from dpsynth import steps
    from dpsynth.outputs import remove_embedding_set

    out = tmp_path / f"candidate-{seed}"
    shutil.copytree(run_out, out)
    remove_embedding_set(out / "synthetic")
    steps.synthesize(out / "mixture", out / "synthetic", n=2000, random_state=seed)
    return out


def _versions(server) -> list[int]:
    return sorted(int(v.version) for v in
                  MlflowClient(server.uri).search_model_versions(f"name = '{NAME}'"))


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _alias(server, alias: str = PRODUCTION) -> str:
    return str(MlflowClient(server.uri).get_model_version_by_alias(NAME, alias).version)


def test_promote_sets_production_and_the_pyfunc_samples(server, run_out, monkeypatch):
    result = _cli("promote", "--out", run_out, "--tracking-uri", server.uri)
    assert result.exit_code == 0, result.output
    assert _alias(server) == "1"
    client = MlflowClient(server.uri)
    mv = client.get_model_version(NAME, "1")
    assert mv.tags[TAG_GATE] == "passed" and mv.tags["dpsynth.private"] == "true"
    run = client.get_run(mv.tags["dpsynth.release_run_id"])
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert "synthetic" in contexts and any("private-source" in c for c in contexts)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"synthetic", "mixture", "metrics.json", "privacy_plan.json", "decoded"} <= top

    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{PRODUCTION}")
    samples = model.predict(pd.DataFrame({"n": [50], "random_state": [3]}))
    assert samples.shape == (50, 65)  # label + 64 pixel dimensions
    assert set(samples["label"]) <= set(range(10))
    balanced = model.predict(pd.DataFrame({"n": [40], "class_balance": ["balanced"]}))
    assert np.bincount(balanced["label"], minlength=10).tolist() == [4] * 10


def test_the_model_requires_the_exact_dpsynth_build_it_ships(server, run_out, tmp_path,
                                                             monkeypatch):
    """The registered model names this dpsynth's wheel, shipped in its artifacts (an
    index without dpsynth can still serve it), by path, and records the wheel's sha256."""
    import hashlib

    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    mv = MlflowClient(server.uri).get_model_version(NAME, "1")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1",
                                                     dst_path=str(tmp_path)))
    requirements = (local / "requirements.txt").read_text().split()
    (wheel_line,) = [r for r in requirements if "dpsynth" in r]
    assert wheel_line.startswith("artifacts/dpsynth-") and wheel_line.endswith(".whl")
    wheel = local / wheel_line
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == mv.tags["dpsynth.wheel_sha256"]
    assert not [r for r in requirements if r in ("dpsynth", "mlflow", "numpy")]  # pinned
    # The requirement resolves from the model folder alone, with no package index.
    resolved = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
         "--report", "-", "--quiet", wheel_line], cwd=local, capture_output=True, text=True,
        timeout=300)
    assert resolved.returncode == 0, resolved.stderr
    (item,) = json.loads(resolved.stdout)["install"]
    assert item["metadata"]["name"] == "dpsynth"


def test_promoting_the_same_run_again_returns_its_version(server, run_out):
    """A retried or repeated promote of one run registers nothing new."""
    before = _versions(server)
    again = _cli("promote", "--out", run_out, "--tracking-uri", server.uri)
    assert again.exit_code == 0, again.output
    assert "version 1" in again.output and _versions(server) == before


@pytest.mark.parametrize(("option", "gate"), [
    (("--max-epsilon", "1"), "max_epsilon"),
    (("--min-accuracy", "0.99"), "min_accuracy"),
    (("--accuracy-tolerance", "-0.5"), "accuracy_vs_production"),
    (("--frechet-tolerance", "-1"), "frechet_vs_production"),
])
def test_a_failed_gate_leaves_production_where_it_was(server, run_out, option, gate,
                                                      tmp_path):
    before = _alias(server)
    candidate = _candidate(run_out, tmp_path, seed=len(_versions(server)))
    result = _cli("promote", "--out", candidate, "--tracking-uri", server.uri, *option)
    assert result.exit_code == 2, result.output
    assert f"gate '{gate}' failed" in result.output
    assert _alias(server) == before
    client = MlflowClient(server.uri)
    newest = max(_versions(server))
    assert client.get_model_version(NAME, str(newest)).tags[TAG_GATE] == f"failed: {gate}"
    # The failure is deterministic: promoting the same candidate again registers nothing.
    again = _cli("promote", "--out", candidate, "--tracking-uri", server.uri, *option)
    assert again.exit_code == 2 and f"gate '{gate}' failed" in again.output
    assert max(_versions(server)) == newest


def test_the_gates_read_the_runs_record_not_its_editable_files(server, run_out, tmp_path):
    """metrics.json and privacy_plan.json are files a user can edit: the gates read the
    epsilon recomposed from the plan the run was charged with, and its logged metrics."""
    before = _versions(server)
    edited = _candidate(run_out, tmp_path, seed=301)
    metrics = json.loads((edited / "metrics.json").read_text())
    assert metrics["epsilon"] > 1  # digits-quick runs at eps = 8
    metrics.update(epsilon=0.5, accuracy=0.99)
    (edited / "metrics.json").write_text(json.dumps(metrics))
    result = _cli("promote", "--out", edited, "--tracking-uri", server.uri,
                  "--max-epsilon", "1")
    assert result.exit_code == 2 and "gate 'max_epsilon' failed" in result.output
    newest = MlflowClient(server.uri).get_model_version(NAME, str(max(_versions(server))))
    assert float(newest.tags["dpsynth.epsilon"]) > 1
    assert float(newest.tags["dpsynth.accuracy"]) < 0.99
    # A plan edited to claim less epsilon is not the plan the run was charged with.
    plan_edit = _candidate(run_out, tmp_path, seed=302)
    plan = json.loads((plan_edit / "privacy_plan.json").read_text())
    for r in plan["releases"]:
        r["noise_multiplier"] *= 10
        r["sigma"] *= 10
    (plan_edit / "privacy_plan.json").write_text(json.dumps(plan))
    refused = _cli("promote", "--out", plan_edit, "--tracking-uri", server.uri)
    assert refused.exit_code == 2 and "privacy_plan.json" in refused.output
    # ... nor one with a release left out, every number made consistent again: it
    # recomposes to less epsilon and passes the plan's own accounting check.
    from dpsynth.privacy.plan import PrivacyPlan, _account

    dropped = _candidate(run_out, tmp_path, seed=304)
    plan = json.loads((dropped / "privacy_plan.json").read_text())
    full = PrivacyPlan.from_dict(plan)
    eps_pld, eps_rdp = _account(full.releases[1:], full.delta)
    assert eps_pld < full.epsilon_pld
    plan["releases"] = plan["releases"][1:]
    plan.update(target_epsilon=eps_pld, epsilon=eps_pld, epsilon_rdp=eps_rdp)
    (dropped / "privacy_plan.json").write_text(json.dumps(plan))
    refused = _cli("promote", "--out", dropped, "--tracking-uri", server.uri)
    assert refused.exit_code == 2 and "it lacks the releases" in refused.output
    # A failed run is never released.
    failed = _candidate(run_out, tmp_path, seed=303)
    run = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps({**run, "status": "failed"}))
    refused = _cli("promote", "--out", failed, "--tracking-uri", server.uri)
    assert refused.exit_code == 2 and "status is 'failed'" in refused.output
    assert len(_versions(server)) == len(before) + 1  # only the gated candidate


def test_a_seeded_run_edited_to_say_private_is_refused(server, ledger_uri, tmp_path):
    out = tmp_path / "seeded"
    config = load_config("configs/digits-quick.yaml", [
        f"encoder.cache_dir={tmp_path / 'cache'}", "evaluate.steps=20", "synthesize.n=500",
        "privacy.noise_seed=4", f"data.dataset_id={DATASET}-seeded",
        f"tracking.uri={server.uri}"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LEDGER_URI_ENV, ledger_uri)
        runner.run(config, out, progress=False, echo=lambda _: None)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.update(private=True, noise_seeded=False)
    (out / "metrics.json").write_text(json.dumps(metrics))
    result = _cli("promote", "--out", out, "--tracking-uri", server.uri)
    assert result.exit_code == 2 and "gate 'private' failed" in result.output
    assert "seeded" in result.output


def test_promote_by_version_runs_the_gates_too(server, run_out):
    client = MlflowClient(server.uri)
    failed = max(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    result = _cli("promote", "--dataset-id", DATASET, "--version", failed,
                  "--tracking-uri", server.uri, "--max-delta", "1e-9")
    assert result.exit_code == 2 and "gate 'max_delta' failed" in result.output
    assert _alias(server) == "1"


def test_fetch_downloads_the_production_set(server, run_out, tmp_path):
    out = tmp_path / "fetched"
    result = _cli("fetch", "--dataset-id", DATASET, "--out", out, "--tracking-uri",
                  server.uri)
    assert result.exit_code == 0, result.output
    fetched, original = EmbeddingSet.open(out / "synthetic"), EmbeddingSet.open(
        run_out / "synthetic")
    assert fetched.count == original.count == 2000
    np.testing.assert_array_equal(fetched.load()[0], original.load()[0])
    release = json.loads((out / "release.json").read_text())
    assert release["version"] == "1" and release["model_uri"] == f"models:/{NAME}@production"
    published = json.loads((out / "metrics.json").read_text())
    assert published["private"] is True
    # The run's non-private baseline (no noise, not covered) is not published.
    assert json.loads((run_out / "metrics.json").read_text())["nonprivate_accuracy"] is not None
    assert not [k for k in published if k.startswith("nonprivate_")]
    assert (out / "privacy_plan.json").is_file()
    # A second fetch into the same folder replaces it; someone else's folder is refused.
    assert _cli("fetch", "--dataset-id", DATASET, "--out", out, "--tracking-uri",
                server.uri).exit_code == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    refused = _cli("fetch", "--dataset-id", DATASET, "--out", tmp_path / "other",
                   "--tracking-uri", server.uri)
    assert refused.exit_code == 2 and "not empty" in refused.output


def test_resample_only_refresh_spends_no_budget_and_promotes(server, run_out, ledger_uri,
                                                            tmp_path, monkeypatch):
    monkeypatch.setenv(LEDGER_URI_ENV, ledger_uri)
    with open_ledger() as ledger:
        charges_before = ledger.entries(DATASET)
    assert len(charges_before) == 1  # the run's own charge
    out = tmp_path / "resampled"
    result = _cli("resample", "--dataset-id", DATASET, "--n", "300", "--out", out,
                  "--promote", "--tracking-uri", server.uri)
    assert result.exit_code == 0, result.output
    with open_ledger() as ledger:
        assert ledger.entries(DATASET) == charges_before
    synthetic = EmbeddingSet.open(out / "synthetic")
    assert synthetic.count == 300 and synthetic.manifest["provenance"]["private"] is True
    new = _alias(server)
    assert new != "1" and _alias(server, PREVIOUS) == "1"
    mv = MlflowClient(server.uri).get_model_version(NAME, new)
    assert mv.tags[TAG_RESAMPLE_OF] == "1" and mv.tags["dpsynth.kind"] == "resample"


def test_rollback_moves_production_back(server, run_out):
    current = _alias(server)
    assert current != "1"
    result = _cli("rollback", "--dataset-id", DATASET, "--tracking-uri", server.uri)
    assert result.exit_code == 0, result.output
    assert _alias(server) == "1"
    client = MlflowClient(server.uri)
    assert client.get_model_version(NAME, current).tags["dpsynth.rolled_back"] == "true"
    with pytest.raises(Exception, match="(?i)alias|not found"):
        client.get_model_version_by_alias(NAME, PREVIOUS)
    # Version 1 replaced nothing: a second rollback is refused, production unchanged.
    again = _cli("rollback", "--dataset-id", DATASET, "--tracking-uri", server.uri)
    assert again.exit_code == 2 and "nothing to roll back" in again.output
    assert _alias(server) == "1"


def test_pipeline_promote_task_publishes_step_artifacts(server, run_out, tmp_path):
    """What the pipeline's promote task calls: separate step outputs instead of --out."""
    from dpsynth.promote import promote_artifacts

    config = tmp_path / "config.yaml"
    config.write_text((run_out / "config.yaml").read_text())
    candidate = _candidate(run_out, tmp_path, seed=101)
    # plan's output in the pipeline: the MLflow run it opened (the gates read its record)
    source = json.loads((run_out / "run.json").read_text())["run_id"]

    def task():
        return promote_artifacts(
            mixture=candidate / "mixture", synthetic=candidate / "synthetic",
            metrics=run_out / "evaluation" / "metrics.json",
            privacy_plan=run_out / "privacy_plan.json", config=config,
            decoded=run_out / "decoded", source_run_id=source, tracking_uri=server.uri)

    release = task()
    assert release.model_name == NAME and _alias(server) == release.version
    assert release.previous_production == "1" and _alias(server, PREVIOUS) == "1"
    assert release.tags["dpsynth.source_run_id"] == source
    # The task run again (a retry) returns the same version.
    before = _versions(server)
    assert task().version == release.version and _versions(server) == before


def test_rollback_refuses_a_gate_failed_version_unless_forced_with_a_reason(server):
    client = MlflowClient(server.uri)
    failed = [v for v in _versions(server) if client.get_model_version(
        NAME, str(v)).tags[TAG_GATE].startswith("failed")]
    target = str(failed[-1])
    before = _alias(server)
    refused = _cli("rollback", "--dataset-id", DATASET, "--to-version", target,
                   "--tracking-uri", server.uri)
    assert refused.exit_code == 2 and "did not pass the promotion gates" in refused.output
    assert _alias(server) == before
    no_reason = _cli("rollback", "--dataset-id", DATASET, "--to-version", target,
                     "--tracking-uri", server.uri, "--force")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    assert _alias(server) == before
    forced = _cli("rollback", "--dataset-id", DATASET, "--to-version", target,
                  "--tracking-uri", server.uri, "--force", "--reason", "incident 42")
    assert forced.exit_code == 0, forced.output
    assert _alias(server) == target
    tag = client.get_model_version(NAME, target).tags["dpsynth.forced_production"]
    assert tag.startswith("incident 42") and "failed" in tag
    # Back to a gated version for the tests below.
    assert _cli("rollback", "--dataset-id", DATASET, "--to-version", before,
                "--tracking-uri", server.uri).exit_code == 0


def test_a_production_set_outside_the_gates_never_becomes_previous(server, run_out,
                                                                   tmp_path):
    """Someone moves the alias by hand to a gate-failed version; the next promote does not
    record it as 'previous' (so rollback cannot bring it back)."""
    client = MlflowClient(server.uri)
    gated = _alias(server)
    bad = _cli("promote", "--out", _candidate(run_out, tmp_path, seed=202),
               "--tracking-uri", server.uri, "--min-accuracy", "0.999")
    assert bad.exit_code == 2
    bad_version = str(max(_versions(server)))
    client.set_model_version_tag(NAME, bad_version, "dpsynth.previous_production", gated)
    client.set_registered_model_alias(NAME, PRODUCTION, bad_version)
    good = _cli("promote", "--out", _candidate(run_out, tmp_path, seed=203),
                "--tracking-uri", server.uri, "--accuracy-tolerance", "1")
    assert good.exit_code == 0, good.output
    new = _alias(server)
    assert new != bad_version and _alias(server, PREVIOUS) == gated
    assert client.get_model_version(NAME, new).tags["dpsynth.previous_production"] == gated


def test_pipeline_tasks_compile(tmp_path):
    from kfp import compiler

    from dpsynth_kfp.promote_task import promote, resample

    for component in (promote, resample):
        file = tmp_path / f"{component.name}.yaml"
        compiler.Compiler().compile(component, str(file))
        assert "dpsynth.promote" in file.read_text()


def test_a_release_call_leaves_the_callers_tracking_uri_alone(tmp_path, monkeypatch):
    """promote/fetch/... point MLflow's process-wide URI at their store while they work;
    afterwards the caller's own MLflow calls must go where they went before."""
    import mlflow

    from dpsynth import promote

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    with pytest.raises(promote.ReleaseError, match="no version with alias"):
        promote.fetch("nothing-here", tmp_path / "f",
                      tracking_uri=f"sqlite:///{tmp_path / 'registry.db'}")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert str(tmp_path) not in mlflow.get_tracking_uri()


def test_dataset_ids_that_differ_never_name_the_same_model():
    names = {model_name(i) for i in ("probe:a", "probe/a", "probe a", "probe-a",
                                     "probe--a", "probe/./a")}
    assert len(names) == 6
    assert model_name("probe-a") == "dpsynth-probe-a"  # a plain id is kept as it is
    hashed = model_name("probe/a")
    assert hashed.startswith("dpsynth-probe-a-") and len(hashed) == len("dpsynth-probe-a-") + 16
    # A plain id shaped like a rewritten one gets its own suffix, never that name.
    assert model_name(hashed.removeprefix("dpsynth-")) != hashed
