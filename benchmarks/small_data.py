"""Small-data benchmark (issues 13 and 25): dpsynth at a few hundred records per class.

    .venv/bin/python benchmarks/small_data.py                 # the benchmark
    .venv/bin/python benchmarks/small_data.py --screen 400    # quick screening of designs
    .venv/bin/python benchmarks/small_data.py --steps-sweep   # how evaluate.steps was chosen
    .venv/bin/python benchmarks/small_data.py --quick         # smoke run (not committed)
    .venv/bin/python benchmarks/small_data.py --table         # docs/results.md's tables

The committed results (issue 25) ran as two processes of one torch thread each, then the
full-size check as two more, merged (2 shared cores; the MLP's cost is its fixed number of
steps, not n):

    for g in fmnist-100,fmnist-400 fmnist-1000,fmnist-imbalanced; do
        .venv/bin/python benchmarks/small_data.py --datasets $g --designs counts4,counts2 \
            --out /tmp/sd-$g.json &
    done; wait
    # the same two groups again with --designs spherical --baselines '' (two processes)
    for d in counts4 counts2; do
        .venv/bin/python benchmarks/small_data.py --datasets fmnist-54k --designs $d \
            --eps 1 --baselines '' --out /tmp/sd-54k-$d.json &
    done; wait
    .venv/bin/python benchmarks/small_data.py --merge /tmp/sd-*.json

(they ran with ``--designs default,counts2`` when the default still was ``counts4``; the
merged file labels those rows ``dpsynth-counts4``.)

Data sets (private training sets; the test sets are public and held out):
  fmnist-{100,300,400,1000,3000}  Fashion-MNIST / EfficientNet-Lite0 embeddings
                              (benchmarks/embeddings.py), that many training records per
                              class (seed 0); the full 10,000-record test split. Default:
                              100, 400, 1000.
  fmnist-imbalanced           Fashion-MNIST, class sizes geometric from 1,000 down to 20
                              (50x), assigned to the classes by a seeded permutation;
                              the balanced 10,000-record test split. Default.
  digits                      scikit-learn's 8x8 digits as configs/digits-quick.yaml reads
                              them, with that config's model settings (not by default).
  fmnist-54k                  benchmarks/utility.py's 54,000-record training part, with
                              that benchmark's MLP, n synthetic records and proportional
                              sampling: the full-size check against its default dpsynth row.

Methods, at eps in {1, 4} (``--eps``; inf allowed) and delta = 1e-5, ``--draws`` (3)
independent draws per cell: fresh DP noise (OS entropy) each draw, the draw index seeds
sampling and the MLP:
  dpsynth-<design>      a design of DESIGNS (``--designs``): DPSynthesizer parameters fixed
                        before any data is seen, optionally post-processed (no budget);
                        20,000 synthetic records, class balance ``balanced`` (the run's
                        default); the evaluation MLP trained on them. Designs that share
                        parameters share one fit per draw (paired on the same noise).
  dp-sgd-tuning-accounted  Opacus DP-SGD, a 3-configuration grid (linear lr 1 and 4,
                        the 256-wide MLP lr 1; 10 epochs, expected batch min(2048, n/4),
                        clip 1), every configuration trained under a share of the budget
                        and one picked by a Gaussian noisy max of its correct count on the
                        private training set, all composed with PLD to (eps, delta).
  dp-fc-tuning-accounted   DP-FC with benchmarks/utility.py's grid (DPFC_GRID), tuning
                        accounted as there, the noisy max on the private training set.
  nonprivate-mlp        the evaluation MLP on the real training records (ceiling; not DP).

Every MLP is the run's evaluation MLP with its defaults (EvaluateConfig: hidden 256, a
fixed number of optimiser steps, lr 1e-3, batch 256), except on fmnist-54k. Writes
benchmarks/results/small_data.json and docs/small_data.png; ``--screen`` writes
benchmarks/results/small_data_screen-<n>.json; ``--steps-sweep``
benchmarks/results/mlp_steps.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import dp_accounting
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import load_embeddings, utility_split, write_result  # noqa: E402
from utility import DPFC_GRID  # noqa: E402
from utility import MLP as UTILITY_MLP  # noqa: E402

from dpsynth import DPSynthesizer  # noqa: E402
from dpsynth.clustering.stats import project_to_ball  # noqa: E402
from dpsynth.config import EvaluateConfig, load_config  # noqa: E402
from dpsynth.evaluation.baselines import (  # noqa: E402
    DPSGDConfig,
    dp_fc,
    dpsgd_noise_multiplier,
    least_squares_statistics,
    linear_predict,
    model_accuracy,
    noisy_argmax,
    selection_multiplier,
    train_dpsgd,
)
from dpsynth.evaluation.mlp import TwoLayerMLP, classification_report  # noqa: E402
from dpsynth.gmm.mixture import MixtureParams, pooled_mixture  # noqa: E402
from dpsynth.privacy.plan import release_threshold  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5
PER_CLASS = [100, 300, 400, 1000, 3000]
IMBALANCED_LARGEST, IMBALANCED_SPAN = 1000, 50
N_SYNTHETIC = 20000
#: The run's default (SynthesizeConfig.class_balance).
CLASS_BALANCE = "balanced"
#: Independent draws per cell: fresh DP noise (OS entropy); the draw seeds sampling and MLP.
DRAWS = 3
#: Noise std, in records, of the noisy-max selection among the DP-SGD grid (as utility.py).
SELECTION_SIGMA_RECORDS = 30.0


def mlp_params() -> dict:
    """The run's evaluation MLP, as `dpsynth run` trains it with the default config."""
    s = EvaluateConfig()
    return {"hidden": s.hidden, "steps": s.steps, "lr": s.lr, "batch_size": s.batch_size,
            "random_state": s.random_state}


def dpsgd_grid(n: int) -> list[DPSGDConfig]:
    batch = int(min(2048, max(16, n // 4)))
    return [DPSGDConfig(hidden=0, lr=1.0, batch_size=batch),
            DPSGDConfig(hidden=0, lr=4.0, batch_size=batch),
            DPSGDConfig(hidden=256, lr=1.0, batch_size=batch)]


def per_class_subset(y: np.ndarray, sizes: dict[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k]
                                   for c, k in sizes.items()]))


def imbalanced_sizes(n_classes: int = 10, seed: int = 0) -> dict[int, int]:
    """Class sizes geometric from IMBALANCED_LARGEST down to IMBALANCED_LARGEST / SPAN,
    assigned to the classes by a seeded permutation (so the smallest class is not
    chosen for being easy or hard)."""
    sizes = [round(IMBALANCED_LARGEST * IMBALANCED_SPAN ** (-i / (n_classes - 1)))
             for i in range(n_classes)]
    order = np.random.default_rng(seed).permutation(n_classes)
    return {int(c): int(sizes[i]) for i, c in enumerate(order)}


DATASETS = [f"fmnist-{k}" for k in PER_CLASS] + ["fmnist-imbalanced", "digits", "fmnist-54k"]
DEFAULT_DATASETS = ["fmnist-100", "fmnist-400", "fmnist-1000", "fmnist-imbalanced"]


def datasets(quick: bool, wanted: list[str] | None = None):
    """Yield (name, X, y, X_test, y_test, classes, synthesizer kwargs)."""
    wanted = wanted or (["fmnist-100", "fmnist-imbalanced"] if quick else DEFAULT_DATASETS)
    unknown = set(wanted) - set(DATASETS)
    if unknown:
        raise SystemExit(f"unknown data sets {sorted(unknown)}; known: {DATASETS}")
    X_all, y_all = load_embeddings("train")
    X_test, y_test = load_embeddings("test")
    classes = np.arange(10)
    if quick:
        X_test, y_test = X_test[:2000], y_test[:2000]
    for name in DATASETS:
        if name not in wanted:
            continue
        if name == "digits":
            X, y, Xt, yt, params = digits()
            yield name, X, y, Xt, yt, classes, params
            continue
        if name == "fmnist-54k":  # benchmarks/utility.py's training part
            X_tr, _, y_tr, _, _, _ = utility_split()
            yield name, X_tr, y_tr, X_test, y_test, classes, {}
            continue
        sizes = (imbalanced_sizes() if name == "fmnist-imbalanced"
                 else {c: int(name.split("-")[1]) for c in range(10)})
        idx = per_class_subset(y_all, sizes)
        yield name, X_all[idx], y_all[idx], X_test, y_test, classes, {}


def digits():
    """Digits as configs/digits-quick.yaml encodes them, and that config's model section."""
    from dpsynth import steps
    from dpsynth.data.sources import make_source

    config = load_config(ROOT / "configs/digits-quick.yaml")
    encoder = steps.make_encoder(config)
    out = []
    for split in ("train", "test"):
        source = make_source(config.data, split)
        images, labels = source.read(0, len(source))
        out += [encoder.encode(images), np.asarray(labels)]
    params = config.model.model_dump()
    if params["normalize"] is None:
        params["normalize"] = encoder.normalized
    return (*out, params)


def dpsgd_tuning_accounted(eps: float, X, y, X_test, y_test, n_classes: int,
                           seed: int = 0) -> tuple[float, dict]:
    """Every grid configuration trained on the private set under a share of the budget,
    then a Gaussian noisy max of the correct counts on that same set (each count moves by
    at most 1 when one record changes: L2 sensitivity sqrt(m)); the trainings and the
    selection composed adaptively with PLD to (eps, delta)."""
    grid = dpsgd_grid(len(X))
    m = len(grid)
    q, steps = grid[0].schedule(len(X))
    selection = dp_accounting.GaussianDpEvent(
        selection_multiplier(m, SELECTION_SIGMA_RECORDS))
    sigma = dpsgd_noise_multiplier(q, steps, eps, DELTA, runs=m, extra_event=selection)
    models = [train_dpsgd(X, y, n_classes, cfg, sigma, seed=seed + i)
              for i, cfg in enumerate(grid)]
    best = noisy_argmax([model_accuracy(mo, X, y) * len(y) for mo in models],
                        SELECTION_SIGMA_RECORDS, np.random.default_rng(seed))
    model = models[best]
    return model_accuracy(model, X_test, y_test), {
        "picked": grid[best].label(), "noise_multiplier": round(sigma, 3),
        "steps_per_run": steps, "runs": m}


def dpfc_tuning_accounted(eps: float, X, y, X_test, y_test, n_classes: int,
                          gram: np.ndarray, seed: int = 0) -> tuple[float, dict]:
    """DP-FC with benchmarks/utility.py's grid (DPFC_GRID), tuning accounted as there (one
    shared noisy Gram, every configuration's steps, a Gaussian noisy max; PLD to (eps,
    delta)), except that the noisy max reads the correct counts on the private training
    set (as DP-SGD's here: no public validation split at these sizes), with the same
    SELECTION_SIGMA_RECORDS."""
    sel = dp_fc(X, y, n_classes, eps, DELTA, DPFC_GRID, X, y, account_tuning=True,
                selection_sigma_records=SELECTION_SIGMA_RECORDS, gram=gram,
                rng=np.random.default_rng(seed))
    acc = float((linear_predict(sel.weights, X_test) == y_test).mean())
    return acc, {"picked": sel.config.label(), "noise_multiplier": round(sel.noise_multiplier, 3),
                 "runs": len(DPFC_GRID)}


# ------------------------------------------------------------------------- designs
# Prototype (not in the package: it lost, see docs/results.md "Small data"): shrinking the
# noisy class means toward their pooled mean. With one Gaussian per class the class mean
# is class_sums / class_counts; the sum's noise (the plan's class_sums sigma per
# coordinate) divided by the noisy count n_c has squared norm ~ p (sigma / n_c)^2 in a
# part of dimension p (inside the DP subspace: r; outside: d - r). The positive-part
# James-Stein factor max(0, 1 - p tau_c^2 / ||P (m_c - m_pooled)||^2), tau_c = sigma / n_c,
# reads only releases (noisy counts and sums, the subspace) and the plan's sigma:
# post-processing, no budget.


def shrinkage_factors(deviations: np.ndarray, noise_var: np.ndarray, dim: int) -> np.ndarray:
    """Positive-part James-Stein factors, one per row of ``deviations`` (C, ...):
    ``max(0, 1 - dim * noise_var / ||row||^2)``; 1 where ``noise_var`` is 0."""
    energy = np.einsum("ij,ij->i", deviations, deviations)
    noise = dim * np.asarray(noise_var, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 1.0 - noise / energy
    return np.where(noise > 0, np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0), 1.0)


def shrink_class_means(params: MixtureParams, class_counts: np.ndarray,
                       class_sums: np.ndarray, basis: np.ndarray | None, sigma: float, *,
                       radius: float, parts: str = "split") -> MixtureParams:
    """``params`` (one component per class) with each class mean shrunk toward the pooled
    mean of the kept classes (module docstring). ``parts``: ``"split"`` shrinks inside and
    outside the subspace separately, ``"whole"`` the whole deviation at once,
    ``"project"`` keeps the subspace part and replaces the part outside it by the pooled
    mean's (a = 1 inside, 0 outside). The residual variance of each component is
    recomputed about its new mean (the released residual energy is unchanged).
    Post-processing only: ``class_counts``, ``class_sums`` and ``basis`` are releases,
    ``sigma`` is the plan's ``class_sums`` sigma.
    """
    cls = np.asarray(params.component_class)
    if len(np.unique(cls)) != len(cls):
        raise ValueError("shrink_class_means needs one component per class")
    n = np.asarray(class_counts, dtype=float)[cls]
    sums = np.asarray(class_sums, dtype=float)[cls]
    raw = sums / n[:, None]
    pooled = sums.sum(0) / n.sum()
    dev = raw - pooled
    noise_var = (float(sigma) / n) ** 2
    d = raw.shape[1]
    if basis is None or parts == "whole":
        new = pooled + shrinkage_factors(dev, noise_var, d)[:, None] * dev
    else:
        inside = (dev @ basis) @ basis.T
        outside = dev - inside
        r = basis.shape[1]
        if parts == "project":
            a_in, a_out = np.ones(len(n)), np.zeros(len(n))
        elif parts == "inside":
            a_in, a_out = shrinkage_factors(inside, noise_var, r), np.ones(len(n))
        elif parts == "split":
            a_in = shrinkage_factors(inside, noise_var, r)
            a_out = shrinkage_factors(outside, noise_var, d - r)
        else:
            raise ValueError(f"parts must be 'split', 'whole' or 'project', got {parts!r}")
        new = pooled + a_in[:, None] * inside + a_out[:, None] * outside
    new = project_to_ball(new, radius)
    residual_var = np.asarray(params.residual_var, dtype=float)
    if basis is not None and d > basis.shape[1] and residual_var.size:
        free = d - basis.shape[1]

        def outside_energy(m: np.ndarray) -> np.ndarray:
            z = m @ basis
            return np.einsum("ij,ij->i", m, m) - np.einsum("ij,ij->i", z, z)

        old = np.asarray(params.means, dtype=float)
        residual_var = np.maximum(
            residual_var + (outside_energy(old) - outside_energy(new)) / free, 0.0)
    return dataclasses.replace(params, means=new, residual_var=residual_var)




@dataclass(frozen=True)
class Design:
    """One way to release and sample: DPSynthesizer parameters (one fit per distinct
    parameter set and draw, shared by the designs that post-process it), then an optional
    post-processing of the fitted mixture (no budget)."""

    description: str
    params: tuple = ()  # DPSynthesizer keyword overrides, as sorted (name, value) pairs
    shrink: str | None = None  # shrink_class_means(parts=...) of the released means
    post: str | None = None  # "tied": the tied mixture from the fit's releases
    adaptive_r: bool = False  # prototype: subspace_dim from the released eigenvalues


DESIGNS: dict[str, Design] = {
    "default": Design("DPSynthesizer defaults (the run's; class_counts weight 2 since "
                      "issue 25)"),
    "shrink": Design("default fit; class means shrunk toward the pooled mean, inside and "
                     "outside the DP subspace separately (James-Stein factor from the noisy "
                     "count and the plan's class_sums sigma)", shrink="split"),
    "shrink-in": Design("default fit; James-Stein shrinkage of the class means inside the "
                        "DP subspace only", shrink="inside"),
    "project": Design("default fit; class means kept in the DP subspace, the pooled mean "
                      "outside it", shrink="project"),
    "shrink-whole": Design("default fit; one James-Stein factor on the whole deviation",
                           shrink="whole"),
    "tied-post": Design("default fit; the tied covariance derived from its subspace "
                        "release (what covariance='tied' samples), its per-class second "
                        "moments unused", post="tied"),
    "eig-debias": Design("default fit; spiked-Wigner eigenvalue debiasing of each class "
                         "covariance (release_designs.py's prototype; post-processing)",
                         post="debias"),
    "iso-post": Design("default fit; each class covariance replaced by its released "
                       "residual variance times I (isotropic; post-processing)", post="iso"),
    "ridge": Design("covariance_ridge 1 (default fit's releases; post-processing)",
                    params=(("covariance_ridge", 1.0),)),
    "counts4": Design("budget_weights class_counts 4: the default before issue 25",
                      params=(("budget_weights", (("class_counts", 4.0),)),)),
    "counts2": Design("budget_weights class_counts 2: the default since issue 25",
                      params=(("budget_weights", (("class_counts", 2.0),)),)),
    "tied": Design("covariance='tied' (no per-class second moment)",
                   params=(("covariance", "tied"),)),
    "spherical": Design("covariance='spherical' (no subspace release)",
                        params=(("covariance", "spherical"),)),
    "r16": Design("subspace_dim 16", params=(("subspace_dim", 16),)),
    "r32": Design("subspace_dim 32", params=(("subspace_dim", 32),)),
    "adaptive-r": Design("prototype: subspace_dim = released Gram eigenvalues above the "
                         "noise's bulk edge (8..64)", adaptive_r=True),
}
DEFAULT_DESIGNS = ["counts4", "counts2"]


def synth_params(design: Design, base: dict) -> dict:
    params = {**base}
    for name, value in design.params:
        params[name] = dict(value) if isinstance(value, tuple) else value
    return params


def adaptive_subspace_dim(synth, r_min: int = 8) -> int:
    """Prototype: how many of the released Gram eigenvalues clear the bulk edge 2 sigma
    sqrt(d) of the symmetric noise (sigma: the plan's subspace_second_moment), within
    [r_min, the fitted subspace_dim]. Reads releases and the plan only."""
    d = synth.n_features_in_
    sigma = synth.privacy_plan_.release("subspace_second_moment").sigma
    above = int((synth.clusters_.eigenvalues > 2 * sigma * math.sqrt(d)).sum())
    return int(min(synth.subspace_dim, max(r_min, above)))


def shrunk(synth, parts: str):
    """A copy of the fitted ``synth`` whose class means are shrunk (post-processing)."""
    out = copy.copy(synth)
    plan = synth.privacy_plan_
    sigma = plan.release("class_sums").sigma if plan.private else 0.0
    out.mixture_ = shrink_class_means(synth.mixture_, synth.clusters_.class_counts,
                                      synth.clusters_.class_sums, synth.subspace_, sigma,
                                      radius=float(synth.clip_norm), parts=parts)
    return out


def tied_from_release(synth):
    """A copy of the fitted ``synth`` sampling the tied mixture that its own releases give
    (pooled_mixture: the subspace eigenpairs and trace, the class counts and sums):
    post-processing, the per-class second moments left unused."""
    out = copy.copy(synth)
    c = synth.clusters_
    params = pooled_mixture(c.class_counts, c.class_sums, c.subspace, c.eigenvalues, c.trace,
                            min_count=release_threshold(synth.privacy_plan_).threshold,
                            radius=float(synth.clip_norm),
                            covariance_floor=synth.covariance_floor)
    params.class_totals = synth.class_totals_
    out.mixture_ = params
    return out


def post_covariance(synth, how: str):
    """A copy of the fitted ``synth`` with its class covariances post-processed:
    ``debias`` (release_designs.post_debias) or ``iso`` (residual variance times I)."""
    from release_designs import post_debias

    out = copy.copy(synth)
    p = synth.mixture_
    if how == "debias":
        out.mixture_ = post_debias(synth)
    else:
        r = p.covariances.shape[-1]
        var = np.maximum(p.residual_var, synth.covariance_floor)
        out.mixture_ = dataclasses.replace(p, covariances=var[:, None, None] * np.eye(r))
    return out


def fit_designs(names: list[str], eps: float, X, y, classes, base: dict, draw: int):
    """{design: (fitted synthesizer to sample, info)}; one fit per distinct parameters."""
    fits: dict[str, object] = {}
    out = {}
    for name in names:
        design = DESIGNS[name]
        params = synth_params(design, {"random_state": draw, **base})
        info: dict = {}
        if design.adaptive_r:
            key = repr(sorted(params.items()))
            first = fits.get(key) or DPSynthesizer(eps, DELTA, **params).fit(
                X, y, classes=classes)
            fits[key] = first
            r = adaptive_subspace_dim(first) if not math.isinf(eps) else params.get(
                "subspace_dim", 64)
            params = {**params, "subspace_dim": r}
            info["subspace_dim"] = r
            if r == first.subspace_dim:
                fits.setdefault(repr(sorted(params.items())), first)
        key = repr(sorted(params.items()))
        if key not in fits:
            fits[key] = DPSynthesizer(eps, DELTA, **params).fit(X, y, classes=classes)
        synth = fits[key]
        if design.shrink is not None:
            synth = shrunk(synth, design.shrink)
        if design.post == "tied":
            synth = tied_from_release(synth)
        elif design.post is not None:
            synth = post_covariance(synth, design.post)
        out[name] = (synth, info)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="subset smoke run")
    ap.add_argument("--steps-sweep", action="store_true",
                    help="measure the evaluation MLP's steps on public data (mlp_steps.json)")
    ap.add_argument("--datasets", default=None,
                    help=f"comma-separated data sets (default: {','.join(DEFAULT_DATASETS)})")
    ap.add_argument("--designs", default=",".join(DEFAULT_DESIGNS),
                    help=f"comma-separated designs of {sorted(DESIGNS)}")
    ap.add_argument("--eps", default="1,4", help="comma-separated epsilons (inf allowed)")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--baselines", default="nonprivate,dp-sgd,dp-fc",
                    help="comma-separated subset of nonprivate,dp-sgd,dp-fc ('' for none)")
    ap.add_argument("--mlp-steps", type=int, default=None,
                    help="screening only: the MLP's steps (default: the run's)")
    ap.add_argument("--screen", type=int, default=None, metavar="PER_CLASS",
                    help="screening of --designs (see screen()): PER_CLASS records per class")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="merge partial results (--datasets runs) into small_data.json")
    ap.add_argument("--table", action="store_true",
                    help="print the markdown tables of docs/results.md from the results")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    # One thread: on 2 shared cores two threads per process were 3x slower per step.
    torch.set_num_threads(1)
    if args.merge:
        return merge(args.merge, args.out or str(ROOT / "benchmarks/results/small_data.json"))
    if args.table:
        return print(table(args.out or str(ROOT / "benchmarks/results/small_data.json")))
    warnings.filterwarnings("ignore", message="classes .* have no component")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    if args.screen:
        path = ROOT / f"benchmarks/results/small_data_screen-{args.screen}.json"
        return screen(args.screen, args.designs.split(","), args.draws, args.mlp_steps or 300,
                      args.out or str(path))
    if args.steps_sweep:
        return steps_sweep(args.out or str(ROOT / "benchmarks/results/mlp_steps.json"),
                           args.quick)
    out = args.out or str(ROOT / "benchmarks/results" /
                          ("small_data-quick.json" if args.quick else "small_data.json"))
    designs = [d for d in args.designs.split(",") if d]
    if unknown := set(designs) - set(DESIGNS):
        raise SystemExit(f"unknown designs {sorted(unknown)}; known: {sorted(DESIGNS)}")
    epsilons = [float(e) for e in args.eps.split(",")]
    baselines = {b for b in args.baselines.split(",") if b}
    mlp = mlp_params()
    if args.quick:
        mlp["steps"] = 20  # a smoke run checks the plumbing, not the numbers
    if args.mlp_steps:
        mlp["steps"] = args.mlp_steps
    rows: list[dict] = []
    t0 = time.perf_counter()

    def add(row: dict) -> None:
        row = {k: ("inf" if isinstance(v, float) and math.isinf(v) else v)
               for k, v in row.items()}
        rows.append(row)
        print(f"[{time.perf_counter() - t0:6.0f}s] {row}", flush=True)

    sets = {}
    wanted = args.datasets.split(",") if args.datasets else None
    for name, X, y, X_test, y_test, classes, base in datasets(args.quick, wanted):
        counts = np.bincount(y, minlength=len(classes))
        sets[name] = {"train": int(len(y)), "test": int(len(y_test)),
                      "class_sizes": counts.tolist(), "dim": int(X.shape[1]),
                      "synthesizer": base or "DPSynthesizer defaults"}
        prior = counts / counts.sum()
        smallest = [int(c) for c in np.argsort(counts, kind="stable")[:3]]
        # The utility benchmark's reference setting: its MLP and n synthetic records.
        full = name == "fmnist-54k"
        model_params = ({"random_state": 0, **UTILITY_MLP} if full else mlp)
        n_synthetic = len(X) if full else N_SYNTHETIC
        balance = "proportional" if full else CLASS_BALANCE

        def scored(model_pred, _X_test=X_test, _y_test=y_test, _classes=classes,
                   _prior=prior, _smallest=smallest, _name=name) -> dict:
            rep = classification_report(_y_test, model_pred, _classes)
            row = {"accuracy": round(rep.accuracy, 4)}
            if _name == "fmnist-imbalanced":
                recall = np.array([rep.per_class_accuracy[int(c)] for c in _classes])
                # The test split is balanced; this is the accuracy a test set with the
                # training set's class proportions would give (per-class recall weighted).
                row["accuracy_at_training_proportions"] = round(float(_prior @ recall), 4)
                row["smallest_classes_accuracy"] = {
                    str(c): round(rep.per_class_accuracy[c], 4) for c in _smallest}
            return row

        def mlp_on(Xs, ys, draw: int, _params=model_params, _classes=classes):
            return TwoLayerMLP(**{**_params, "random_state": draw}).fit(
                Xs, ys, classes=_classes)

        if "nonprivate" in baselines:
            add({"dataset": name, "method": "nonprivate-mlp", "epsilon": math.inf, "draw": 0,
                 **scored(mlp_on(X, y, 0).predict(X_test))})
        gram = (least_squares_statistics(X, y, len(classes))[0]
                if "dp-fc" in baselines else None)
        for eps in epsilons:
            for draw in range(1 if math.isinf(eps) else args.draws):
                fitted = fit_designs(designs, eps, X, y, classes, base, draw)
                for design, (synth, info) in fitted.items():
                    row = {"dataset": name, "method": f"dpsynth-{design}", "epsilon": eps,
                           "draw": draw, **info}
                    dropped = [str(c["class"]) for c in synth.dropped_classes_]
                    if len(dropped) == len(classes):
                        add({**row, "accuracy": None, "classes_without_samples": dropped,
                             "note": "no class above the noise threshold: nothing to sample"})
                        continue
                    X_syn, y_syn = synth.sample(n_synthetic, class_balance=balance,
                                                random_state=1 + draw)
                    clf = mlp_on(X_syn, y_syn, draw)
                    add({**row, **scored(clf.predict(X_test)),
                         "classes_without_samples": dropped})
                if math.isinf(eps):
                    continue
                if "dp-sgd" in baselines:
                    acc, info = dpsgd_tuning_accounted(eps, X, y, X_test, y_test,
                                                       len(classes), seed=draw)
                    add({"dataset": name, "method": "dp-sgd-tuning-accounted", "epsilon": eps,
                         "draw": draw, "accuracy": round(acc, 4), **info})
                if "dp-fc" in baselines:
                    acc, info = dpfc_tuning_accounted(eps, X, y, X_test, y_test,
                                                      len(classes), gram, seed=draw)
                    add({"dataset": name, "method": "dp-fc-tuning-accounted", "epsilon": eps,
                         "draw": draw, "accuracy": round(acc, 4), **info})
    setup = {"command": " ".join(["python benchmarks/small_data.py", *sys.argv[1:]]),
             "datasets": sets, "delta": DELTA, "n_synthetic": N_SYNTHETIC,
             "class_balance": CLASS_BALANCE, "mlp": mlp, "draws": args.draws,
             "designs": {d: DESIGNS[d].description for d in designs},
             "dpsynth_default": {k: v for k, v in DPSynthesizer(1, DELTA).get_params().items()
                                 if k not in ("epsilon", "delta")},
             "dpsgd_grid": [c.label() for c in dpsgd_grid(1000)],
             "dpsgd_batch": "min(2048, n // 4)",
             "dpfc_grid": [c.label() for c in DPFC_GRID],
             "selection_sigma_records": SELECTION_SIGMA_RECORDS,
             "imbalanced_sizes": imbalanced_sizes(), "quick": args.quick,
             "fmnist-54k": "utility.py's setting: its MLP, n synthetic = n, proportional",
             "not_run": "DP-SGD and DP-FC at eps = inf (the non-private MLP is that row)"}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_result(out, rows, setup, t0)


def merge(parts: list[str], out: str) -> None:
    import json

    loaded = [json.loads(Path(p).read_text()) for p in parts]
    order = {name: i for i, name in enumerate(DATASETS)}
    rows = sorted((r for part in loaded for r in part["rows"]),
                  key=lambda r: order[r["dataset"]])  # stable: methods keep their order
    setup = {k: v for k, v in loaded[0]["setup"].items()
             if k not in ("command", "datasets", "seconds")}
    setup["datasets"] = {k: v for part in loaded for k, v in part["setup"]["datasets"].items()}
    setup["parts"] = [{"command": part["setup"]["command"], "seconds": part["setup"]["seconds"]}
                      for part in loaded]
    setup["command"] = ("python benchmarks/small_data.py --datasets <group> ... (the parts, "
                        "in parallel), then --merge")
    Path(out).write_text(json.dumps({"rows": rows, "setup": setup}, indent=1) + "\n")
    print(f"wrote {out}")
    plot(rows, ROOT / "docs/small_data.png")


def summarise(rows: list[dict]) -> dict[tuple, dict]:
    """(dataset, method, eps) -> {"mean", "min", "max", "n", "dropped"} over the draws
    (accuracies in %; a draw with no samples counts as 10%, chance)."""
    cells: dict[tuple, list] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["method"], str(r["epsilon"])), []).append(r)
    out = {}
    for key, rs in cells.items():
        acc = np.array([100 * (r["accuracy"] if r["accuracy"] is not None else 0.1)
                        for r in rs])
        out[key] = {"mean": float(acc.mean()), "min": float(acc.min()),
                    "max": float(acc.max()), "n": len(rs),
                    "dropped": max(len(r.get("classes_without_samples") or []) for r in rs)}
    return out


def table(path: str) -> str:
    """Markdown: mean test accuracy (%) over the draws [min, max] per data set, method and
    eps; then each dpsynth design's distance to the tuning-accounted DP-SGD and DP-FC."""
    import json

    result = json.loads(Path(path).read_text())
    stats = summarise(result["rows"])
    names = list(dict.fromkeys(k[0] for k in stats))
    methods = list(dict.fromkeys(k[1] for k in stats if k[1] != "nonprivate-mlp"))
    eps_cols = [e for e in ("1.0", "4.0", "inf") if any(k[2] == e for k in stats
                                                         if k[1] != "nonprivate-mlp")]

    def cell(key) -> str:
        s = stats.get(key)
        if s is None:
            return "-"
        text = f"{s['mean']:.1f}" + (f" [{s['min']:.1f}, {s['max']:.1f}]" if s["n"] > 1 else "")
        return text + (f" ({s['dropped']} cl. dropped)" if s["dropped"] else "")

    out = ["| data set | method | " + " | ".join(f"eps = {e.removesuffix('.0')}"
                                                 for e in eps_cols) + " |",
           "|---|---|" + "---|" * len(eps_cols)]
    for name in names:
        ceiling = stats.get((name, "nonprivate-mlp", "inf"))
        if ceiling:
            out.append(f"| {name} | non-private MLP (eps = inf) | {ceiling['mean']:.1f} |"
                       + " |" * (len(eps_cols) - 1))
        for method in methods:
            cells = [cell((name, method, e)) for e in eps_cols]
            if any(c != "-" for c in cells):
                out.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    designs = [m for m in methods if m.startswith("dpsynth-")]
    out += ["", "Mean over draws, points: each design minus the tuning-accounted baseline "
            "(DP-SGD / DP-FC)", "",
            "| data set | eps | " + " | ".join(designs) + " |",
            "|---|---|" + "---|" * len(designs)]
    for name in names:
        for e in ("1.0", "4.0"):
            sgd = stats.get((name, "dp-sgd-tuning-accounted", e))
            fc = stats.get((name, "dp-fc-tuning-accounted", e))
            if not (sgd or fc):
                continue
            cells = []
            for m in designs:
                s = stats.get((name, m, e))
                cells.append("-" if s is None else " / ".join(
                    f"{s['mean'] - b['mean']:+.1f}" if b else "-" for b in (sgd, fc)))
            out.append(f"| {name} | {e.removesuffix('.0')} | " + " | ".join(cells) + " |")
    imb = [r for r in result["rows"] if r["dataset"] == "fmnist-imbalanced"
           and r.get("smallest_classes_accuracy")]
    if imb:
        smallest = list(imb[0]["smallest_classes_accuracy"])
        sizes = result["setup"]["datasets"]["fmnist-imbalanced"]["class_sizes"]
        out += ["", "| fmnist-imbalanced, mean over draws | eps | balanced test | "
                "at training proportions | "
                + " | ".join(f"class {c} ({sizes[int(c)]} records)" for c in smallest) + " |",
                "|---|---|---|---|" + "---|" * len(smallest)]
        groups: dict[tuple, list] = {}
        for r in imb:
            groups.setdefault((r["method"], str(r["epsilon"])), []).append(r)
        for (method, e), rs in groups.items():
            def mean(get, _rs=rs):
                return 100 * float(np.mean([get(r) for r in _rs]))
            out.append(f"| {method} | {e.removesuffix('.0')} | "
                       f"{mean(lambda r: r['accuracy']):.1f} | "
                       f"{mean(lambda r: r['accuracy_at_training_proportions']):.1f} | "
                       + " | ".join(f"{mean(lambda r, c=c: r['smallest_classes_accuracy'][c]):.1f}"
                                    for c in smallest) + " |")
    return "\n".join(out)


def screen(per_class: int, designs: list[str], draws: int, steps: int, out: str) -> None:
    """Quick screening of many designs, run while the training split was still being
    encoded: the private set is ``per_class`` records per class from the first 5,000
    records of the TEST split (seed 0), scored on its other 5,000 (disjoint); the
    evaluation MLP with ``steps`` steps (default 300, not the run's 2,000); eps 1 and 4,
    ``draws`` draws. Only to choose which designs the benchmark proper measures."""
    X, y = load_embeddings("test")
    idx = per_class_subset(y[:5000], {c: per_class for c in range(10)})
    X_tr, y_tr, X_te, y_te = X[:5000][idx], y[:5000][idx], X[5000:], y[5000:]
    classes = np.arange(10)
    rows = []
    t0 = time.perf_counter()
    for eps in (1.0, 4.0):
        for draw in range(draws):
            for name, (synth, info) in fit_designs(designs, eps, X_tr, y_tr, classes, {},
                                                   draw).items():
                row = {"per_class": per_class, "epsilon": eps, "draw": draw,
                       "method": f"dpsynth-{name}", **info,
                       "classes_without_samples": len(synth.dropped_classes_)}
                if row["classes_without_samples"] < len(classes):
                    X_syn, y_syn = synth.sample(N_SYNTHETIC, class_balance=CLASS_BALANCE,
                                                random_state=1 + draw)
                    clf = TwoLayerMLP(steps=steps, random_state=draw).fit(X_syn, y_syn,
                                                                          classes=classes)
                    row["accuracy"] = round(clf.score(X_te, y_te), 4)
                else:
                    row["accuracy"] = None
                rows.append(row)
                print(row, flush=True)
    write_result(out, rows, {"command": " ".join(["python benchmarks/small_data.py",
                                                  *sys.argv[1:]]),
                             "mlp_steps": steps, "draws": draws,
                             "designs": {d: DESIGNS[d].description for d in designs}}, t0)


def steps_sweep(out: str, quick: bool) -> None:
    """Validation accuracy of the evaluation MLP against its number of optimiser steps,
    on public data only: Fashion-MNIST subsets of the utility split's training part,
    scored on its 6,000-record validation part (the test split's numbers are recorded
    too, for the issue's criterion at 400 per class, but chose nothing)."""
    X_tr, X_val, y_tr, y_val, X_test, y_test = utility_split()
    classes = np.arange(10)
    base = mlp_params()
    schedules = {100: [("15 epochs (before issue 13)", {"epochs": 15}),
                       (f"{base['steps']} steps (default)", {})],
                 400: [("15 epochs (before issue 13)", {"epochs": 15}),
                       (f"{base['steps']} steps (default)", {}),
                       ("100 epochs", {"epochs": 100})]}
    rows = []
    t0 = time.perf_counter()
    for k, runs in schedules.items():
        idx = per_class_subset(y_tr, {c: k for c in classes})
        for label, kw in runs[:2] if quick else runs:
            clf = TwoLayerMLP(**{**base, **kw}).fit(X_tr[idx], y_tr[idx], classes=classes)
            row = {"per_class": k, "schedule": label, "steps": clf.steps_taken_,
                   "val_accuracy": round(clf.score(X_val, y_val), 4),
                   "test_accuracy": round(clf.score(X_test, y_test), 4)}
            rows.append(row)
            print(f"[{time.perf_counter() - t0:6.0f}s] {row}", flush=True)
    write_result(out, rows, {"command": "python benchmarks/small_data.py --steps-sweep",
                             "mlp": {k: v for k, v in base.items() if k != "steps"},
                             "data": "Fashion-MNIST EfficientNet-Lite0 embeddings: subsets "
                                     "of the utility split's 54,000-record training part; "
                                     "validation: its 6,000-record validation part"}, t0)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarise(rows)
    names = [n for n in dict.fromkeys(r["dataset"] for r in rows) if n != "fmnist-54k"]
    methods = [m for m in dict.fromkeys(r["method"] for r in rows)
               if m != "nonprivate-mlp"] + ["nonprivate-mlp"]
    epsilons = ["1.0", "4.0"]
    fig, axes = plt.subplots(1, len(epsilons), figsize=(13, 4.4), sharey=True)
    width = 0.8 / len(methods)
    x = np.arange(len(names))
    for ax, eps in zip(axes, epsilons, strict=True):
        for j, method in enumerate(methods):
            key_eps = "inf" if method == "nonprivate-mlp" else eps
            cells = [stats.get((n, method, key_eps)) for n in names]
            mean = [c["mean"] if c else np.nan for c in cells]
            err = np.array([[c["mean"] - c["min"], c["max"] - c["mean"]] if c else [0, 0]
                            for c in cells]).T
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, mean, width, yerr=err,
                   capsize=2, label=method,
                   color="0.6" if method == "nonprivate-mlp" else None)
        ax.set_xticks(x, [n.replace("fmnist-", "fm-") for n in names], fontsize=8)
        ax.set_title(f"eps = {eps.removesuffix('.0')}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%): mean, bars min-max over draws")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("Small data: Fashion-MNIST subsets (records per class) and imbalanced "
                 "(1000..20); delta = 1e-5", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
