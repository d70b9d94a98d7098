"""Utility benchmark on Fashion-MNIST / EfficientNet-Lite0 embeddings (issue 2).

    .venv/bin/python benchmarks/utility.py            # full run (~1 h on 2 cores)
    .venv/bin/python benchmarks/utility.py --quick    # smoke run on a subset
    .venv/bin/python benchmarks/utility.py --image-size 160 --eps 0.25 0.5 1 2 inf
                                # the pipeline's encoder size (issue 16): utility-160px.json

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

Hyperparameters are chosen on a validation split carved from the training set (6,000
records, stratified, seed 0); the test split is only used for the reported accuracy.
Writes benchmarks/results/utility.json, docs/utility.png and docs/many_models.png (at
64 px, the local run's encoder size); other sizes write utility-<size>px.json,
docs/utility-<size>px.png and docs/many_models-<size>px.png. ``--methods`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
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


def dpsgd_accounted(eps: float, X, y, X_val, y_val, X_test, y_test, n_classes: int) -> float:
    """All grid configs trained + noisy-max selection, composed to (eps, delta)."""
    m = len(DPSGD_GRID)
    cfg0 = DPSGD_GRID[0]
    q, steps = cfg0.schedule(len(X))
    assert all(c.batch_size == cfg0.batch_size and c.epochs == cfg0.epochs for c in DPSGD_GRID)
    selection = dp_accounting.GaussianDpEvent(selection_multiplier(m, SELECTION_SIGMA_RECORDS))
    sigma = (0.0 if math.isinf(eps) else
             dpsgd_noise_multiplier(q, steps, eps, DELTA, runs=m, extra_event=selection))
    models = [train_dpsgd(X, y, n_classes, cfg, sigma, seed=i)
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
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="run only these groups of rows (nonprivate-mlp always runs)")
    ap.add_argument("--out", default=None,
                    help="default: benchmarks/results/utility.json at 64 px, utility-<size>px"
                         ".json at other sizes (utility-quick.json with --quick, so a smoke "
                         "run never overwrites the committed results)")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw the plots of --out from its rows, running nothing")
    args = ap.parse_args()
    stem = "utility" if args.image_size == 64 else f"utility-{args.image_size}px"
    args.out = args.out or str(ROOT / "benchmarks/results" /
                               ("utility-quick.json" if args.quick else f"{stem}.json"))
    if args.plot_only:
        saved = json.loads(Path(args.out).read_text())["rows"]
        plot(saved, ROOT / "docs" / f"{Path(args.out).stem}.png", args.image_size)
        if any(r["method"].startswith("dp-sgd-m") for r in saved):
            plot_many_models(saved, many_models_path(args.image_size))
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

    methods = set(args.methods)
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
            "command": "python " + " ".join(["benchmarks/utility.py", *sys.argv[1:]]),
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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # The dp-sgd-m<M> rows have their own plot (plot_many_models).
    methods = [m for m in dict.fromkeys(r["method"] for r in rows)
               if m != "nonprivate-mlp" and not m.startswith("dp-sgd-m")]
    finite = sorted({r["epsilon"] for r in rows if r["epsilon"] != "inf"})
    # One colour per family; the tuning-accounted row dashed in its family's colour, the
    # closed-form diagnostics dotted, dpsynth's default thickest (11 rows: the default
    # colour cycle alone repeats).
    families = list(dict.fromkeys(method_family(m) for m in methods))
    for method in methods:
        pts = sorted((r["epsilon"], r["accuracy"]) for r in rows
                     if r["method"] == method and r["epsilon"] != "inf")
        family = method_family(method)
        style = {"color": "k" if family == "dpsynth" else f"C{families.index(family) % 10}",
                 "ls": ":" if method.startswith("diagnostic") else
                       "--" if method != family else "-",
                 "lw": 2.5 if method == "dpsynth" else 1.3}
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=4,
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
    ax.legend(fontsize=8)
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
