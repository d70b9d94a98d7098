"""Scale benchmark: fit, sample and synthesize time and peak memory against n (issues 2, 14).

    .venv/bin/python benchmarks/scale.py [--sizes 10000 60000 100000 1000000]
        [--sample-sizes 60000] [--synthesize-sizes 10000000]

Data: a synthetic 10-class mixture in d = 1280 (L2-normalised rows), written once as a
float32 memory-mapped .npy under benchmarks/cache/ (1M rows = 5.1 GB) and streamed by
``DPSynthesizer.fit_shards``. Each point runs twice, each time in a fresh subprocess:
  * seconds, rss_peak_mb: wall time of fit and peak resident set size (which includes the
    memory-mapped input pages that were touched), without tracing; for dpsynth the privacy
    calibration (data-independent, once per process and plan) is timed before the fit, as
    calibration_seconds, and is not in seconds;
  * heap_peak_mb: peak of Python/numpy heap allocations under tracemalloc - the memory a
    fit allocates itself, excluding the mapped input. Tracing slows small allocations a
    lot (10x on the privacy calibration), so it never runs in the timed process.
Baselines: sklearn KMeans and GaussianMixture(covariance_type="diag") with the same
number of components (10 classes x 1), which need the data in memory; and
sklearn-gmm-diag-sample, that GaussianMixture (fitted on the 10k data, untimed) drawing n
samples with ``.sample(n)``, where its float64 result fits in memory. ``--repeats k`` runs
each timed point but the synthesize k times (fresh processes) and reports the median. The
run that writes scale.json also draws docs/scale.png (``--plot-only`` redraws it from the
JSON).

Sampling (issue 14) uses the mixture fitted (dpsynth defaults) on the 10k-row data, saved
once under benchmarks/cache/scale_mixture/:
  * dpsynth-sample: ``DPSynthesizer.sample(n)`` in memory (the n x d float32 result);
    seconds is the first call in a fresh process; seconds_again_median, the same call
    repeated there (3 times);
  * first-touch: writing a fresh n x d float32 array in a fresh process (np.ones), what
    the page faults of the sample's result cost this machine;
  * dpsynth-synthesize: ``steps.synthesize(n=...)``, the EmbeddingSet streamed to disk shard
    by shard (n = 10M writes 51 GB under benchmarks/cache/, removed afterwards); its peak
    RSS stays near one shard whatever n. When the set does not fit on the disk it is
    written as ``parts`` parts (``steps.synthesize_part``, the pipeline fan-out's unit),
    one after another in the one process, each removed once written (not timed).
Writes benchmarks/results/scale.json. Timings depend on the machine being otherwise idle:
record in ``--note`` when it is not, and write such runs to another ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "cache"
D, CLASSES = 1280, 10
#: sklearn baselines are skipped above this many bytes of float64 input (24 GiB machine).
SKLEARN_MAX_BYTES = 6 * 2**30


def data_path(n: int) -> Path:
    return CACHE / f"scale_{n}x{D}.npy"


def peak_rss_mb() -> float:
    """This process's peak resident set size: VmHWM, which exec resets. (ru_maxrss is
    not reset by exec on Linux: a child forked from a large parent reports the parent's
    RSS as its floor, which inflated rss_peak_mb of runs before issue 14.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def make_data(n: int) -> None:
    X_path, y_path = data_path(n), data_path(n).with_suffix(".labels.npy")
    if X_path.exists() and y_path.exists():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, D)).astype(np.float32)
    X = np.lib.format.open_memmap(X_path.with_suffix(".tmp.npy"), mode="w+",
                                  dtype=np.float32, shape=(n, D))
    y = rng.integers(0, CLASSES, n)
    for start in range(0, n, 65536):
        yb = y[start : start + 65536]
        block = centres[yb] + 2.0 * rng.standard_normal((len(yb), D), dtype=np.float32)
        X[start : start + len(yb)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    X.flush()
    del X
    np.save(y_path, y)
    X_path.with_suffix(".tmp.npy").replace(X_path)


MIXTURE = CACHE / "scale_mixture"
SAMPLING = ("dpsynth-sample", "dpsynth-synthesize", "first-touch", "sklearn-gmm-diag-sample")
PLOT = ROOT / "docs" / "scale.png"


def make_mixture() -> Path:
    """The mixture the sampling benchmarks draw from: dpsynth defaults on the 10k data."""
    if (MIXTURE / "params.json").exists():
        return MIXTURE
    import warnings

    from dpsynth import DPSynthesizer, steps

    make_data(10_000)
    X = np.load(data_path(10_000), mmap_mode="r")
    y = np.load(data_path(10_000).with_suffix(".labels.npy"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth = DPSynthesizer(1.0, 1e-5, random_state=0, normalize=True).fit_shards(
            [(X, y)], classes=range(CLASSES))
    synth.save(MIXTURE)
    (MIXTURE / steps.EMBEDDING_INFO).write_text(json.dumps({
        "encoder": "benchmark", "encoder_options": {}, "dim": D, "normalized": True,
        "classes": list(range(CLASSES)), "class_names": [str(c) for c in range(CLASSES)],
        "dataset_id": "scale-benchmark"}))
    return MIXTURE


def measure(method: str, n: int, trace: bool) -> dict:
    """Run in this (fresh) process: fit once; time and RSS, or (trace) the heap peak."""
    if method in SAMPLING:
        return measure_sampling(method, n, trace)
    X = np.load(data_path(n), mmap_mode="r")
    y = np.load(data_path(n).with_suffix(".labels.npy"))
    # Imports outside the timed region: a fresh process would otherwise time dpsynth's
    # (and torch's) first import, about 2 s on these cores, as part of the fit.
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from dpsynth import DPSynthesizer

    calibration = None
    if method.startswith("dpsynth"):
        # The privacy calibration (dp-accounting's PLD search for the plan's noise scale)
        # is timed on its own: it depends on (eps, delta, the plan), not on the data, and
        # is made once per process and plan (cached); the fit below reuses it.
        synth = DPSynthesizer(1.0, 1e-5, random_state=0,
                              components_per_class=3 if method == "dpsynth-k3" else 1)
        start = time.perf_counter()
        synth.make_plan(D)
        calibration = round(time.perf_counter() - start, 2)
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    if method.startswith("dpsynth"):
        synth.fit_shards([(X, y)], classes=range(CLASSES))
    elif method == "sklearn-kmeans":
        KMeans(n_clusters=CLASSES, n_init=1, max_iter=20, random_state=0).fit(np.asarray(X))
    elif method == "sklearn-gmm-diag":
        GaussianMixture(n_components=CLASSES, covariance_type="diag", max_iter=20,
                        random_state=0).fit(np.asarray(X))
    seconds = time.perf_counter() - start
    if trace:
        return {"heap_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
    return {"method": method, "n": n, "d": D, "classes": CLASSES,
            "seconds": round(seconds, 2), "rss_peak_mb": peak_rss_mb()} | (
        {} if calibration is None else {"calibration_seconds": calibration})


def measure_sampling(method: str, n: int, trace: bool) -> dict:
    """Sample (in memory) or synthesize (streamed to disk) n records from the mixture, or
    draw them from the sklearn baseline; or time the first touch of an n x d array."""
    import shutil

    from dpsynth import DPSynthesizer, steps

    if method == "first-touch":
        # What writing n x d float32 into fresh memory costs this machine (page faults; on
        # a VM whose host backs memory lazily, far more than the writes): part of every
        # in-memory sample's first call.
        start = time.perf_counter()
        np.ones((n, D), np.float32)
        return {"method": method, "n": n, "d": D,
                "seconds": round(time.perf_counter() - start, 2)}
    if method == "sklearn-gmm-diag-sample":
        # The baseline sampler: GaussianMixture(diag) fitted (untimed) on the same 10k
        # data as dpsynth's mixture; .sample(n) returns float64 rows.
        from sklearn.mixture import GaussianMixture

        X = np.asarray(np.load(data_path(10_000), mmap_mode="r"))
        gmm = GaussianMixture(n_components=CLASSES, covariance_type="diag", max_iter=20,
                              random_state=0).fit(X)
        del X

        def draw() -> None:
            gmm.sample(n)
    else:
        synth = DPSynthesizer.load(MIXTURE)

        def draw() -> None:
            synth.sample(n, random_state=0)
    out = CACHE / f"synthetic-{os.getpid()}"
    parts = synthesize_parts(n) if method == "dpsynth-synthesize" else 1
    if trace:
        tracemalloc.start()
    seconds, extra = 0.0, {}
    try:
        if method == "dpsynth-synthesize":
            # The parts of one set (steps.synthesize_part, as the pipeline's fan-out writes
            # them), one after another; each is removed once written when the whole set
            # would not fit on this disk. Removal is not timed.
            for part in range(parts):
                start = time.perf_counter()
                steps.synthesize_part(MIXTURE, out, part=part, parts=parts, n=n,
                                      random_state=0)
                seconds += time.perf_counter() - start
                shutil.rmtree(out, ignore_errors=True)
            extra = {"parts": parts} if parts > 1 else {}
        else:
            start = time.perf_counter()
            draw()
            seconds = time.perf_counter() - start
            if method == "dpsynth-sample" and not trace:
                # the same call again: memory the process has touched before
                again = []
                for _ in range(3):
                    start = time.perf_counter()
                    draw()
                    again.append(time.perf_counter() - start)
                extra = {"seconds_again_median": round(float(np.median(again)), 2)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if trace:
        return {"heap_peak_mb": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
    return {"method": method, "n": n, "d": D, "classes": CLASSES,
            "seconds": round(seconds, 2), "rss_peak_mb": peak_rss_mb()} | extra


def synthesize_parts(n: int) -> int:
    """Parts to write an n-row synthetic set in, one after another, so that one part fits
    in 80% of the free disk under CACHE (1 when the whole set does)."""
    import shutil

    need = n * (D * 4 + 8) * 1.01  # float32 rows, int64 labels, manifests
    free = shutil.disk_usage(CACHE).free * 0.8
    return max(1, math.ceil(need / free))


def warm_page_cache(path: Path) -> None:
    """Read ``path`` once, so that the timed runs find it in the page cache: otherwise the
    first method timed at a size also times the disk (51 MB at 10k, 5.1 GB at 1M; 300 MB/s
    here), and the methods after it do not."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def run_timed(method: str, n: int, repeats: int) -> dict:
    """The untraced run, ``repeats`` times in fresh processes: the median run's row, with
    every run's seconds in seconds_runs when there is more than one."""
    runs = sorted((run_one(method, n, trace=False) for _ in range(repeats)),
                  key=lambda row: row["seconds"])
    row = runs[len(runs) // 2]
    return row if repeats == 1 else row | {"seconds_runs": [r["seconds"] for r in runs]}


def plot(result: dict, path: Path) -> None:
    """Fit time against n (left) and sampling time against n (right), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (fit_ax, sample_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = ((fit_ax, ("dpsynth", "dpsynth-k3", "sklearn-kmeans", "sklearn-gmm-diag"),
               "fit on n records (d = 1280)"),
              (sample_ax, ("dpsynth-sample", "dpsynth-synthesize", "sklearn-gmm-diag-sample",
                           "first-touch"), "draw n records (d = 1280)"))
    for ax, methods, title in groups:
        for method in methods:
            rows = sorted((r for r in result["rows"]
                           if r["method"] == method and "seconds" in r),
                          key=lambda r: r["n"])
            if rows:
                ax.plot([r["n"] for r in rows], [r["seconds"] for r in rows], marker="o",
                        label=method, linestyle=":" if method == "first-touch" else "-")
        ax.set(xscale="log", yscale="log", xlabel="n", ylabel="seconds", title=title)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(result["setup"]["machine"] + "; " + result["setup"].get("note", ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_one(method: str, n: int, trace: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", method, str(n)]
                         + (["--trace"] if trace else []),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+",
                    default=[10_000, 60_000, 100_000, 1_000_000], help="fit sizes")
    ap.add_argument("--methods", nargs="*",
                    default=["dpsynth", "dpsynth-k3", "sklearn-kmeans", "sklearn-gmm-diag"])
    ap.add_argument("--sample-sizes", type=int, nargs="*", default=[60_000, 1_000_000],
                    help="n of DPSynthesizer.sample (in memory) and of the sklearn sampler")
    ap.add_argument("--synthesize-sizes", type=int, nargs="*", default=[10_000_000],
                    help="n of steps.synthesize (streamed to disk: 5 kB a row)")
    ap.add_argument("--note", default="", help="recorded in setup (e.g. a loaded machine)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed runs per point (fresh processes; the median is reported)")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw docs/scale.png from --out's JSON, run nothing")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/scale.json (scale-quick.json with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.sizes = [s for s in args.sizes if s <= 100_000]
        args.synthesize_sizes = [s for s in args.synthesize_sizes if s <= 1_000_000]
        args.sample_sizes = [s for s in args.sample_sizes if s <= 100_000]
    args.out = args.out or str(ROOT / "benchmarks/results" /
                               ("scale-quick.json" if args.quick else "scale.json"))
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.trace)))
        return
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), PLOT)
        print(f"wrote {PLOT}")
        return
    rows = []
    for n in args.sizes:
        make_data(n)
        warm_page_cache(data_path(n))
        for method in args.methods:
            if method.startswith("sklearn") and n * D * 8 > SKLEARN_MAX_BYTES:
                rows.append({"method": method, "n": n, "d": D, "skipped":
                             f"needs the {n * D * 8 / 2**30:.0f} GiB float64 input in memory"})
                print(rows[-1], flush=True)
                continue
            rows.append({**run_timed(method, n, args.repeats),
                         **run_one(method, n, trace=True)})
            print(rows[-1], flush=True)
    if args.sample_sizes or args.synthesize_sizes:
        make_mixture()
        warm_page_cache(data_path(10_000))  # the sklearn sampler's fit reads it
    for method, sizes in (("dpsynth-sample", args.sample_sizes),
                          ("first-touch", args.sample_sizes),
                          ("sklearn-gmm-diag-sample", args.sample_sizes),
                          ("dpsynth-synthesize", args.synthesize_sizes)):
        for n in sizes:
            if method.startswith("sklearn") and n * D * 8 > SKLEARN_MAX_BYTES:
                rows.append({"method": method, "n": n, "d": D, "skipped":
                             f"returns {n * D * 8 / 2**30:.0f} GiB of float64 samples"})
            else:
                # A 10M synthesize takes minutes a run: timed once whatever --repeats.
                repeats = 1 if method == "dpsynth-synthesize" else args.repeats
                rows.append({**run_timed(method, n, repeats)} | (
                    {} if method == "first-touch" else run_one(method, n, trace=True)))
            print(rows[-1], flush=True)
    result = {"rows": rows, "setup": {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "dpsynth_config": "eps=1, delta=1e-5, defaults (lowrank, subspace_dim=64, k=1); "
                          "dpsynth-k3: components_per_class=3",
        "sklearn": "KMeans(n_clusters=10, n_init=1, max_iter=20); "
                   "GaussianMixture(10, 'diag', max_iter=20)",
        "sampling": "dpsynth-sample / dpsynth-synthesize: the mixture of the dpsynth config "
                    "fitted on the 10k data (normalize=True); synthesize writes 65,536-row "
                    "float32 shards",
        "command": shlex.join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
        **({"note": args.note} if args.note else {}),
    }}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    if Path(args.out).name == "scale.json":  # the committed run draws the committed plot
        plot(result, PLOT)
        print(f"wrote {PLOT}")


if __name__ == "__main__":
    main()
