"""Run the pipeline on this machine with kfp's local SubprocessRunner (no cluster)."""

import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kfp.dsl.base_component import BaseComponent

from dpsynth.config import RunConfig
from dpsynth.privacy.ledger_store import LEDGER_URI_ENV, default_ledger_uri
from dpsynth_kfp.parameters import arguments
from dpsynth_kfp.pipeline import LOCAL, build_pipeline


def run_pipeline_locally(config: RunConfig, pipeline_root: str | Path, *,
                         encode_parts: int = 2, synthesize_parts: int = 2,
                         components: Mapping[str, BaseComponent | str | Path] | None = None
                         ) -> dict[str, Any]:
    """Run every component as a subprocess in this Python environment; returns the run's
    directory and its metrics. ``components`` replaces steps' components (a component or
    the path of a spec). Raises RuntimeError if a task fails."""
    import kfp.local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    if config.tracking.uri is None:
        # Components are separate processes: give them one tracking store to share.
        config = config.model_copy(update={"tracking": config.tracking.model_copy(
            update={"uri": f"sqlite:///{pipeline_root / 'mlflow.db'}"})})
    if config.privacy.ledger_uri is None and not os.environ.get(LEDGER_URI_ENV):
        # The plan task insists on a named ledger (a pod's own would vanish with it); on
        # this machine that is this user's default ledger, as for `dpsynth run`.
        config = config.model_copy(update={"privacy": config.privacy.model_copy(
            update={"ledger_uri": default_ledger_uri()})})
    pipeline = build_pipeline(encode_parts=encode_parts, synthesize_parts=synthesize_parts,
                              settings=LOCAL, components=components)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False),
                   pipeline_root=str(pipeline_root), raise_on_error=True)
    before = set(pipeline_root.iterdir())
    started = time.time()
    with warnings.catch_warnings():
        # Expected here: the tasks name the cluster images but run in this environment.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task")
        pipeline(**arguments(config))
    runs = sorted((p for p in set(pipeline_root.iterdir()) - before if p.is_dir()),
                  key=lambda p: p.stat().st_mtime)
    run_dir = runs[-1]
    metrics = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    return {"run_dir": run_dir, "metrics": metrics, "seconds": time.time() - started}
