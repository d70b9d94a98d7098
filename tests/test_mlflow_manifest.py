"""The MLflow Deployment of manifests/, run for real: a ``mlflow server`` on 127.0.0.1 with
the environment the rendered overlay gives it (allowed hosts, job execution off), its
backend store in a throwaway PostgreSQL (tests/pg_server.py), and the rendered readiness
probe's own command run against it, before and after the database is stopped."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubectl_kustomize import container, find, render
from mlflow_server import MlflowServer
from pg_server import started_postgres

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
#: Process memory the server may use at idle: the Deployment's memory request.
IDLE_RSS_LIMIT = 1024**3


def _mlflow(overlay: str) -> tuple[dict, str]:
    objects = render(MANIFESTS / "overlays" / overlay)
    namespace = find(objects, "Deployment", "mlflow")["metadata"]["namespace"]
    return container(objects, "Deployment", "mlflow", "mlflow"), namespace


def _env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(PostgreSQL, MLflow server started with the dev overlay's environment, container)."""
    c, _ = _mlflow("dev")
    env = _env(c)
    pg = started_postgres()
    mlflow = None
    try:
        import psycopg

        with psycopg.connect(pg.admin_uri, autocommit=True) as admin:
            admin.execute("CREATE DATABASE mlflow")
        backend = pg.uri(database="mlflow").replace("postgresql://", "postgresql+psycopg://")
        mlflow = MlflowServer(tmp_path_factory.mktemp("mlflow-manifest"), backend, env={
            name: env[name] for name in ("MLFLOW_SERVER_ALLOWED_HOSTS",
                                         "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")}).start()
        yield pg, mlflow, c
    finally:
        if mlflow is not None:
            mlflow.stop()
        pg.stop()


def _get(server: MlflowServer, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_server_answers_every_listed_host_and_refuses_others(servers):
    _, mlflow, c = servers
    listed = [h.strip() for h in _env(c)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")]
    assert "mlflow.dpsynth-dev.svc.cluster.local:5000" in listed
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    for host in listed:
        assert _get(mlflow, api, host) == 200, host
    # What the old wildcard list (mlflow.*, 10.*, ...) admitted, and names close to real ones.
    for host in ("mlflow.evil.com", "mlflow.evil.com:5000", "evil.com", "10.1.2.3:5000",
                 f"127.0.0.1:{mlflow.port}", "localhost", "mlflow.dpsynth-dev.svc.evil.com"):
        assert _get(mlflow, api, host) == 403, host
    # The kubelet's HTTP probes send the pod IP as Host: /health is exempt from the check.
    assert _get(mlflow, "/health", "10.1.2.3:5000") == 200


def test_idle_memory_with_job_execution_off_fits_the_request(servers):
    """Resident memory of the server's whole process group, at idle, below the request."""
    _, mlflow, c = servers
    assert _env(c)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    pgid = os.getpgid(mlflow.proc.pid)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            status = (entry / "status").read_text()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines()
                       if line.startswith("VmRSS:")), 0)
    print(f"mlflow server process group RSS at idle: {total / 2**20:.0f} MiB")
    assert 0 < total < IDLE_RSS_LIMIT


def _run_probe(c: dict, mlflow: MlflowServer, backend: str) -> subprocess.CompletedProcess:
    """The rendered readiness probe's command, as the kubelet runs it in the container:
    with the container's environment (here: the test server's port and backend URI)."""
    command = list(c["readinessProbe"]["exec"]["command"])
    assert command[0] == "python"
    command[0] = sys.executable  # the image's python; here the venv's, with sqlalchemy
    env = {**os.environ, **_env(c), "MLFLOW_PORT": str(mlflow.port),
           "MLFLOW_BACKEND_STORE_URI": backend}
    return subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=c["readinessProbe"]["timeoutSeconds"] + 30)


def test_readiness_fails_while_the_database_is_down(servers):
    """Runs last in this module: it stops the database."""
    pg, mlflow, c = servers
    probe = c["readinessProbe"]
    assert "exec" in probe and "httpGet" not in probe
    # Up: the probe passes.
    done = _run_probe(c, mlflow, mlflow.backend_store_uri)
    assert done.returncode == 0, done.stderr
    # Pointed at a database that is not MLflow's, it fails (it checks MLflow's schema).
    other = mlflow.backend_store_uri.rsplit("/", 1)[0] + "/postgres"
    assert _run_probe(c, mlflow, other).returncode != 0
    # Database down: /health still says OK, the probe fails.
    pg.stop()
    assert _get(mlflow, "/health", "mlflow:5000") == 200
    done = _run_probe(c, mlflow, mlflow.backend_store_uri)
    assert done.returncode != 0
    assert "OperationalError" in done.stderr or "connection" in done.stderr.lower()
