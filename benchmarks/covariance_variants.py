"""Covariance designs that spend less on per-class second moments (issue 2, exploration).

    .venv/bin/python benchmarks/covariance_variants.py [--draws 2]

benchmarks/oracle_bound.py shows that DP class means at the full budget plus the *exact*
class covariances would beat DP-SGD at every eps <= 2, so the covariance is where dpsynth
loses. This script measures, on the validation split only, designs that estimate it more
cheaply than dpsynth's per-class r x r second moments:

  dpsynth-default   DPSynthesizer as shipped (per-class lowrank in an r = 64 DP subspace).
  pooled-r256       one global release of the *centred* within-class scatter
                    sum_x e e^T, e = clip_C(x - released mean of x's class), shared by all
                    classes: top 256 eigenpairs + isotropic residual. N = 54,000 records
                    feed one release instead of 5,400 per class, and centring at the
                    released mean removes the bias that subtracting a noisy mean's outer
                    product puts into an uncentred second moment.
  hybrid-rs32/64    pooled-r256, plus a per-class release of the rs x rs centred second
                    moment in the pooled basis's top rs directions (rs = 32 or 64).

Every release is a Gaussian mechanism calibrated by dpsynth's plan (PLD, delta = 1e-5):
within_scatter (global, L2 sensitivity C^2: the upper triangle of e e^T has norm at most
||e||^2 <= C^2), class_counts (1), class_sums (1), class_second_moments (C^2, per class,
parallel across classes). Samples are drawn per class and re-normalised to unit norm; the
utility benchmark's MLP is trained on them and scored on its validation split.
Writes benchmarks/results/covariance_variants.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import utility_split, write_result  # noqa: E402

from dpsynth import DPSynthesizer  # noqa: E402
from dpsynth.evaluation import TwoLayerMLP  # noqa: E402
from dpsynth.privacy import NoiseSource  # noqa: E402
from dpsynth.privacy.plan import ReleaseSpec, build_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = [0.25, 1.0, math.inf]
DELTA = 1e-5
MLP = {"hidden": 512, "epochs": 10, "lr": 1e-3, "batch_size": 256}  # as utility.py
CLIP = 0.8
POOLED_DIM = 256
#: name -> (per-class block size rs, share of 1/sigma^2 for the pooled scatter, for the
#: per-class blocks); the class sums get the rest (counts are weighted 4, as in dpsynth).
VARIANTS = {"pooled-r256": (0, 0.5, 0.0), "hybrid-rs32": (32, 0.3, 0.3),
            "hybrid-rs64": (64, 0.3, 0.3)}


def variant_plan(eps: float, rs: int, share_pool: float, share_class: float):
    share_sums = 1.0 - share_pool - share_class
    specs = [ReleaseSpec("within_scatter", CLIP**2, math.sqrt(share_sums / share_pool),
                         scope="global"),
             ReleaseSpec("class_counts", 1.0, 4.0),
             ReleaseSpec("class_sums", 1.0, 1.0)]
    if rs:
        specs.append(ReleaseSpec("class_second_moments", CLIP**2,
                                 math.sqrt(share_sums / share_class)))
    return build_plan(specs, eps, DELTA)


def symmetric(noise: NoiseSource, plan, name: str, k: int) -> np.ndarray:
    return noise.symmetric_gaussian(plan.release(name), k)


def fit_and_sample(X, y, eps, rs, share_pool, share_class, rng):
    """The variant's releases (noise from the plan), then as many samples per class as the
    class has training records."""
    C, d = int(y.max()) + 1, X.shape[1]
    plan = variant_plan(eps, rs, share_pool, share_class)
    noise = NoiseSource()
    counts = np.bincount(y, minlength=C) + noise.gaussian(plan.release("class_counts"), C)
    sums = np.stack([X[y == c].sum(0) for c in range(C)])
    means = (sums + noise.gaussian(plan.release("class_sums"), sums.shape)) / counts[:, None]
    E = X - means[y]
    E *= np.minimum(1.0, CLIP / np.maximum(np.linalg.norm(E, axis=1), 1e-12))[:, None]
    n_total = counts.sum()
    W = (E.T @ E + symmetric(noise, plan, "within_scatter", d)) / n_total
    vals, vecs = np.linalg.eigh(W)
    vals, vecs = vals[::-1][:POOLED_DIM], vecs[:, ::-1][:, :POOLED_DIM]
    residual = max((np.trace(W) - vals.sum()) / (d - POOLED_DIM), 1e-6)
    X_parts, y_parts = [], []
    for c in range(C):
        n = int(np.sum(y == c))
        tail = (rng.standard_normal((n, POOLED_DIM - rs)) * np.sqrt(
            np.maximum(vals[rs:], residual))) @ vecs[:, rs:].T
        if rs:
            Z = E[y == c] @ vecs[:, :rs]
            M = (Z.T @ Z + symmetric(noise, plan, "class_second_moments", rs)) / counts[c]
            ev, evec = np.linalg.eigh(M)
            M = (evec * np.maximum(ev, residual)) @ evec.T
            tail += rng.standard_normal((n, rs)) @ np.linalg.cholesky(M).T @ vecs[:, :rs].T
        g = rng.standard_normal((n, d))
        g -= (g @ vecs) @ vecs.T
        X_parts.append(means[c] + tail + math.sqrt(residual) * g)
        y_parts.append(np.full(n, c))
    Xs = np.concatenate(X_parts)
    Xs /= np.linalg.norm(Xs, axis=1, keepdims=True)
    return Xs.astype(np.float32), np.concatenate(y_parts), plan


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=2, help="noise draws per variant and eps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/covariance_variants.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    X_tr, X_val, y_tr, y_val, _, _ = utility_split()
    X64 = X_tr.astype(np.float64)
    rows = []
    for eps in EPSILONS:
        draws = 1 if math.isinf(eps) else args.draws
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            synth = DPSynthesizer(eps, DELTA, random_state=draw).fit(X_tr, y_tr)
            samples = {"dpsynth-default": synth.sample(len(X_tr))}
            sigmas = {}
            for name, (rs, sp, sc) in VARIANTS.items():
                Xs, ys, plan = fit_and_sample(X64, y_tr, eps, rs, sp, sc, rng)
                samples[name] = (Xs, ys)
                sigmas[name] = {r.name: r.sigma for r in plan.releases}
            for name, (Xs, ys) in samples.items():
                mlp = TwoLayerMLP(random_state=draw, **MLP).fit(Xs, ys, classes=np.arange(10))
                row = {"method": name, "epsilon": "inf" if math.isinf(eps) else eps,
                       "draw": draw, "val_accuracy": round(mlp.score(X_val, y_val), 4),
                       "sigmas": sigmas.get(name)}
                rows.append(row)
                print(f"[{time.perf_counter() - t0:5.0f}s] {row}", flush=True)
    write_result(args.out, rows, {
        "data": "the utility benchmark's embeddings and 54,000/6,000 split; validation only",
        "delta": DELTA, "clip": CLIP, "pooled_dim": POOLED_DIM, "variants": VARIANTS,
        "mlp": MLP, "draws": args.draws,
        "command": "python benchmarks/covariance_variants.py"}, t0)

if __name__ == "__main__":
    main()
