"""Faults: a run killed inside each step, damaged caches, a full disk, a lost MLflow.

Each case ends the same way: the outputs are consistent (no half-written file is taken for
a whole one, nothing dpsynth did not write is gone), the MLflow run says what happened,
and the ledger holds exactly the charges that were made (a charge is never refunded once
the run may have read data).
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from stalled_run import kill_when_reached
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth.privacy.ledger_store import open_ledger

cli = CliRunner()
DATASET = "digits-faults"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=500",
            "synthesize.n=1500", "synthesize.shard_rows=500",
            "evaluate.image_level=false", "evaluate.nonprivate_baseline=false",
            f"data.dataset_id={DATASET}", "privacy.budget.epsilon=40", *extra]
    return ["--config", "configs/digits-quick.yaml", "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def _charges() -> int:
    with open_ledger() as ledger:
        return len(ledger.entries(DATASET))


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _leftover_temporaries(*roots: Path) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*")
            if p.is_file() and p.name.endswith(".tmp")]


def _finished_run_is_consistent(out: Path, result) -> dict:
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.5
    owned = json.loads((out / ".dpsynth-outputs.json").read_text())["files"]
    assert all((out / f).is_file() for f in owned)  # the record lists what is there
    return record


# ------------------------------------------------------------------ SIGKILL per step
@pytest.mark.parametrize("where", ["encode", "dp_cluster", "fit_gmm", "synthesize"])
def test_a_run_killed_inside_a_step_is_finished_by_the_next(tmp_path, where):
    out = tmp_path / "out"
    marker = tmp_path / "reached"
    kill_when_reached(where, marker, ["--out", str(out), *_args(tmp_path)])
    killed = json.loads((out / "run.json").read_text())
    assert killed["status"] == "running" and _charges() == 1

    result = cli.invoke(app, ["run", "--out", str(out), *_args(tmp_path)])
    record = _finished_run_is_consistent(out, result)
    assert "was stopped without finishing; marked KILLED" in result.output
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(killed["run_id"]).info.status == "KILLED"
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert _charges() == 2  # the killed run's charge is kept, the rerun made its own
    assert _leftover_temporaries(out, tmp_path / "cache") == []


def test_an_encode_killed_midway_resumes_from_its_whole_shards(tmp_path, monkeypatch):
    from dpsynth.encoders.base import Encoder

    marker = tmp_path / "reached"
    # Kill the encode after its first shard (of 3) and count what the rerun encodes.
    kill_when_reached("encode", marker, ["--out", str(tmp_path / "out"), *_args(tmp_path)])
    encoded: list[int] = []
    real = Encoder.encode

    def counting(self, images, *args, **kwargs):
        encoded.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"), *_args(tmp_path)])
    _finished_run_is_consistent(tmp_path / "out", result)
    # 1,437 training rows in shards of 500: the first shard survived the kill.
    assert sum(encoded[:-1]) == 1437 - 500


# ------------------------------------------------------------------ damaged caches
@pytest.mark.parametrize("damage", ["truncated", "zeroed", "missing"])
def test_a_damaged_cache_shard_is_reported_and_encoded_again(tmp_path, damage):
    out = tmp_path / "out"
    first = cli.invoke(app, ["run", "--out", str(out), *_args(tmp_path,
                                                             "privacy.noise_seed=3")])
    _finished_run_is_consistent(out, first)
    before = json.loads((out / "metrics.json").read_text())
    shard = sorted((tmp_path / "cache").rglob("shard-00001.embeddings.npy"))[0]
    original = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(original[: len(original) // 2])
    elif damage == "zeroed":
        shard.write_bytes(original[:128] + bytes(len(original) - 128))
    else:
        shard.unlink()
    result = cli.invoke(app, ["run", "--out", str(out), *_args(tmp_path,
                                                              "privacy.noise_seed=3")])
    _finished_run_is_consistent(out, result)
    assert str(shard.parent) in result.output  # reported by path
    again = sorted((tmp_path / "cache").rglob("shard-00001.embeddings.npy"))
    assert len(again) == 1 and again[0].read_bytes() == original  # re-encoded, same bytes
    after = json.loads((out / "metrics.json").read_text())
    assert after["accuracy"] == pytest.approx(before["accuracy"])  # seeded: same result
    assert _charges() == 2


# ------------------------------------------------------------------ full disk
def _full_disk_at(monkeypatch, module, name: str, after_calls: int = 0):
    real = getattr(module, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > after_calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_a_full_disk_during_synthesis_fails_the_run_cleanly(tmp_path, monkeypatch):
    from dpsynth.data import store

    out = tmp_path / "out"
    real_writer = store.EmbeddingSetWriter.write_shard

    def write_shard(self, index, X, y, **kwargs):
        if self.manifest.get("synthetic") and index == 1:
            _full_disk_at(monkeypatch, np, "save")
        return real_writer(self, index, X, y, **kwargs)

    monkeypatch.setattr(store.EmbeddingSetWriter, "write_shard", write_shard)
    result = cli.invoke(app, ["run", "--out", str(out), *_args(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "charge is kept" in result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_step"] == "synthesize"
    assert Path(record["outputs"]["mixture"]).is_dir()  # the releases are kept
    assert MlflowClient(record["tracking_uri"]).get_run(
        record["run_id"]).info.status == "FAILED"
    assert _leftover_temporaries(out, tmp_path / "cache") == []
    assert _charges() == 1
    monkeypatch.undo()
    _finished_run_is_consistent(out, cli.invoke(app, ["run", "--out", str(out),
                                                      *_args(tmp_path)]))
    assert _charges() == 2


def test_a_full_disk_while_creating_the_embedded_store_leaves_nothing(tmp_path, monkeypatch,
                                                                     dpsynth_home):
    """The disk fills up halfway through MLflow's schema migration: before the fix this
    left a half-migrated mlflow.db that every later run failed on."""
    import mlflow.store.db.utils as db_utils

    out = tmp_path / "out"
    real_upgrade = db_utils._upgrade_db

    def upgrade_until_the_disk_is_full(engine):
        with engine.begin() as conn:  # what a migration interrupted midway leaves
            conn.exec_driver_sql("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(db_utils, "_upgrade_db", upgrade_until_the_disk_is_full)
    result = cli.invoke(app, ["run", "--out", str(out), *_args(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "cannot create the embedded tracking store" in result.output
    assert "No space left on device" in result.output
    assert not (dpsynth_home / "mlflow.db").exists()
    assert [p.name for p in dpsynth_home.glob(".mlflow.db*")] == []
    assert _charges() == 0
    monkeypatch.setattr(db_utils, "_upgrade_db", real_upgrade)
    _finished_run_is_consistent(out, cli.invoke(app, ["run", "--out", str(out),
                                                      *_args(tmp_path)]))


# ------------------------------------------------------------------ MLflow lost
def test_mlflow_unreachable_at_the_start_charges_nothing(tmp_path, monkeypatch):
    from mlflow_server import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"), *_args(
        tmp_path, f"tracking.uri=http://127.0.0.1:{free_port()}")])
    assert result.exit_code == 2 and "cannot reach the MLflow tracking" in result.output
    assert _charges() == 0 and not (tmp_path / "out" / "run.json").exists()


def test_mlflow_killed_mid_run_keeps_the_ledger_right(tmp_path, monkeypatch):
    from mlflow_server import MlflowServer

    from dpsynth import steps

    srv = MlflowServer(tmp_path / "server").start()
    real = steps.synthesize

    def synthesize_after_outage(*args, **kwargs):
        os.killpg(srv.proc.pid, signal.SIGKILL)  # no clean shutdown
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "synthesize", synthesize_after_outage)
    out = tmp_path / "out"
    try:
        result = cli.invoke(app, ["run", "--out", str(out),
                                  *_args(tmp_path, f"tracking.uri={srv.uri}")])
    finally:
        srv.stop()
    record = _finished_run_is_consistent(out, result)
    assert "NOT LOGGED to MLflow" in result.output and record["not_logged"]
    assert _charges() == 1  # the store, not MLflow, holds the charge
    srv = MlflowServer(tmp_path / "server").start()  # the same store, back up
    try:
        status = MlflowClient(srv.uri).get_run(record["run_id"]).info.status
    finally:
        srv.stop()
    assert status == "RUNNING"  # what MLflow last heard; run.json says finished
