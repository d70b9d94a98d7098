"""How far can a Gaussian class model go if only its class means pay for privacy? (issue 2)

    .venv/bin/python benchmarks/oracle_bound.py

A reference point for the family dpsynth belongs to (class-conditional Gaussians built
from DP class means plus some covariance), measured on the utility benchmark's embeddings,
split and MLP. The covariances are handed over *exactly and for free*, and the counts
too; the whole (eps, delta) budget goes to one release: the per-class sums (L2
sensitivity 1 for unit-norm rows), calibrated by the same PLD code as dpsynth's plan.
No real method gets its covariances for free. This is not a strict upper bound (a noisy
covariance can happen to regularise the MLP), but no estimated covariance measured so far
came close to it.

Two read-outs of the same noisy means:

  oracle-gaussian-mlp   the utility benchmark's MLP trained on 54,000 samples drawn from
                        N(noisy mean_c, exact covariance_c) per class, re-normalised to
                        unit norm like dpsynth's samples;
  oracle-lda            the plug-in rule of that model with the exact pooled within-class
                        covariance (ridge picked on the validation split).

Each runs on ``--draws`` independent noise draws (mean and spread reported). The DP-SGD
rows of benchmarks/results/utility.json are printed alongside for comparison.
Writes benchmarks/results/oracle_bound.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import utility_split, write_result  # noqa: E402

from dpsynth.evaluation import TwoLayerMLP  # noqa: E402
from dpsynth.privacy import NoiseSource  # noqa: E402
from dpsynth.privacy.plan import ReleaseSpec, build_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPSILONS = [0.25, 0.5, 1.0, 2.0, math.inf]
DELTA = 1e-5
MLP = {"hidden": 512, "epochs": 10, "lr": 1e-3, "batch_size": 256}  # as utility.py
RIDGES = [0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3]


def class_statistics(X: np.ndarray, y: np.ndarray, n_classes: int):
    """Exact counts, sums and covariances per class, and the pooled within-class one."""
    X = X.astype(np.float64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sums = np.stack([X[y == c].sum(0) for c in range(n_classes)])
    covs = np.stack([np.cov(X[y == c], rowvar=False, bias=True) for c in range(n_classes)])
    pooled = np.einsum("c,cij->ij", counts / counts.sum(), covs)
    return counts, sums, covs, pooled


def lda_predict(means, log_prior, pooled_vals, pooled_vecs, ridge, X):
    inv = (pooled_vecs / (np.maximum(pooled_vals, 0) + ridge)) @ pooled_vecs.T
    W = means @ inv
    bias = -0.5 * np.einsum("ij,ij->i", W, means) + log_prior
    return (X @ W.T + bias).argmax(1)


def sample_oracle(means, chol, counts, rng):
    """counts[c] draws of N(means[c], chol[c] chol[c]^T), re-normalised to unit norm."""
    X = np.concatenate([m + rng.standard_normal((int(n), len(m))) @ L.T
                        for m, L, n in zip(means, chol, counts, strict=True)])
    y = np.repeat(np.arange(len(means)), counts.astype(int))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=2, help="noise draws per epsilon")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/oracle_bound.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    X_tr, X_val, y_tr, y_val, X_test, y_test = utility_split()
    C = 10
    counts, sums, covs, pooled = class_statistics(X_tr, y_tr, C)
    pooled_vals, pooled_vecs = np.linalg.eigh(pooled)
    chol = np.stack([np.linalg.cholesky(S + 1e-9 * np.eye(len(S))) for S in covs])
    log_prior = np.log(counts / counts.sum())
    sample_rng = np.random.default_rng(0)
    rows = []
    for eps in EPSILONS:
        plan = build_plan([ReleaseSpec("class_sums", 1.0, description="sum of records per "
                                       "class; the only paid release")], eps, DELTA)
        release = plan.release("class_sums")
        draws = 1 if math.isinf(eps) else args.draws
        for draw in range(draws):
            noisy_means = (sums + NoiseSource().gaussian(release, sums.shape)) / counts[:, None]
            val = {r: float((lda_predict(noisy_means, log_prior, pooled_vals, pooled_vecs, r,
                                         X_val) == y_val).mean()) for r in RIDGES}
            ridge = max(val, key=val.get)
            lda_test = float((lda_predict(noisy_means, log_prior, pooled_vals, pooled_vecs,
                                          ridge, X_test) == y_test).mean())
            X_syn, y_syn = sample_oracle(noisy_means, chol, counts, sample_rng)
            mlp = TwoLayerMLP(random_state=draw, **MLP).fit(X_syn, y_syn, classes=np.arange(C))
            eps_json = "inf" if math.isinf(eps) else eps
            for method, test, v, extra in [
                ("oracle-lda", lda_test, val[ridge], {"ridge": ridge}),
                ("oracle-gaussian-mlp", mlp.score(X_test, y_test), mlp.score(X_val, y_val), {}),
            ]:
                row = {"method": method, "epsilon": eps_json, "draw": draw,
                       "accuracy": round(test, 4), "val_accuracy": round(v, 4),
                       "sums_sigma": release.sigma, **extra}
                rows.append(row)
                print(f"[{time.perf_counter() - t0:5.0f}s] {row}", flush=True)
    utility = json.loads((ROOT / "benchmarks/results/utility.json").read_text())
    dpsgd = {r["epsilon"]: r["accuracy"] for r in utility["rows"] if r["method"] == "dp-sgd"}
    summary = []
    for eps in EPSILONS:
        key = "inf" if math.isinf(eps) else eps
        for method in ("oracle-lda", "oracle-gaussian-mlp"):
            accs = [r["accuracy"] for r in rows if r["method"] == method and r["epsilon"] == key]
            summary.append({"method": method, "epsilon": key, "accuracy": round(
                float(np.mean(accs)), 4), "min": min(accs), "max": max(accs),
                "dp_sgd": dpsgd.get(key)})
    for s in summary:
        print(s)
    write_result(args.out, rows, {
        "data": "Fashion-MNIST; EfficientNet-Lite0 64 px, L2-normalised, 1280-d; "
                "the utility benchmark's 54,000/6,000 split and 10k test",
        "delta": DELTA, "mlp": MLP, "ridges": RIDGES, "draws": args.draws,
        "free": "exact per-class covariances, exact counts",
        "paid": "per-class sums, L2 sensitivity 1, the whole (eps, delta)",
        "command": "python benchmarks/oracle_bound.py"}, t0, summary=summary)

if __name__ == "__main__":
    main()
