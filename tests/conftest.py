"""Test-wide safety: no test ever charges the user's real privacy budget ledger, nor
writes into the user's MLflow store.

Both default to the per-user dpsynth home (``~/.local/share/dpsynth``: ``ledger.sqlite``,
``mlflow.db``, ``mlartifacts/``), which a test run would fill with charges and runs and,
worse, could exhaust. Every test gets a throwaway ledger through ``$DPSYNTH_LEDGER_URI``
and a throwaway home through ``$DPSYNTH_HOME`` (so even a test that unsets the ledger
variable lands in its own home); subprocesses (CLI runs, kfp's local runner) inherit both.
"""

from __future__ import annotations

import os
import sys

import pytest

from dpsynth.privacy.ledger_store import LEDGER_URI_ENV
from dpsynth.tracking import HOME_ENV

_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    # pytest-xdist (scripts/test.sh): several workers share the cores. torch's OpenMP pool
    # sized to every core in every worker oversubscribes them, and its spin-waits then make
    # a small MLP many times slower. Its share of the cores each; numpy's BLAS is left as
    # it is, because the pinned outputs were computed with its default threads.
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))


@pytest.fixture(scope="session", autouse=True)
def _session_ledger(tmp_path_factory):
    """For module- and session-scoped fixtures, which run before any per-test fixture."""
    patch = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("session-ledger") / "ledger.sqlite"
    patch.setenv(LEDGER_URI_ENV, f"sqlite:///{path}")
    patch.setenv(HOME_ENV, str(tmp_path_factory.mktemp("session-home")))
    # The CUDA image sets it (encode/decode then refuse the CPU); the suite runs on CPU
    # wherever it runs, and the tests of that refusal set it themselves.
    patch.delenv("DPSYNTH_REQUIRE_CUDA", raising=False)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _test_ledger(tmp_path_factory):
    """A fresh ledger and dpsynth home per test (each in its own folder: tests may list
    their tmp_path). Its own MonkeyPatch, not the test's: a test's ``monkeypatch.undo()``
    must not switch ledgers halfway."""
    path = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    if "dpsynth.steps" in sys.modules:  # a test may register another encoder by a name
        sys.modules["dpsynth.steps"]._ENCODERS.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LEDGER_URI_ENV, f"sqlite:///{path}")
        patch.setenv(HOME_ENV, str(tmp_path_factory.mktemp("home")))
        yield path


@pytest.fixture
def dpsynth_home():
    """This test's dpsynth home (``$DPSYNTH_HOME``): the embedded MLflow store is there."""
    import os
    from pathlib import Path

    return Path(os.environ[HOME_ENV])


@pytest.fixture
def charges(monkeypatch):
    """Every call of ``runner.charge_run`` (the real charge still follows): a test of a
    run that must be refused before the charge asserts this stays empty."""
    from dpsynth import runner

    calls: list[object] = []
    real = runner.charge_run

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "charge_run", recording)
    return calls


@pytest.fixture
def counting_encoder(monkeypatch):
    """The run's encoder replaced by ``pixels`` that counts its ``encode_batch`` calls
    (``counting_encoder.calls``), for tests that check what is encoded and what is reused."""
    from dpsynth import steps
    from dpsynth.encoders.pixels import PixelEncoder

    class CountingPixels(PixelEncoder):
        calls = 0

        def encode_batch(self, images):
            type(self).calls += 1
            return super().encode_batch(images)

    monkeypatch.setattr(steps, "make_encoder",
                        lambda config: CountingPixels(**config.encoder.options))
    return CountingPixels
