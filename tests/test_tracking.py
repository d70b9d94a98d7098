"""`dpsynth run` end to end with MLflow: a real server on 127.0.0.1 and the embedded store.

Covers what is logged (and that nothing private is), the budget ledger (its store is
tests/conftest.py's throwaway SQLite file; MLflow holds its mirror), non-private runs, and
what happens when the server is unreachable before or during a run. Concurrent charges are
tested on the store itself (test_ledger_store.py).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, free_port
from typer.testing import CliRunner

from dpsynth import runner, steps
from dpsynth.cli import app
from dpsynth.config import load_config
from dpsynth.preprocessing import bound_norms
from dpsynth.privacy.ledger import BudgetExceededError
from dpsynth.privacy.ledger_store import LedgerMirrorWarning
from dpsynth.tracking import (
    LEDGER_CHARGE_TAG,
    LEDGER_DATASET_TAG,
    LEDGER_ENTRY_TAG,
    Tracker,
    TrackingUnavailableError,
)

STEP_NAMES = {"plan", "encode", "dp_cluster", "fit_gmm", "synthesize", "decode", "evaluate"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


def _config(cache: Path, *extra: str):
    # A unique dataset id per test keeps the ledgers of tests sharing a server apart.
    return load_config("configs/digits-quick.yaml", [
        f"encoder.cache_dir={cache}", "evaluate.steps=40", "synthesize.n=2000",
        f"data.dataset_id=digits-{uuid.uuid4().hex[:8]}", *extra])


@pytest.fixture(scope="module")
def server_run(server, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = _config(cache, f"tracking.uri={server.uri}", "tracking.experiment=scan")
    result = runner.run(config, out, progress=False, echo=lambda _: None)
    return config, out, result


def test_run_logs_parent_and_nested_step_runs(server, server_run):
    config, out, result = server_run
    assert result.not_logged == [] and result.tracking_error is None
    client = MlflowClient(server.uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    params, metrics, tags = parent.data.params, parent.data.metrics, parent.data.tags
    assert params["config.privacy.epsilon"] == "8.0" and params["plan.delta"] == "1e-05"
    plan = json.loads((out / "privacy_plan.json").read_text())
    for release in plan["releases"]:
        assert float(params[f"plan.{release['name']}.sigma"]) == pytest.approx(release["sigma"])
    assert params["encoder"] == "pixels" and params["seed.model_random_state"] == "0"
    assert params["encoder_option.image_shape"] == "[8, 8]"  # the encoder's input, visible
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert tags["dpsynth.private"] == "true"
    assert tags[LEDGER_CHARGE_TAG] == result.budget.charge_id != ""  # the ledger's mirror
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    assert {r.info.run_name for r in children} == STEP_NAMES
    assert all(r.info.status == "FINISHED" for r in children)
    top = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"privacy_plan.json", "metrics.json", "config.yaml", "privacy_ledger.json"} <= top


def _download_everything(client: MlflowClient, run_ids: list[str], dst: Path) -> list[Path]:
    for i, run_id in enumerate(run_ids):
        client.download_artifacts(run_id, "", str(dst / str(i)))
    return [p for p in dst.rglob("*") if p.is_file()]


def _json_numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _json_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _json_numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


def test_logged_artifacts_hold_no_private_records_or_exact_statistics(server, server_run,
                                                                      tmp_path):
    """Download every artifact of the run and its step runs and look for the private data:
    raw training embeddings or images, exact class sums/means, exact counts."""
    config, _, result = server_run
    train = steps.encode(config, "train", progress=False)
    X, y = train.load()
    Xb = bound_norms(X, config.model.clip_norm, False).astype(np.float64)
    images, _ = steps.make_source(config.data, "train").read(0, len(y))
    classes = np.unique(y)
    exact_sums = np.stack([Xb[y == c].sum(0) for c in classes])
    exact_means = np.stack([Xb[y == c].mean(0) for c in classes])
    exact_counts = {int((y == c).sum()) for c in classes} | {len(y)}
    client = MlflowClient(server.uri)
    parent = client.get_run(result.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    files = _download_everything(client, [result.run_id] + [r.info.run_id for r in children],
                                 tmp_path)
    suffixes = {f.suffix for f in files}
    assert {".npz", ".json", ".png", ".html", ".yaml"} <= suffixes, suffixes
    arrays = []
    for f in files:
        if f.suffix == ".npz":
            with np.load(f, allow_pickle=False) as z:
                arrays += [z[k] for k in z.files]
        elif f.suffix == ".npy":
            arrays.append(np.load(f, allow_pickle=False))
        elif f.suffix == ".json":
            numbers = _json_numbers(json.loads(f.read_text()))
            leaked = [n for n in numbers if isinstance(n, int) and n in exact_counts]
            assert not leaked, f"{f.name} holds exact counts {leaked}"
    assert arrays, "expected the DP releases (npz) among the artifacts"
    train_rows = {row.tobytes() for row in Xb.astype(np.float32)}
    train_images = {img.tobytes() for img in images}
    for a in arrays:
        if a.dtype.kind == "f" and a.ndim == 2 and a.shape[1] == X.shape[1]:
            assert not any(r.astype(np.float32).tobytes() in train_rows for r in a)
            for exact in (exact_sums, exact_means):
                if a.shape == exact.shape:
                    assert not np.allclose(a, exact, rtol=1e-6, atol=1e-9)
        if a.dtype == np.uint8 and a.ndim == 3:
            assert not any(img.tobytes() in train_images for img in a)
    for value in parent.data.params.values():
        assert value not in {str(c) for c in exact_counts}


def test_ledger_is_shared_across_experiments_and_refuses_before_reading(
        server, cache, tmp_path, monkeypatch):
    dataset = f"digits-ledger-{uuid.uuid4().hex[:8]}"
    common = [f"tracking.uri={server.uri}", f"data.dataset_id={dataset}",
              "privacy.epsilon=4", "privacy.budget.epsilon=5.5", "privacy.budget.delta=1e-5"]
    first = runner.run(_config(cache, *common, "tracking.experiment=team-a"), tmp_path / "a",
                       progress=False, echo=lambda _: None)
    assert first.budget.ok and first.budget.spent == 0.0
    out_b = tmp_path / "b"
    out_b.mkdir()
    (out_b / "keep.txt").write_text("earlier output")

    def must_not_read(*args, **kwargs):
        raise AssertionError("private data was read although the budget was exceeded")

    monkeypatch.setattr(steps, "encode", must_not_read)
    with pytest.raises(BudgetExceededError) as info:
        # --overwrite: past the pre-flight's own refusal of a foreign non-empty --out.
        runner.run(_config(cache, *common, "tracking.experiment=team-b"), out_b,
                   progress=False, echo=lambda _: None, overwrite=True)
    msg = str(info.value)
    assert "spent eps = 4" in msg and "requests eps = 4" in msg and "limit eps = 5.5" in msg
    assert sorted(p.name for p in out_b.iterdir()) == ["keep.txt"]
    # A smaller request still fits: eps 4 and 1 compose to 4.19 < 5.5 (4 and 4: 5.99).
    monkeypatch.undo()
    third = runner.run(_config(cache, *common, "privacy.epsilon=1", "tracking.experiment=c"),
                       tmp_path / "c", progress=False, echo=lambda _: None)
    assert third.budget.previous_runs == 1 and 4 < third.budget.total < 5.5


def test_deleting_the_mirror_tag_neither_resets_the_budget_nor_goes_unnoticed(
        server, cache, tmp_path):
    """Anyone who can write to MLflow can delete a run's ledger tags: the budget still
    counts the run (the ledger store is the truth) and the next run reports the tampering."""
    dataset = f"digits-tamper-{uuid.uuid4().hex[:8]}"
    common = [f"tracking.uri={server.uri}", f"data.dataset_id={dataset}",
              "privacy.budget.epsilon=5.5", "privacy.budget.delta=1e-5",
              "tracking.experiment=tamper"]
    first = runner.charge_run(_config(cache, *common, "privacy.epsilon=4"), tmp_path / "a",
                              echo=lambda _: None)
    client = MlflowClient(server.uri)  # a plain client: no dpsynth involved
    client.delete_tag(first.run_id, LEDGER_ENTRY_TAG)
    client.delete_tag(first.run_id, LEDGER_DATASET_TAG)
    assert Tracker(server.uri, "tamper").open().ledger_entries(dataset) == []

    with pytest.raises(BudgetExceededError) as info:  # eps 4 twice: 5.99 > 5.5
        runner.charge_run(_config(cache, *common, "privacy.epsilon=4"), tmp_path / "b",
                          echo=lambda _: None)
    assert "spent eps = 4 over 1 earlier run(s)" in str(info.value)
    assert f"run {first.run_id}" in str(info.value) and "missing from the MLflow mirror" \
        in str(info.value)

    said: list[str] = []
    with pytest.warns(LedgerMirrorWarning, match=first.run_id):
        third = runner.charge_run(_config(cache, *common, "privacy.epsilon=1"),
                                  tmp_path / "c", echo=said.append)
    assert third.budget.previous_runs == 1 and 4 < third.budget.total < 5.5
    warning = [line for line in said if line.startswith("warning:")]
    assert len(warning) == 1 and "mirror_problems" in warning[0]
    written = json.loads((tmp_path / "c" / "privacy_ledger.json").read_text())
    assert len(written["mirror_problems"]) == 1 and first.run_id in written["mirror_problems"][0]
    assert written["ledger_uri"].startswith("sqlite:///")


def test_a_non_private_run_needs_a_dataset_marked_non_private(server, cache, tmp_path,
                                                              monkeypatch):
    dataset = f"digits-public-{uuid.uuid4().hex[:8]}"
    common = [f"tracking.uri={server.uri}", f"data.dataset_id={dataset}",
              "tracking.experiment=nonprivate"]
    monkeypatch.setattr(steps, "encode", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(BudgetExceededError, match="marks it for good") as info:
        runner.run(_config(cache, *common, "privacy.epsilon=inf"), tmp_path / "refused",
                   progress=False, echo=lambda _: None)
    assert "--set privacy.budget.epsilon=inf" in str(info.value)
    monkeypatch.undo()

    # The data owner marks it: the README's non-private command.
    marking = runner.run(_config(cache, *common, "privacy.epsilon=inf",
                                 "privacy.budget.epsilon=inf"), tmp_path / "marked",
                         progress=False, echo=lambda _: None)
    assert marking.metrics["private"] is False and marking.metrics["epsilon"] == "inf"
    assert (f"budget        : dataset {dataset!r} is marked non-private (since run "
            f"{marking.run_id}, ") in runner.summary(marking)
    assert "no lifetime budget applies" in runner.summary(marking)
    written = json.loads((tmp_path / "marked" / "privacy_ledger.json").read_text())
    assert written["nonprivate_dataset"] is True
    assert written["nonprivate_since"]["run_id"] == marking.run_id

    # For good: a later config with a finite budget is recorded, not refused, and told so.
    for eps in ("inf", "8"):
        said: list[str] = []
        later = runner.charge_run(_config(cache, *common, f"privacy.epsilon={eps}",
                                          "privacy.budget.epsilon=1"),
                                  tmp_path / f"later-{eps}", echo=said.append)
        assert later.budget.ok and later.budget.nonprivate.run_id == marking.run_id
        assert said[0].startswith("no noise threshold: eps = inf" if eps == "inf"
                                  else "smallest releasable class: about "), said[0]
        assert "privacy.budget.epsilon = 1 does not apply: the marking holds" in said[1]
    assert later.budget.previous_runs == 2


def test_unreachable_tracking_server_refuses_to_start(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(steps, "encode", lambda *a, **k: pytest.fail("data was read"))
    config = _config(cache, f"tracking.uri=http://127.0.0.1:{free_port()}")
    with pytest.raises(TrackingUnavailableError, match="cannot reach the MLflow tracking"):
        runner.run(config, tmp_path / "out", progress=False, echo=lambda _: None)
    assert not (tmp_path / "out").exists()  # made by the refused run, left empty: removed


def test_server_lost_mid_run_still_finishes_and_says_what_was_not_logged(
        cache, tmp_path, monkeypatch):
    srv = MlflowServer(tmp_path / "server").start()
    real_synthesize = steps.synthesize

    def synthesize_after_outage(*args, **kwargs):
        srv.stop()
        return real_synthesize(*args, **kwargs)

    monkeypatch.setattr(steps, "synthesize", synthesize_after_outage)
    try:
        result = runner.run(_config(cache, f"tracking.uri={srv.uri}"), tmp_path / "out",
                            progress=False, echo=lambda _: None)
    finally:
        srv.stop()
    assert result.tracking_error
    assert "metrics" in result.not_logged and "artifact evaluation" in result.not_logged
    for name in ("metrics.json", "privacy_plan.json", "run.json", "evaluation/report.html"):
        assert (tmp_path / "out" / name).is_file()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["not_logged"]
    assert "NOT LOGGED to MLflow" in runner.summary(result)


def test_cli_run_with_the_embedded_store(cache, tmp_path, dpsynth_home):
    cli = CliRunner()
    args = ["run", "--config", "configs/digits-quick.yaml", "--out", str(tmp_path / "o"),
            "--no-progress", "--set", f"encoder.cache_dir={cache}", "--set", "evaluate.steps=40",
            "--set", "data.dataset_id=digits-embedded", "--set", "privacy.budget.epsilon=9"]
    first = cli.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "accuracy" in first.output and "report" in first.output
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {"accuracy", "nonprivate_accuracy", "epsilon", "delta"} <= metrics.keys()
    # The embedded store is the per-user one ($DPSYNTH_HOME), not under --out.
    assert (dpsynth_home / "mlflow.db").is_file() and not (tmp_path / "o" / "mlflow.db").exists()
    store = MlflowClient(f"sqlite:///{dpsynth_home / 'mlflow.db'}")
    runs = store.search_runs([store.get_experiment_by_name("dpsynth").experiment_id])
    assert len(runs) == 1 + len(STEP_NAMES)
    before = {p: p.read_bytes() for p in (tmp_path / "o").rglob("*.json")}
    second = cli.invoke(app, args)  # eps 8 (7.06 at the budget delta) twice: over 9
    assert second.exit_code == 2
    assert "Refusing to start" in second.output
    assert {p: p.read_bytes() for p in (tmp_path / "o").rglob("*.json")} == before
    # The ledger is not under --out: a fresh output directory does not reset the budget.
    fresh = cli.invoke(app, [*args[:4], str(tmp_path / "fresh"), *args[5:]])
    assert fresh.exit_code == 2 and "spent eps = 7.06 over 1 earlier run" in fresh.output
    assert not [p for p in tmp_path.rglob("*.sqlite")]


@pytest.mark.parametrize("override, message", [
    ("privacy.epsilon=0", "epsilon must be > 0"),
    ("privacy.delta=1e-2", "delta must be < 0.001"),
])
def test_cli_refuses_invalid_privacy_before_any_work(tmp_path, override, message):
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "o"), "--set", override])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "o").exists()


def test_decoding_without_a_decoder_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(steps, "encode", lambda *a, **k: pytest.fail("data was read"))
    config = load_config(None, ["evaluate.image_level=true", "tracking.uri=sqlite:///x.db"])
    with pytest.raises(steps.StepInputError, match="evaluate.image_level need a decoder"):
        runner.run(config, tmp_path / "out", progress=False, echo=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_the_pipeline_plan_step_refuses_without_a_shared_ledger(monkeypatch):
    """In a pod, the default ledger file would vanish with the pod: every pipeline run
    would find a fresh budget. The plan step must be given the shared ledger."""
    from dpsynth_kfp.components import COMPONENTS
    from dpsynth_kfp.parameters import PLAN_PARAMETERS

    monkeypatch.delenv("DPSYNTH_LEDGER_URI")
    plan = COMPONENTS["plan"].python_func
    values = {p.name: p.default for p in PLAN_PARAMETERS}
    values.update(config_yaml="", mlflow_uri="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="no privacy budget ledger: set DPSYNTH_LEDGER_URI"):
        plan(**values, config=None, privacy_plan=None, ledger=None, kfp_run_id="test-run")


def test_a_charge_is_kept_when_the_mlflow_run_cannot_be_created(cache, tmp_path, monkeypatch):
    from dpsynth.privacy.ledger_store import open_ledger

    def no_run(self, *args, **kwargs):
        raise TrackingUnavailableError("cannot create the MLflow run at x: boom")

    monkeypatch.setattr(Tracker, "start_run", no_run)
    config = _config(cache, f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailableError, match="the charge is kept") as info:
        runner.charge_run(config, tmp_path / "out", echo=lambda _: None)
    with open_ledger() as ledger:
        (kept,) = ledger.entries(config.data.ledger_id())
    assert kept.charge_id in str(info.value) and kept.run_id == ""
