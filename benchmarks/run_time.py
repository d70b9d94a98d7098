"""End-to-end time of `dpsynth run` with the default config, cold and warm (issue 3).

    .venv/bin/python benchmarks/run_time.py [--config configs/fashion-mnist.yaml]

Runs the CLI twice in fresh subprocesses with a new, empty embedding cache:
  * cold: the cache is empty, so all 70k Fashion-MNIST images are encoded;
  * warm: the same config again, so the embeddings come from the cache.
Each run has its own output directory (so its own embedded MLflow store and ledger).
Records wall seconds, the child's peak RSS and the accuracy it reports.
Targets: cold <= 10 minutes, warm <= 2 minutes on 2 cores.
Writes benchmarks/results/run_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(config: Path, out: Path, cache: Path) -> dict[str, object]:
    # A throwaway ledger beside the output: a benchmark must not spend the user's budget.
    env = {**os.environ, "DPSYNTH_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DPSYNTH_LEDGER_URI": f"sqlite:///{out.parent.resolve() / 'ledger.sqlite'}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "dpsynth"), "run", "--config",
                           str(config), "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"dpsynth run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": round(seconds, 1),
            "rss_peak_mb_at_least": round(max(peak, before) / 1024, 1),
            "accuracy": metrics["accuracy"], "nonprivate_accuracy": metrics["nonprivate_accuracy"],
            "epsilon": metrics["epsilon"], "delta": metrics["delta"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "fashion-mnist.yaml")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "run_time.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dpsynth-run-time-") as tmp:
        tmp = Path(tmp)
        cold = run_once(args.config, tmp / "cold", tmp / "cache")
        print(f"cold: {cold}", flush=True)
        warm = run_once(args.config, tmp / "warm", tmp / "cache")
        print(f"warm: {warm}", flush=True)
    result = {
        "command": f"dpsynth run --config {args.config.relative_to(ROOT)} --no-progress",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "cold_cache": cold, "warm_cache": warm,
        "targets_seconds": {"cold_cache": 600, "warm_cache": 120},
        "note": "rss_peak_mb_at_least: getrusage of children is the max over both runs so "
                "far, so the warm value may be the cold run's peak.",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
