"""The ledger set-up Job of manifests/, run for real against a throwaway PostgreSQL
(tests/pg_server.py): the databases the StatefulSet and its init script make, then the
Job's two containers with their rendered commands, arguments and environment (only the
server's address and the mount path changed). Afterwards the ledger role connects to the
ledger database and is refused on every other one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubectl_kustomize import container, find, render
from pg_server import PostgresServer, started_postgres

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
ROLE_PASSWORD = "ledger-role-test-password"


@pytest.fixture(scope="module")
def objects():
    return render(MANIFESTS / "overlays" / "dev")


@pytest.fixture(scope="module")
def pg(objects):
    server = started_postgres()
    try:
        _make_databases(server, objects)
        yield server
    finally:
        server.stop()


def _client_env(server: PostgresServer, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(env or {}), "PGHOST": "127.0.0.1", "PGPORT": str(server.port),
            "PGPASSWORD": server.password,
            "PATH": f"{server.bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _plain_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def _make_databases(server: PostgresServer, objects: list[dict]) -> None:
    """What the postgres image does on an empty data directory: POSTGRES_DB, then the
    init scripts of ConfigMap postgres-init."""
    import psycopg

    pg_env = _plain_env(container(objects, "StatefulSet", "postgres", "postgres"))
    with psycopg.connect(server.admin_uri, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{pg_env["POSTGRES_DB"]}"')
    for name, script in sorted(find(objects, "ConfigMap", "postgres-init")["data"].items()):
        done = subprocess.run(["sh", "-c", script, name], capture_output=True, text=True,
                              env=_client_env(server, pg_env), timeout=60)
        assert done.returncode == 0, done.stderr


def _install_ledger(server: PostgresServer, objects: list[dict]) -> None:
    """The Job's init container: the table and the role."""
    c = container(objects, "Job", "dpsynth-ledger-setup", "install-ledger")
    assert c["command"][0] == "python"
    args = [a.replace("@postgres:5432/", f"@127.0.0.1:{server.port}/") for a in c["args"]]
    env = {**_client_env(server, _plain_env(c)), "DPSYNTH_LEDGER_ROLE_PASSWORD": ROLE_PASSWORD}
    done = subprocess.run([sys.executable, *c["command"][1:], *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _restrict_connect(server: PostgresServer, objects: list[dict], tmp_path: Path) -> None:
    """The Job's container: psql with the ConfigMap's SQL file."""
    job = find(objects, "Job", "dpsynth-ledger-setup")["spec"]["template"]["spec"]
    c = container(objects, "Job", "dpsynth-ledger-setup", "restrict-connect")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "sql")
    volume = next(v for v in job["volumes"] if v["name"] == "sql")
    files = find(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [a.replace(mount["mountPath"], str(tmp_path)) for a in c["args"]]
    done = subprocess.run([str(server.bin_dir / c["command"][0]), *args],
                          env=_client_env(server, _plain_env(c)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _connects(server: PostgresServer, database: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(server.uri("dpsynth_ledger", ROLE_PASSWORD, database)) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        assert "permission denied for database" in str(exc), exc
        return False
    return True


def test_the_ledger_role_connects_to_the_ledger_database_only(pg, objects, tmp_path):
    import psycopg

    _install_ledger(pg, objects)
    others = ["mlflow", "mlflow_auth", "postgres", "template1"]
    with psycopg.connect(pg.admin_uri) as admin:
        databases = {row[0] for row in admin.execute(
            "SELECT datname FROM pg_database WHERE datallowconn")}
    assert databases == {"ledger", *others}
    # Before the Job's second step PostgreSQL lets the role into every database (PUBLIC's
    # default CONNECT), and an explicit grant on one of them must be taken back too.
    assert all(_connects(pg, db) for db in databases)
    with psycopg.connect(pg.admin_uri, autocommit=True) as admin:
        admin.execute("GRANT CONNECT ON DATABASE mlflow TO dpsynth_ledger")
    for _ in range(2):  # the Job may run again: idempotent
        _restrict_connect(pg, objects, tmp_path)
    assert _connects(pg, "ledger")
    assert [db for db in others if _connects(pg, db)] == []
    # The role still does its job on the ledger database.
    with psycopg.connect(pg.uri("dpsynth_ledger", ROLE_PASSWORD, "ledger")) as conn:
        conn.execute("SELECT count(*) FROM dpsynth_ledger").fetchone()
    # The superuser (MLflow's user in manifests/README.md) still reaches MLflow's databases.
    for db in ("mlflow", "mlflow_auth"):
        psycopg.connect(pg.uri(database=db)).close()
