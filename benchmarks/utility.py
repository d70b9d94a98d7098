"""Utility benchmark on Fashion-MNIST / EfficientNet-Lite0 embeddings (issue 2).

utility.json is made by two commands: the full run (every row, one noise draw; issue 15,
2026-12-01) and then issue 26's draw run, which measures the peer and design rows and
re-measures dpsynth and the tuning-accounted baselines with 3 noise draws each and merges
them into the file (each row says which command and date made it; ``n_draws`` how many
draws it holds). The 160 px file is made the same way at eps 0.5 / 1 / 2:

    .venv/bin/python benchmarks/utility.py            # full run (~1 h on 2 cores)
    nice -n 10 .venv/bin/python benchmarks/utility.py --methods dpsynth-default peers \
        accounted designs --eps 0.25 0.5 1 2 4 --draws 3 --jobs 2 --merge
                                # issue 26: every draw row, 3 draws (run in pieces:
                                # setup.merged_runs has each piece's command and time;
                                # an interrupted run continues with --resume, or merges
                                # what finished with --resume merge-only; --only re-runs
                                # chosen tasks, e.g. one new design row)
    .venv/bin/python benchmarks/utility.py --quick    # smoke run on a subset
    .venv/bin/python benchmarks/utility.py --image-size 160 --eps 0.25 0.5 1 2 inf
                                # the pipeline's encoder size (issue 16): utility-160px.json
    nice -n 10 .venv/bin/python benchmarks/utility.py --image-size 160 --methods \
        dpsynth-default peers accounted designs --eps 0.5 1 2 --draws 3 --jobs 2 --merge
                                # issue 26's draw rows at 160 px

Methods, all on the same embeddings, the same two-layer MLP and delta = 1e-5:
  dpsynth                   DPSynthesizer with its default configuration, fixed before
                            looking at any data: the whole pipeline is (eps, delta)-DP.
  dpsynth-tuned             best of the dpsynth grid on the validation split; the tuning's
                            privacy cost is NOT accounted (as papers report).
  dp-sgd                    Opacus DP-SGD, best of its grid on the validation split, tuning
                            NOT accounted (what papers report).
  dp-sgd-tuning-accounted   every grid configuration trained under a share of the budget
                            (all runs + a Gaussian noisy-max selection on the validation
                            split composed with PLD to hit eps): fully (eps, delta)-DP.
  dp-class-means            noisy class means, nearest-mean classifier (k = 1, no covariance).
  dp-ls                     DP least squares (Mehta et al., TMLR 2023): ridge regression on
                            one-hot labels from one noisy release of [X^T X | X^T Y]; the
                            ridge (DPLS_RIDGE_SCALES) is post-processing of that one release,
                            best on validation, the selection NOT accounted.
  dp-ls-tuning-accounted    the same release at what a Gaussian noisy-max selection of the
                            ridge on validation leaves: fully (eps, delta)-DP.
  dp-fc                     full-batch DP gradient descent on a softmax linear model,
                            preconditioned by a noisy Gram (its own share of the budget);
                            every DPFC_GRID entry trained at the full eps, best on
                            validation, tuning NOT accounted.
  dp-fc-tuning-accounted    every DPFC_GRID entry trained at one noise level such that all
                            of them + the noisy-max selection compose (PLD) to eps.
  dp-sgd-m<M>               "many downstream models": a user who trains M models on one eps
                            budget trains each at the noise multiplier at which M runs
                            compose (PLD) to eps. The config is the one the dp-sgd row chose
                            (tuning free: favours DP-SGD). Accuracy is the MEAN test accuracy
                            of the models trained; they are identically distributed, so at
                            most MANY_MODELS_TRAINED of the M are trained (all M for M <= 4;
                            4 of the 16 at M = 16; 1 in --quick). M = 1 is the dp-sgd row's
                            own model. dpsynth's M models are free: its row stays the same.
  diagnostic-lda-from-release   plug-in LDA from the default dpsynth fit's released class
                            means, pooled covariance (V A V^T + residual) and weights.
  diagnostic-dpls-from-release  ridge least squares from the same fit's released Gram
                            eigenpairs + trace and class sums (ridge best on validation).
                            Both use only released quantities: no extra budget. Compare with
                            the dpsynth row (the MLP on its samples).
  nonprivate-mlp            the MLP on real training embeddings (ceiling).

Issue 26's draw groups (``--draws`` independent noise draws per cell, the draw index seeding
the public randomness and the MLP; a row holds the mean as ``accuracy`` and ``std``, ``min``,
``max``, ``draws``), run in ``--jobs`` worker processes, one torch thread each:
  dpsynth-default           the ``dpsynth`` row (DPSynthesizer defaults) with draws.
  peers                     the peer synthesizers, same split, same MLP, same delta, all
                            hyperparameters fixed before the run (no private tuning, so no
                            tuning to account); privacy arguments in
                            src/dpsynth/evaluation/peer_synthesizers.py:
    dp-merf                 DP-MERF (Harder et al., AISTATS 2021): generator fitted to a DP
                            class-conditional random-Fourier-feature mean embedding (PEER_MERF).
    private-evolution       Private Evolution (Lin et al., ICLR 2024) in embedding space,
                            public-data-free: Gaussian variation, DP nearest-neighbour votes
                            composed over T iterations (PEER_PE).
    dpsynth-kmeans          the seed paper's many-cluster form: DPSynthesizer with
                            components_per_class = k from the public eps (kmeans_k: 5 below
                            eps 1, 10 below eps 4, else 20), its DP k-means (LSH coreset +
                            DP Lloyd) feeding the mixture; the rest of the defaults.
  accounted                 dp-ls-tuning-accounted and dp-fc-tuning-accounted (one task,
                            ``accounted``) and dp-sgd-tuning-accounted (its own task), with
                            draws; each DP-SGD draw seeds its models' torch noise apart.
  designs                   benchmarks/method_v3.py's ``DESIGN_ROWS`` (issue 26 items 2/3),
                            each callable(X_train, y_train, eps, delta, seed) -> (X_syn, y_syn)
                            scored by this module's MLP; rows only when that module exposes it.
``--only TASK ...`` runs only those tasks of the groups (e.g. one new design row without
re-running the others). ``--merge`` replaces the rows this run measured in the existing
--out file and keeps the others, adding to each older row the command and date that made
it.

Hyperparameters are chosen on a validation split carved from the training set (6,000
records, stratified, seed 0); the test split is only used for the reported accuracy.
Writes benchmarks/results/utility.json, docs/utility.png and docs/many_models.png (at
64 px, the local run's encoder size); other sizes write utility-<size>px.json,
docs/utility-<size>px.png and docs/many_models-<size>px.png. ``--methods`` runs a subset.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path

import dp_accounting
import numpy as np
import torch
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import load_embeddings  # noqa: E402

from dpsynth import DPSynthesizer  # noqa: E402
from dpsynth.evaluation import TwoLayerMLP  # noqa: E402
from dpsynth.evaluation.baselines import (  # noqa: E402
    DPFCConfig,
    DPSGDConfig,
    dp_class_means,
    dp_fc,
    dp_least_squares,
    dpsgd_noise_multiplier,
    least_squares_statistics,
    linear_predict,
    model_accuracy,
    nearest_mean_predict,
    noisy_argmax,
    released_lda,
    released_least_squares,
    selection_multiplier,
    selection_sigma_records,
    train_dpsgd,
)
from dpsynth.evaluation.peer_synthesizers import DPMERF, PrivateEvolution  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf]
DELTA = 1e-5
MLP = {"hidden": 512, "epochs": 10, "lr": 1e-3, "batch_size": 256}
#: The first grid entry is the default configuration: its test accuracy is the "dpsynth" row.
DPSYNTH_GRID: list[dict] = [
    {},
    {"subspace_dim": 128},
    {"second_moment_clip": 0.8},
    {"components_per_class": 3},
]
DPSGD_GRID = [
    DPSGDConfig(hidden=0, lr=1.0), DPSGDConfig(hidden=0, lr=2.0), DPSGDConfig(hidden=0, lr=4.0),
    DPSGDConfig(hidden=MLP["hidden"], lr=1.0),
]
#: Noise std, in validation records, of the noisy-max selection among a grid (DP-SGD,
#: DP-LS, DP-FC).
SELECTION_SIGMA_RECORDS = 30.0
#: DP-LS ridges, in units of the Gram noise's scale sigma * sqrt(d) (1 without noise).
DPLS_RIDGE_SCALES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
#: DP-FC grid, fixed from a --quick exploration (5,400 records, eps 0.25/1/inf) before any
#: full run; lr = 1 is a Newton step at the start.
DPFC_GRID = [
    DPFCConfig(steps=10, lr=0.5, ridge_scale=1.0), DPFCConfig(steps=10, lr=1.0, ridge_scale=1.0),
    DPFCConfig(steps=30, lr=0.25, ridge_scale=1.0), DPFCConfig(steps=30, lr=0.5, ridge_scale=4.0),
]
#: Numbers of downstream models M of the dp-sgd-m<M> rows, and how many of them are
#: trained (identically distributed: the mean of a few estimates the mean of all).
MANY_MODELS = (1, 4, 16)
MANY_MODELS_TRAINED = 4
METHODS = ("dpsynth", "dp-class-means", "dp-sgd", "dp-ls", "dp-fc", "many-models",
           "diagnostic")
#: Issue 26's groups, measured with --draws noise draws per cell (module docstring).
DRAW_GROUPS = ("dpsynth-default", "peers", "accounted", "designs")
#: The peers group's rows (one task each).
PEER_SYNTHESIZERS = ("dpsynth-kmeans", "dp-merf", "private-evolution")
#: The rows the ``accounted`` task makes, each with its fit and its grid (one task: each
#: takes seconds, against DP-SGD's minutes).
ACCOUNTED_TASK = {"dp-ls-tuning-accounted": (dp_least_squares, DPLS_RIDGE_SCALES),
                  "dp-fc-tuning-accounted": (dp_fc, DPFC_GRID)}
#: The accounted group's rows: the ``accounted`` task's and DP-SGD's (its own task).
ACCOUNTED_BASELINES = (*ACCOUNTED_TASK, "dp-sgd-tuning-accounted")
#: DP-MERF's constants, fixed before the run. lengthscale ~ the median pairwise distance
#: (1.10) of 1,000 TEST-split embeddings at 64 px: the paper's median heuristic, taken on
#: the held-out split (public by DESIGN.md), never on the private one.
PEER_MERF = {"n_frequencies": 1000, "lengthscale": 1.0, "steps": 400, "batch_per_class": 64}
#: Private Evolution's constants, fixed before the run.
PEER_PE = {"population": 200, "iterations": 10, "variation_start": 0.6,
           "variation_end": 0.1, "threshold": 2.0}


def kmeans_k(eps: float) -> int:
    """Components per class of the dpsynth-kmeans row, from the public eps alone: more
    budget affords more clusters (5 below eps 1, 10 below eps 4, else 20)."""
    return 5 if eps < 1 else 10 if eps < 4 else 20


def design_rows() -> dict:
    """benchmarks/method_v3.py's DESIGN_ROWS, or {} when it is absent or does not expose
    them (an import guarded so that this benchmark never depends on that one)."""
    try:
        import method_v3
    except Exception as exc:  # noqa: BLE001 - any failure means: no design rows
        print(f"no design rows: method_v3 not importable ({exc!r})", flush=True)
        return {}
    return dict(getattr(method_v3, "DESIGN_ROWS", {}) or {})


def task_of(method: str) -> str:
    """The draw task that makes the row ``method``."""
    return "accounted" if method in ACCOUNTED_TASK else method


def draw_methods(groups: set[str]) -> list[str]:
    """The rows the draw groups make (one task per row, eps and draw)."""
    out = []
    if "dpsynth-default" in groups:
        out.append("dpsynth")
    if "peers" in groups:
        out += list(PEER_SYNTHESIZERS)
    if "designs" in groups:
        out += list(design_rows())
    if "accounted" in groups:
        out += ["accounted", "dp-sgd-tuning-accounted"]
    return out


_WORKER: dict = {}


def _worker_init(image_size: int, quick: bool) -> None:
    torch.set_num_threads(1)
    X_all, y_all = load_embeddings("train", image_size)
    X_test, y_test = load_embeddings("test", image_size)
    if quick:
        X_all, y_all, X_test, y_test = X_all[:6000], y_all[:6000], X_test[:2000], y_test[:2000]
    X_tr, X_val, y_tr, y_val = train_test_split(X_all, y_all, test_size=0.1, random_state=0,
                                                stratify=y_all)
    _WORKER.update(X_tr=X_tr, X_val=X_val, y_tr=y_tr, y_val=y_val, X_test=X_test,
                   y_test=y_test)


def run_draw(task: tuple[str, float, int]) -> list[dict]:
    """One (row, eps, draw) cell: fit, sample len(X_train) rows, train the MLP (seeded by
    the draw), score on test. The DP noise is from OS entropy: every draw is fresh."""
    method, eps, draw = task
    w = _WORKER
    X_tr, y_tr, X_test, y_test = w["X_tr"], w["y_tr"], w["X_test"], w["y_test"]
    classes = np.arange(10)
    t0 = time.perf_counter()
    extra: dict = {}

    def mlp_score(X_syn, y_syn) -> float:
        model = TwoLayerMLP(random_state=draw, **MLP).fit(X_syn, y_syn, classes=classes)
        return model.score(X_test, y_test)

    if method == "accounted":
        out = []
        for name, (fn, grid) in ACCOUNTED_TASK.items():
            sel = fn(X_tr, y_tr, 10, eps, DELTA, grid, w["X_val"], w["y_val"],
                     account_tuning=True,
                     selection_sigma_records=selection_sigma_records(eps, DELTA, len(grid)))
            out.append({"method": name, "epsilon": eps, "draw": draw,
                        "accuracy": float((linear_predict(sel.weights, X_test)
                                           == y_test).mean()),
                        "seconds": round(time.perf_counter() - t0)})
        return out
    if method == "dp-sgd-tuning-accounted":
        acc = dpsgd_accounted(eps, X_tr, y_tr, w["X_val"], w["y_val"], X_test, y_test, 10,
                              draw=draw)
        return [{"method": method, "epsilon": eps, "draw": draw, "accuracy": acc,
                 "seconds": round(time.perf_counter() - t0)}]
    if method == "dpsynth":
        synth = DPSynthesizer(eps, DELTA, random_state=draw).fit(X_tr, y_tr, classes=classes)
        X_syn, y_syn = synth.sample(len(X_tr))
    elif method == "dpsynth-kmeans":
        k = kmeans_k(eps)
        synth = DPSynthesizer(eps, DELTA, random_state=draw, components_per_class=k).fit(
            X_tr, y_tr, classes=classes)
        X_syn, y_syn = synth.sample(len(X_tr))
        extra = {"components_per_class": k,
                 "components_kept": int(len(np.asarray(synth.weights_)))}
    elif method == "dp-merf":
        synth = DPMERF(eps, DELTA, random_state=draw, **PEER_MERF).fit(X_tr, y_tr, classes)
        X_syn, y_syn = synth.sample(len(X_tr))
        extra = {"final_loss": round(synth.final_loss_, 5),
                 "epsilon_pld": round(synth.privacy_plan_.epsilon_pld, 4)}
    elif method == "private-evolution":
        synth = PrivateEvolution(eps, DELTA, random_state=draw, **PEER_PE).fit(
            X_tr, y_tr, classes)
        X_syn, y_syn = synth.sample(len(X_tr))
        extra = {"kept_last": synth.history_[-1]["kept"],
                 "epsilon_pld": round(synth.privacy_plan_.epsilon_pld, 4)}
    else:
        X_syn, y_syn = design_rows()[method](X_tr, y_tr, eps, DELTA, draw)
        extra = {"design": "benchmarks/method_v3.py DESIGN_ROWS"}
    acc = mlp_score(X_syn, y_syn)
    return [{"method": method, "epsilon": eps, "draw": draw, "accuracy": acc,
             "seconds": round(time.perf_counter() - t0), **extra}]


def run_draw_groups(groups: set[str], epsilons: list[float], draws: int, jobs: int,
                    image_size: int, quick: bool, log: Path, resume: str | None,
                    only: list[str] | None = None) -> list[dict]:
    """Every (row, eps, draw) cell of the draw groups, in ``jobs`` processes; each result
    is appended to ``log`` (JSON lines) as it comes, so that an interrupted run resumes
    with ``--resume`` instead of starting over."""
    done = []
    if resume and log.exists():
        done = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    elif log.exists():
        log.unlink()
    methods = [m for m in draw_methods(groups) if not only or m in only]
    if only and not methods:
        raise SystemExit(f"--only {' '.join(only)}: none of these is a task of the groups "
                         f"{sorted(groups)} ({', '.join(draw_methods(groups))})")
    wanted = set(methods)
    done = [r for r in done if r["epsilon"] in epsilons and r["draw"] < draws
            and task_of(r["method"]) in wanted]
    have = {(task_of(r["method"]), r["epsilon"], r["draw"]) for r in done}
    tasks = [(m, eps, d) for d in range(draws) for eps in epsilons if not math.isinf(eps)
             for m in methods if (m, eps, d) not in have]
    # The slowest tasks (DP-SGD trains every grid model) start first, so that the pool's
    # last minutes are not one process finishing a long cell alone. Then cells the file has
    # no single-draw row for (the peers, the designs), the central eps first: an
    # interrupted run has the new rows at every eps before repeats.
    order = {e: i for i, e in enumerate(sorted(epsilons, key=lambda e: abs(math.log(e))))}
    tasks.sort(key=lambda t: (t[0] != "dp-sgd-tuning-accounted", t[2],
                              t[0] in ("dpsynth", "accounted"), order[t[1]]))
    if resume == "merge-only":
        tasks = []
    print(f"{len(tasks)} cells to run ({len(have)} resumed) in {jobs} processes", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_worker_init, initargs=(image_size, quick)) as pool:
        for rows in pool.imap_unordered(run_draw, tasks):
            with log.open("a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
                    print(f"[{time.perf_counter() - t0:6.0f}s] {r}", flush=True)
            done += rows
    return done


def aggregate_draws(results: list[dict], command: str, date: str) -> list[dict]:
    """One row per (method, eps): mean accuracy over the draws and their spread."""
    cells: dict = {}
    for r in results:
        cells.setdefault((r["method"], r["epsilon"]), []).append(r)
    rows = []
    for (method, eps), cell in cells.items():
        cell.sort(key=lambda r: r["draw"])
        accs = np.array([r["accuracy"] for r in cell])
        extra = {k: v for k, v in cell[0].items()
                 if k not in ("method", "epsilon", "draw", "accuracy", "seconds")}
        rows.append({"method": method, "epsilon": eps, "accuracy": round(float(accs.mean()), 4),
                     "std": round(float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, 4),
                     "min": round(float(accs.min()), 4), "max": round(float(accs.max()), 4),
                     "draws": [round(float(a), 4) for a in accs], "n_draws": len(accs),
                     **extra, "command": command, "date": date})
    return rows


def file_date(path: Path) -> str:
    """The date of the last commit that touched ``path`` (the provenance of its rows)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%ad %h", "--date=short", "--",
                              str(path)], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out.replace(" ", " (commit ") + ")" if out else "unknown"


def merge_rows(path: Path, new_rows: list[dict], run_setup: dict) -> dict:
    """The results file at ``path`` with ``new_rows`` replacing the rows of the same
    (method, eps) and every older row carrying the command and date that made it."""
    old = json.loads(path.read_text())
    setup = old["setup"]
    older_command, older_date = setup.get("command", "unknown"), file_date(path)
    replaced = {(r["method"], str(r["epsilon"])) for r in new_rows}
    rows = []
    for r in old["rows"]:
        if (r["method"], str(r["epsilon"])) in replaced:
            continue
        rows.append({**r, "command": r.get("command", older_command),
                     "date": r.get("date", older_date)})
    setup.setdefault("merged_runs", []).append(run_setup)
    return {**old, "rows": rows + new_rows, "setup": setup}


def dpsgd_tuning_free(eps: float, X, y, X_val, y_val, n_classes: int, on_config=None):
    """Every grid configuration trained at the full (eps, delta), the tuning's cost NOT
    accounted; the best on validation as (val_accuracy, config, model, noise multiplier).
    ``on_config(config, val_accuracy)`` sees every configuration."""
    q, steps = DPSGD_GRID[0].schedule(len(X))
    sigma = dpsgd_noise_multiplier(q, steps, eps, DELTA)
    best = None
    for i, cfg in enumerate(DPSGD_GRID):
        model = train_dpsgd(X, y, n_classes, cfg, sigma, seed=i)
        val = model_accuracy(model, X_val, y_val)
        if on_config is not None:
            on_config(cfg, val)
        if best is None or val > best[0]:
            best = (val, cfg, model)
    return (*best, sigma)


def dpsgd_accounted(eps: float, X, y, X_val, y_val, X_test, y_test, n_classes: int,
                    draw: int = 0) -> float:
    """All grid configs trained + noisy-max selection, composed to (eps, delta). Opacus
    draws its noise from torch's generator, which ``train_dpsgd`` seeds: ``draw`` moves
    every model's seed, so that draws are independent (draw 0: the full run's seeds)."""
    m = len(DPSGD_GRID)
    cfg0 = DPSGD_GRID[0]
    q, steps = cfg0.schedule(len(X))
    assert all(c.batch_size == cfg0.batch_size and c.epochs == cfg0.epochs for c in DPSGD_GRID)
    selection = dp_accounting.GaussianDpEvent(selection_multiplier(m, SELECTION_SIGMA_RECORDS))
    sigma = (0.0 if math.isinf(eps) else
             dpsgd_noise_multiplier(q, steps, eps, DELTA, runs=m, extra_event=selection))
    models = [train_dpsgd(X, y, n_classes, cfg, sigma, seed=i + 1000 * draw)
              for i, cfg in enumerate(DPSGD_GRID)]
    best = noisy_argmax([model_accuracy(mo, X_val, y_val) * len(y_val) for mo in models],
                        0.0 if math.isinf(eps) else SELECTION_SIGMA_RECORDS,
                        np.random.default_rng())
    return model_accuracy(models[best], X_test, y_test)


def dpsgd_many_models(eps: float, cfg: DPSGDConfig, m: int, n_trained: int, X, y,
                      X_test, y_test, n_classes: int) -> tuple[float, float]:
    """(mean test accuracy of ``n_trained`` of ``m`` DP-SGD models trained at the noise
    multiplier at which m runs compose to (eps, delta), that multiplier)."""
    q, steps = cfg.schedule(len(X))
    sigma = dpsgd_noise_multiplier(q, steps, eps, DELTA, runs=m)
    accs = [model_accuracy(train_dpsgd(X, y, n_classes, cfg, sigma, seed=1000 * m + j),
                           X_test, y_test) for j in range(n_trained)]
    return float(np.mean(accs)), sigma


def release_diagnostics(synth, X_val, y_val, X_test, y_test, classes) -> dict[str, dict]:
    """Closed-form classifiers from a fitted DPSynthesizer's released statistics.

    Only released (already DP) attributes are read, so these cost no budget beyond the
    synthesizer's own fit. The DP-LS ridge is chosen on validation (not accounted, as for
    dpsynth-tuned)."""
    out: dict[str, dict] = {}
    coef, intercept, component_class = released_lda(synth)
    pred = classes[component_class[linear_predict(coef, X_test, intercept)]]
    out["diagnostic-lda-from-release"] = {"accuracy": float((pred == y_test).mean())}
    ls = released_least_squares(synth)
    if ls is not None:
        solved = [(float((classes[linear_predict(W, X_val)] == y_val).mean()), c, W)
                  for c in DPLS_RIDGE_SCALES for W in [ls.solve(ls.ridge(c))]]
        val, c, W = max(solved, key=lambda t: t[0])
        out["diagnostic-dpls-from-release"] = {
            "accuracy": float((classes[linear_predict(W, X_test)] == y_test).mean()),
            "ridge_scale": c, "val_accuracy": round(val, 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="subset smoke run")
    ap.add_argument("--image-size", type=int, default=64,
                    help="EfficientNet-Lite0 input size in px (the pipeline encodes at 160)")
    ap.add_argument("--eps", type=float, nargs="+", default=EPSILONS,
                    help="epsilons to run ('inf' for the non-private dpsynth rows)")
    ap.add_argument("--methods", nargs="+", choices=METHODS + DRAW_GROUPS,
                    default=list(METHODS),
                    help="run only these groups of rows (nonprivate-mlp runs unless only "
                         "draw groups are run with --merge)")
    ap.add_argument("--draws", type=int, default=1,
                    help="noise draws per cell of the draw groups (issue 26: 3)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes for the draw groups (one torch thread each)")
    ap.add_argument("--only", nargs="+", metavar="TASK",
                    help="run only these tasks of the draw groups (dpsynth, dpsynth-kmeans, "
                         "dp-merf, private-evolution, the design rows, accounted, "
                         "dp-sgd-tuning-accounted)")
    ap.add_argument("--merge", action="store_true",
                    help="replace this run's rows in the existing --out file, keep the rest")
    ap.add_argument("--resume", choices=("run", "merge-only"), nargs="?", const="run",
                    help="reuse the draw groups' finished cells of an interrupted run "
                         "(benchmarks/cache/<out stem>-draws.jsonl); 'merge-only' runs no "
                         "new cell (rows then hold the draws that finished: see n_draws)")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/utility.json at 64 px, utility-<size>px"
                         ".json at other sizes (utility-quick.json with --quick, so a smoke "
                         "run never overwrites the committed results)")
    ap.add_argument("--table", action="store_true",
                    help="print docs/results.md's peer table (Markdown) of --out, run nothing")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw the plots of --out from its rows, running nothing")
    args = ap.parse_args()
    stem = "utility" if args.image_size == 64 else f"utility-{args.image_size}px"
    args.out = args.out or str(ROOT / "benchmarks/results" /
                               ("utility-quick.json" if args.quick else f"{stem}.json"))
    if args.table:
        saved = json.loads(Path(args.out).read_text())["rows"]
        print(peer_table(saved) + "\n\n" + margin_table(saved))
        return
    if args.plot_only:
        saved = json.loads(Path(args.out).read_text())["rows"]
        plot(saved, ROOT / "docs" / f"{Path(args.out).stem}.png", args.image_size)
        if any(r["method"].startswith("dp-sgd-m") for r in saved):
            plot_many_models(saved, many_models_path(args.image_size))
        return
    methods = set(args.methods)
    groups = methods & set(DRAW_GROUPS)
    methods -= groups
    command = "python " + " ".join(["benchmarks/utility.py", *sys.argv[1:]])
    today = datetime.date.today().isoformat()
    draw_results = []
    t_draws = time.perf_counter()
    if groups:
        eps_draws = [1.0] if args.quick else [e for e in args.eps if not math.isinf(e)]
        draw_results = run_draw_groups(
            groups, eps_draws, args.draws, args.jobs, args.image_size, args.quick,
            ROOT / "benchmarks/cache" / f"{Path(args.out).stem}-draws.jsonl", args.resume,
            args.only)
    draw_rows = aggregate_draws(draw_results, command, today)
    if args.merge and not methods:
        if not Path(args.out).exists():
            raise SystemExit(f"--merge: {args.out} does not exist")
        run_setup = {"command": command, "date": today, "methods": sorted(groups),
                     "only": args.only,
                     "epsilons": sorted({r["epsilon"] for r in draw_rows}),
                     "draws": args.draws, "peer_merf": PEER_MERF, "peer_pe": PEER_PE,
                     "kmeans_k": {str(e): kmeans_k(e) for e in args.eps
                                  if not math.isinf(e)},
                     "design_rows": sorted(design_rows()) if "designs" in groups else [],
                     "machine": f"{platform.machine()}, {args.jobs} processes x 1 torch "
                                f"thread, {platform.python_version()}",
                     "seconds": round(time.perf_counter() - t_draws)}
        result = merge_rows(Path(args.out), draw_rows, run_setup)
        Path(args.out).write_text(json.dumps(result, indent=2))
        if not args.quick:
            plot(result["rows"], ROOT / "docs" / f"{Path(args.out).stem}.png", args.image_size)
        print(f"merged {len(draw_rows)} rows into {args.out}")
        return
    torch.set_num_threads(2)
    X_all, y_all = load_embeddings("train", args.image_size)
    X_test, y_test = load_embeddings("test", args.image_size)
    epsilons = args.eps
    if args.quick:
        X_all, y_all, X_test, y_test = X_all[:6000], y_all[:6000], X_test[:2000], y_test[:2000]
        epsilons = [1.0, math.inf]
    classes = np.arange(10)
    X_tr, X_val, y_tr, y_val = train_test_split(X_all, y_all, test_size=0.1, random_state=0,
                                                stratify=y_all)
    rows, grid_log = [], []
    t0 = time.perf_counter()

    def add(method: str, eps: float, acc: float, **extra) -> None:
        row = {"method": method, "epsilon": "inf" if math.isinf(eps) else eps,
               "accuracy": round(acc, 4), **extra}
        rows.append(row)
        print(f"[{time.perf_counter() - t0:6.0f}s] {row}", flush=True)

    n_trained = 1 if args.quick else MANY_MODELS_TRAINED
    clf = TwoLayerMLP(random_state=0, **MLP).fit(X_tr, y_tr, classes=classes)
    add("nonprivate-mlp", math.inf, clf.score(X_test, y_test))
    # The exact statistics of DP-LS and DP-FC: one pass over the training set serves every
    # epsilon (each release adds fresh noise to them).
    ls_stats = (least_squares_statistics(X_tr, y_tr, 10)
                if methods & {"dp-ls", "dp-fc"} else None)
    for eps in epsilons:
        # Each grid point is fitted once; the first is the default ("dpsynth"); validation
        # picks "dpsynth-tuned". Both report the test accuracy of that very fit. The
        # diagnostic alone needs only the default fit.
        grid = DPSYNTH_GRID if "dpsynth" in methods else DPSYNTH_GRID[:1]
        best = None
        for i, config in enumerate(grid if methods & {"dpsynth", "diagnostic"} else []):
            synth = DPSynthesizer(eps, DELTA, random_state=0, **config).fit(
                X_tr, y_tr, classes=classes)
            X_syn, y_syn = synth.sample(len(X_tr))
            model = TwoLayerMLP(random_state=0, **MLP).fit(X_syn, y_syn, classes=classes)
            val = model.score(X_val, y_val)
            grid_log.append({"method": "dpsynth", "epsilon": str(eps), "config": config,
                             "val_accuracy": round(val, 4)})
            if i == 0:
                test_acc = model.score(X_test, y_test)
                if "dpsynth" in methods:
                    add("dpsynth", eps, test_acc)
                if "diagnostic" in methods:
                    for name, row in release_diagnostics(synth, X_val, y_val, X_test, y_test,
                                                         classes).items():
                        add(name, eps, row.pop("accuracy"), dpsynth_mlp=round(test_acc, 4),
                            **row)
            if best is None or val > best[0]:
                best = (val, config, model)
        if "dpsynth" in methods:
            add("dpsynth-tuned", eps, best[2].score(X_test, y_test), config=best[1],
                val_accuracy=round(best[0], 4))
        if "dp-class-means" in methods:
            means = dp_class_means(X_tr, y_tr, classes, eps, DELTA)
            add("dp-class-means", eps,
                float((nearest_mean_predict(means, classes, X_test) == y_test).mean()))
        # DP-LS and DP-FC also at eps = inf: the linear models' ceiling on these embeddings.
        for accounted in ([False] if math.isinf(eps) else [False, True]):
            suffix = "-tuning-accounted" if accounted else ""
            if "dp-ls" in methods:
                sel = dp_least_squares(X_tr, y_tr, 10, eps, DELTA, DPLS_RIDGE_SCALES, X_val,
                                       y_val, account_tuning=accounted,
                                       selection_sigma_records=selection_sigma_records(
                                           eps, DELTA, len(DPLS_RIDGE_SCALES)),
                                       stats=ls_stats)
                add("dp-ls" + suffix, eps,
                    float((linear_predict(sel.weights, X_test) == y_test).mean()),
                    ridge_scale=sel.config, val_accuracy=round(sel.val_accuracy, 4),
                    noise_multiplier=round(sel.noise_multiplier, 3))
            if "dp-fc" in methods:
                sel = dp_fc(X_tr, y_tr, 10, eps, DELTA, DPFC_GRID, X_val, y_val,
                            account_tuning=accounted,
                            selection_sigma_records=selection_sigma_records(
                                eps, DELTA, len(DPFC_GRID)),
                            gram=ls_stats[0])
                add("dp-fc" + suffix, eps,
                    float((linear_predict(sel.weights, X_test) == y_test).mean()),
                    config=sel.config.label(), val_accuracy=round(sel.val_accuracy, 4),
                    noise_multiplier=round(sel.noise_multiplier, 3))
        if not math.isinf(eps) and methods & {"dp-sgd", "many-models"}:
            _, cfg, model, sigma = dpsgd_tuning_free(
                eps, X_tr, y_tr, X_val, y_val, 10,
                on_config=lambda c, v, e=eps: grid_log.append(
                    {"method": "dp-sgd", "epsilon": str(e), "config": c.label(),
                     "val_accuracy": round(v, 4)}))
            dpsgd_acc = model_accuracy(model, X_test, y_test)
            if "dp-sgd" in methods:
                add("dp-sgd", eps, dpsgd_acc, config=cfg.label(),
                    noise_multiplier=round(sigma, 3))
                add("dp-sgd-tuning-accounted", eps,
                    dpsgd_accounted(eps, X_tr, y_tr, X_val, y_val, X_test, y_test, 10))
            if "many-models" in methods:
                for m in MANY_MODELS:
                    if m == 1:  # the dp-sgd row's model is one run at the full eps
                        add("dp-sgd-m1", eps, dpsgd_acc, config=cfg.label(), trained=1,
                            noise_multiplier=round(sigma, 3))
                        continue
                    k = min(m, n_trained)
                    acc, sigma_m = dpsgd_many_models(eps, cfg, m, k, X_tr, y_tr, X_test,
                                                     y_test, 10)
                    add(f"dp-sgd-m{m}", eps, acc, config=cfg.label(), trained=k,
                        noise_multiplier=round(sigma_m, 3))
    if draw_rows:  # the draw groups' rows replace the single-draw rows of the same cell
        replaced = {(r["method"], r["epsilon"]) for r in draw_rows}
        rows = [r for r in rows if (r["method"], r["epsilon"]) not in replaced] + draw_rows
    result = {
        "rows": rows,
        "grid": grid_log,
        "setup": {
            "data": "Fashion-MNIST (Debian dataset-fashion-mnist)",
            "encoder": f"efficientnet-lite0, {args.image_size} px, L2-normalised, 1280-d",
            "train": len(X_tr), "validation": len(X_val), "test": len(X_test),
            "delta": DELTA, "mlp": MLP,
            "dpsynth_default": {k: v for k, v in DPSynthesizer(1, DELTA).get_params().items()
                                if k not in ("epsilon", "delta")},
            "dpsynth_grid": DPSYNTH_GRID, "dpsgd_grid": [c.label() for c in DPSGD_GRID],
            "selection_sigma_records": SELECTION_SIGMA_RECORDS, "quick": args.quick,
            "dpls_ridge_scales": list(DPLS_RIDGE_SCALES),
            "dpfc_grid": [c.label() for c in DPFC_GRID],
            "many_models": list(MANY_MODELS),
            "many_models_trained": n_trained, "methods": sorted(methods),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                       f"{platform.python_version()}",
            "command": command, "date": today,
            "seconds": round(time.perf_counter() - t0),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if not args.quick:
        # Named after the results file, so that a partial --methods run written to another
        # --out never replaces the committed plot.
        plot(rows, ROOT / "docs" / f"{Path(args.out).stem}.png", args.image_size)
        if "many-models" in methods:
            # dpsynth's reference lines: this run's rows, else the committed full run's at
            # this size (a --methods dp-sgd many-models run has no dpsynth rows of its own).
            reference = rows
            committed = ROOT / "benchmarks/results" / f"{stem}.json"
            if "dpsynth" not in methods and committed.exists():
                reference = rows + [r for r in json.loads(committed.read_text())["rows"]
                                    if r["method"] == "dpsynth"]
            plot_many_models(reference, many_models_path(args.image_size))
    print(f"wrote {args.out}")


#: The peer table's rows: dpsynth, the peer synthesizers, the tuning-accounted baselines
#: (then method_v3's design rows, found by their ``design`` key).
PEER_TABLE = ("dpsynth", *PEER_SYNTHESIZERS, *ACCOUNTED_BASELINES)


def table_epsilons(rows: list[dict]) -> tuple[float, ...]:
    """The finite eps at which the dpsynth row has several draws (all its finite eps when
    none has): the columns of the peer table."""
    ours = [r for r in rows if r["method"] == "dpsynth" and r["epsilon"] != "inf"]
    drawn = [r for r in ours if r.get("n_draws", 1) > 1]
    return tuple(sorted({float(r["epsilon"]) for r in (drawn or ours)}))


def margin(ours: dict, other: dict) -> tuple[float, str]:
    """dpsynth's margin over ``other`` in points, and whether it is beyond the draw spread
    (every draw of one above every draw of the other); single-draw cells cannot say."""
    diff = 100 * (ours["accuracy"] - other["accuracy"])
    if ours.get("n_draws", 1) < 2 or other.get("n_draws", 1) < 2:
        verdict = "1 draw"
    elif ours["min"] > other["max"] or other["min"] > ours["max"]:
        verdict = "beyond spread"
    else:
        verdict = "within spread"
    return diff, verdict


def peer_cells(rows: list[dict], epsilons: tuple[float, ...] | None
               ) -> tuple[tuple[float, ...], dict, list[str]]:
    """(columns, (method, eps) -> row, the peer table's row names present in them)."""
    epsilons = epsilons or table_epsilons(rows)
    cell = {(r["method"], float(r["epsilon"])): r for r in rows if r["epsilon"] != "inf"}
    design = sorted({r["method"] for r in rows if "design" in r})
    names = [m for m in (*PEER_TABLE, *design) if any((m, e) in cell for e in epsilons)]
    return epsilons, cell, names


def peer_table(rows: list[dict], epsilons: tuple[float, ...] | None = None) -> str:
    """Markdown: test accuracy (%) per eps, mean +- std over the draws (range in brackets),
    dpsynth against every peer and tuning-accounted baseline, and dpsynth's margin to the
    best peer synthesizer and to the best tuning-accounted baseline, each marked beyond or
    within the draw spread. Single-draw cells say so (no spread)."""
    epsilons, cell, names = peer_cells(rows, epsilons)
    out = ["| method | " + " | ".join(f"eps={e:g}" for e in epsilons) + " |",
           "|---|" + "---|" * len(epsilons)]

    def fmt(r: dict | None) -> str:
        if r is None:
            return "-"
        if r.get("n_draws", 1) > 1:
            return (f"{100 * r['accuracy']:.1f} ± {100 * r['std']:.1f} "
                    f"[{100 * r['min']:.1f}, {100 * r['max']:.1f}]")
        return f"{100 * r['accuracy']:.1f} (1 draw)"

    for m in names:
        label = f"**{m}**" if m == "dpsynth" else m
        out.append(f"| {label} | " + " | ".join(fmt(cell.get((m, e))) for e in epsilons)
                   + " |")
    for label, group in (("dpsynth - best peer synthesizer", PEER_SYNTHESIZERS),
                         ("dpsynth - best tuning-accounted baseline", ACCOUNTED_BASELINES)):
        margins = []
        for e in epsilons:
            ours = cell.get(("dpsynth", e))
            others = [cell[(m, e)] for m in group if (m, e) in cell]
            if not (ours and others):
                margins.append("-")
                continue
            best = max(others, key=lambda r: r["accuracy"])
            diff, verdict = margin(ours, best)
            margins.append(f"{diff:+.1f} vs {best['method']} ({verdict})")
        out.append(f"| {label} | " + " | ".join(margins) + " |")
    return "\n".join(out)


def margin_table(rows: list[dict], epsilons: tuple[float, ...] | None = None) -> str:
    """Markdown: dpsynth minus each other row of the peer table, per eps, in points, with
    "beyond" when the two rows' draw ranges are disjoint and "within" when they overlap."""
    epsilons, cell, names = peer_cells(rows, epsilons)
    out = ["| dpsynth minus | " + " | ".join(f"eps {e:g}" for e in epsilons) + " |",
           "|---|" + "---|" * len(epsilons)]
    for m in (n for n in names if n != "dpsynth"):
        cells = []
        for e in epsilons:
            ours, other = cell.get(("dpsynth", e)), cell.get((m, e))
            if ours is None or other is None:
                cells.append("-")
                continue
            diff, verdict = margin(ours, other)
            cells.append(f"{diff:+.1f} ({verdict.removesuffix(' spread')})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def many_models_path(image_size: int) -> Path:
    """The many-models plot: docs/many_models.png at 64 px, ...-<size>px.png otherwise."""
    return ROOT / "docs" / ("many_models.png" if image_size == 64
                            else f"many_models-{image_size}px.png")


def method_family(method: str) -> str:
    """The row a variant belongs to: ``dp-fc`` for ``dp-fc-tuning-accounted``."""
    return method.removesuffix("-tuning-accounted").removesuffix("-tuned")


def plot(rows: list[dict], path: Path, image_size: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    # The dp-sgd-m<M> rows have their own plot (plot_many_models).
    methods = [m for m in dict.fromkeys(r["method"] for r in rows)
               if m != "nonprivate-mlp" and not m.startswith("dp-sgd-m")]
    finite = sorted({r["epsilon"] for r in rows if r["epsilon"] != "inf"})
    # One colour per family; the tuning-accounted row dashed in its family's colour, the
    # closed-form diagnostics dotted, dpsynth's default thickest (with the peers and designs
    # there are more than 10 families: tab20, so that no two share a colour).
    families = list(dict.fromkeys(method_family(m) for m in methods))
    colours = plt.get_cmap("tab20").colors
    for method in methods:
        pts = sorted((r["epsilon"], r["accuracy"], r.get("std", 0.0)) for r in rows
                     if r["method"] == method and r["epsilon"] != "inf")
        family = method_family(method)
        style = {"color": "k" if family == "dpsynth"
                 else colours[2 * families.index(family) % 20 + families.index(family) // 10 % 2],
                 "ls": ":" if method.startswith("diagnostic") else
                       "--" if method != family else "-",
                 "lw": 2.5 if method == "dpsynth" else 1.3}
        # Rows measured over several noise draws: the mean, bars of +- one std.
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts],
                    yerr=[100 * p[2] for p in pts], marker="o", ms=4, capsize=2,
                    label=method, **style)
    for r in rows:
        if r["method"] == "nonprivate-mlp":
            ax.axhline(100 * r["accuracy"], color="grey", ls="-.", lw=1,
                       label="non-private MLP")
    ax.set_xscale("log", base=2)
    ax.set_xticks(finite, [str(e) for e in finite])
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Fashion-MNIST, EfficientNet-Lite0 at {image_size} px, two-layer MLP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_many_models(rows: list[dict], path: Path) -> None:
    """DP-SGD accuracy against the number of models M trained on one budget (each at eps/M
    under PLD composition), one line per eps, beside dpsynth's row at that eps (dashed,
    same colour): its samples train any number of models at no further cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    finite = sorted({r["epsilon"] for r in rows if r["method"].startswith("dp-sgd-m")})
    for i, eps in enumerate(finite):
        color = f"C{i}"
        pts = sorted((int(r["method"].removeprefix("dp-sgd-m")), r["accuracy"]) for r in rows
                     if r["method"].startswith("dp-sgd-m") and r["epsilon"] == eps)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", color=color,
                label=f"DP-SGD, eps={eps}")
        for r in rows:
            if r["method"] == "dpsynth" and r["epsilon"] == eps:
                ax.axhline(100 * r["accuracy"], color=color, ls="--", lw=1,
                           label=f"dpsynth, eps={eps} (any M)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(MANY_MODELS), [str(m) for m in MANY_MODELS])
    ax.set_xlabel("models trained on one budget (M)")
    ax.set_ylabel("test accuracy (%), mean over models")
    ax.set_title("Many downstream models: DP-SGD pays per model, dpsynth once")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
