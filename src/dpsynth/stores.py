"""Where dpsynth's durable stores live, and the error when one cannot be reached.

The per-user home holds what outlives one run: the embedded MLflow store and the SQLite
budget ledger. Both :mod:`dpsynth.tracking` and :mod:`dpsynth.privacy.ledger_store` need
it, and the ledger's "unavailable" error is a kind of the tracking store's; keeping them
here lets neither module import the other (tracking reads ledger entries, the ledger store
used to import tracking for these two names: an import cycle).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Overrides the per-user home of the embedded MLflow store and the ledger.
HOME_ENV = "DPSYNTH_HOME"


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be reached when it must be (before data is read)."""


def dpsynth_home() -> Path:
    """The per-user home of what outlives one run: the embedded MLflow store
    (``mlflow.db``, ``mlartifacts/``) and the SQLite budget ledger (``ledger.sqlite``).

    ``$DPSYNTH_HOME``, else ``$XDG_DATA_HOME/dpsynth``, else ``~/.local/share/dpsynth``;
    never under ``--out``: a ledger or run history that a new output directory resets
    would be no ledger (each ``--out`` keeps a copy of its own run's records instead).
    """
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser().resolve() / "dpsynth"
