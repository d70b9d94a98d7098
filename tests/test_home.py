"""One per-user home for what outlives a run: the budget ledger and the embedded MLflow store.

Issue 13, item 5: a rerun into a new ``--out`` on the same dataset id reported "spent eps =
0 over 0 earlier run(s)". The ledger and the MLflow store now live in ``$DPSYNTH_HOME``
(default ``$XDG_DATA_HOME/dpsynth``, else ``~/.local/share/dpsynth``), never under
``--out``, which keeps a copy of its own run's records.
"""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth.privacy.ledger_store import (
    LEDGER_URI_ENV,
    default_ledger_uri,
    open_ledger,
    resolve_ledger_uri,
)
from dpsynth.tracking import (
    HOME_ENV,
    default_tracking_uri,
    dpsynth_home,
    embedded_artifact_root,
    resolve_tracking_uri,
)


def test_the_home_holds_the_ledger_and_the_tracking_store(monkeypatch, tmp_path):
    for name in (HOME_ENV, LEDGER_URI_ENV, "XDG_DATA_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    home = tmp_path / "user" / ".local" / "share" / "dpsynth"
    assert dpsynth_home() == home
    assert default_ledger_uri() == f"sqlite:///{home / 'ledger.sqlite'}"
    assert resolve_tracking_uri(None) == default_tracking_uri() == (
        f"sqlite:///{home / 'mlflow.db'}")
    assert embedded_artifact_root(default_tracking_uri()) == home / "mlartifacts"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert dpsynth_home() == tmp_path / "xdg" / "dpsynth"
    assert default_ledger_uri() == f"sqlite:///{tmp_path / 'xdg' / 'dpsynth' / 'ledger.sqlite'}"

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "mine"))
    assert dpsynth_home() == tmp_path / "mine"
    assert default_ledger_uri() == f"sqlite:///{tmp_path / 'mine' / 'ledger.sqlite'}"
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mine' / 'mlflow.db'}"

    # Precedence: $DPSYNTH_LEDGER_URI over the home, privacy.ledger_uri over both; for
    # MLflow $MLFLOW_TRACKING_URI over the home and tracking.uri over both.
    monkeypatch.setenv(LEDGER_URI_ENV, f"sqlite:///{tmp_path / 'env.sqlite'}")
    assert default_ledger_uri().endswith("env.sqlite")
    assert resolve_ledger_uri(f"sqlite:///{tmp_path / 'cfg.sqlite'}").endswith("cfg.sqlite")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri(None) == "http://mlflow:5000"
    assert resolve_tracking_uri("http://other:5000") == "http://other:5000"
    assert embedded_artifact_root("http://mlflow:5000") is None


def _run(out, cache, *sets: str):
    args = ["run", "--config", "configs/digits-quick.yaml", "--out", str(out),
            "--no-progress", "--set", f"encoder.cache_dir={cache}",
            "--set", "data.dataset_id=digits-two-dirs", "--set", "privacy.epsilon=1",
            "--set", "privacy.budget.epsilon=1.1", "--set", "evaluate.steps=100",
            "--set", "evaluate.image_level=false", "--set", "synthesize.n=500"]
    for item in sets:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def test_two_output_directories_share_one_budget(tmp_path, monkeypatch, dpsynth_home):
    """The done-when test of item 5: two runs into two ``--out`` on one dataset id, with
    every location left at its default, see each other's spend; the second is refused
    (two eps = 1 runs compose to about 1.24 at the budget delta, over 1.1) and nothing is
    charged, logged or written for it."""
    monkeypatch.delenv(LEDGER_URI_ENV)  # the default ledger: the one in $DPSYNTH_HOME
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cache = tmp_path / "cache"
    first_out, second_out = tmp_path / "first", tmp_path / "second"

    first = _run(first_out, cache)
    assert first.exit_code == 0, first.output
    assert "spent eps = 0 over 0 earlier run(s)" in first.output
    assert (dpsynth_home / "ledger.sqlite").is_file()
    assert (dpsynth_home / "mlflow.db").is_file()
    for name in ("mlflow.db", "mlartifacts", "ledger.sqlite"):
        assert not (first_out / name).exists(), name
    # --out keeps a copy of the run's records.
    record = json.loads((first_out / "run.json").read_text())
    charge = json.loads((first_out / "privacy_ledger.json").read_text())
    assert record["status"] == "finished"
    assert record["tracking_uri"] == f"sqlite:///{dpsynth_home / 'mlflow.db'}"
    assert charge["ledger_uri"] == f"sqlite:///{dpsynth_home / 'ledger.sqlite'}"
    assert charge["dataset_id"] == "digits-two-dirs"
    with open_ledger() as ledger:
        charged = ledger.entries("digits-two-dirs")
    assert len(charged) == 1
    store = MlflowClient(f"sqlite:///{dpsynth_home / 'mlflow.db'}")
    experiment = store.get_experiment_by_name("dpsynth")
    assert experiment.artifact_location == (dpsynth_home / "mlartifacts").as_uri()
    runs_before = len(store.search_runs([experiment.experiment_id]))

    # promote and fetch default to the same home store: the release is registered there,
    # its artifacts beside it (not in MLflow's ./mlruns of the working folder).
    from dpsynth import promote

    release = promote.promote(first_out, gates=promote.Gates(min_accuracy=0.0))
    assert release.aliased
    assert store.get_model_version_by_alias(release.model_name, promote.PRODUCTION)
    releases = store.get_experiment_by_name(promote.RELEASE_EXPERIMENT)
    assert releases.artifact_location == (dpsynth_home / "mlartifacts").as_uri()
    promote.fetch("digits-two-dirs", tmp_path / "fetched")
    assert (tmp_path / "fetched" / "synthetic" / "manifest.json").is_file()
    runs_before = len(store.search_runs([experiment.experiment_id]))

    second = _run(second_out, cache)
    assert second.exit_code == 2, second.output
    spent = f"spent eps = {charge['requested_epsilon']:.3g} over 1 earlier run(s)"
    assert spent in second.output
    assert "Refusing to start" in second.output
    assert "disagrees" not in second.output  # the MLflow mirror is the same store
    with open_ledger() as ledger:
        assert ledger.entries("digits-two-dirs") == charged  # nothing charged
    assert len(store.search_runs([experiment.experiment_id])) == runs_before
    assert not second_out.exists() or not [p for p in second_out.rglob("*") if p.is_file()]
