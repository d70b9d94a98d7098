"""Start and stop a throwaway PostgreSQL cluster on 127.0.0.1 for the tests.

Uses Debian's postgresql (``/usr/lib/postgresql/<version>/bin``; scripts/setup.sh installs
it). initdb refuses to run as root, so as root the cluster is made and run as the
``postgres`` OS user (``runuser -u postgres --``), in a folder of its own under the system
temp dir: pytest's tmp_path sits under a root-only folder that user cannot enter.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow_server import free_port

START_TIMEOUT_S = 120


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None if there is none."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if found:
        newest = max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
        return Path(newest).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = Path(bin_dir)
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.root = Path(tempfile.mkdtemp(prefix="dpsynth-pg-"))
        self.data = self.root / "data"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the postmaster's own PID

    def uri(self, user: str = "postgres", password: str | None = None,
            database: str = "postgres") -> str:
        secret = self.password if user == "postgres" and password is None else password
        auth = f"{user}:{secret}" if secret else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    @property
    def admin_uri(self) -> str:
        return self.uri()

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> PostgresServer:
        pwfile = self.root / "superuser-password"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            for path in (self.root, pwfile):
                shutil.chown(path, "postgres", "postgres")
        subprocess.run([*self._as_owner(), str(self.bin_dir / "initdb"), "-D", str(self.data),
                        "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}",
                        "--no-sync", "--encoding=UTF8", "--locale=C"],
                       check=True, capture_output=True)
        self.log = open(self.root / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self._as_owner(), str(self.bin_dir / "postgres"), "-D", str(self.data),
             "-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
             "-c", f"unix_socket_directories={self.root}", "-c", "fsync=off",
             "-c", "max_connections=40"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        import psycopg

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: "
                                   + (self.root / "server.log").read_text()[-2000:])
            try:
                psycopg.connect(self.admin_uri, connect_timeout=2).close()
            except psycopg.OperationalError:
                time.sleep(0.3)
                continue
            self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
            return self
        self.stop()
        raise RuntimeError(f"postgres did not come up within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT) of the postmaster by its PID, which ends its runuser
        parent too; SIGKILL to both if that takes too long. Removes the cluster's folder."""
        first = self.pid or (self.proc.pid if self.proc else None)
        if first:
            with contextlib.suppress(ProcessLookupError):
                os.kill(first, signal.SIGINT)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in {first, self.proc.pid}:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.pid:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(self.pid):
                time.sleep(0.1)
        self.proc = self.pid = None
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def started_postgres() -> PostgresServer:
    """A throwaway cluster, started; the calling test is skipped, saying why, where
    PostgreSQL's binaries are not installed."""
    import pytest

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb) not found: scripts/setup.sh installs "
                    "Debian's postgresql")
    return PostgresServer(bin_dir).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
