"""``dpsynth run`` that stops inside one step and waits to be killed (tests/test_faults.py).

Usage: python tests/stalled_run.py WHERE MARKER -- <dpsynth run arguments>

WHERE is ``encode`` (after the first shard of the training set is written), ``dp_cluster``
or ``fit_gmm`` (after the DP releases are computed, before they are saved), or
``synthesize`` (after the first shard of the synthetic set is written). On reaching it the
process writes MARKER and sleeps, so the test can SIGKILL it exactly there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def stall(marker: Path) -> None:
    marker.write_text("reached")
    time.sleep(600)


def main() -> None:
    where, marker = sys.argv[1], Path(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    from dpsynth.data.store import EmbeddingSetWriter
    from dpsynth.synthesizer import DPSynthesizer

    if where in ("encode", "synthesize"):
        real_write = EmbeddingSetWriter.write_shard

        def write_shard(self, index, X, y, **kwargs):
            real_write(self, index, X, y, **kwargs)
            synthetic = bool(self.manifest.get("synthetic"))
            if synthetic == (where == "synthesize") and index == 0:
                stall(marker)

        EmbeddingSetWriter.write_shard = write_shard
    elif where in ("dp_cluster", "fit_gmm"):
        real_save = DPSynthesizer.save

        def save(self, path):
            fitted_mixture = hasattr(self, "mixture_")
            if fitted_mixture == (where == "fit_gmm"):
                stall(marker)
            return real_save(self, path)

        DPSynthesizer.save = save
    else:
        raise SystemExit(f"unknown WHERE {where!r}")
    from dpsynth.cli import app

    app(["run", *args])


def kill_when_reached(where: str, marker: Path, run_args: list[str],
                      timeout: float = 300) -> int:
    """Start ``dpsynth run run_args`` stalling at WHERE (its own process group), wait until
    it writes ``marker``, then SIGKILL it there; returns its pid. Fails if the run ends
    first or does not get there within ``timeout`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, __file__, where, str(marker), "--", *run_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
        start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {where}"
            assert time.monotonic() < deadline, f"the run never reached {where}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return proc.pid


if __name__ == "__main__":
    main()
