"""``dpsynth run`` that stops inside one step and waits to be killed (tests/test_faults.py).

Usage: python tests/stalled_run.py WHERE MARKER -- <dpsynth run arguments>

WHERE is ``encode`` (after the first shard of the training set is written), ``dp_cluster``
or ``fit_gmm`` (after the DP releases are computed, before they are saved), or
``synthesize`` (after the first shard of the synthetic set is written). On reaching it the
process writes MARKER and sleeps, so the test can SIGKILL it exactly there.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
