"""Encoder input resolution (issue 16): utility and encode throughput of EfficientNet-Lite0
at input sizes 64, 96, 128, 160 and 224 px on Fashion-MNIST.

    .venv/bin/python benchmarks/resolution.py                      # the committed run
    .venv/bin/python benchmarks/resolution.py --train-per-class 6000 --test 10000  # full

For every size: encode a fixed, stratified subset of the training set (``--train-per-class``
records per class, seed 0; 10% of it held out as the validation split) and of the test
set (``--test`` records, stratified, seed 0), cached in benchmarks/cache/ like the 64 px
embeddings; then, on those embeddings and at each eps in {0.5, 1, 2} (delta 1e-5):

  dpsynth                   DPSynthesizer with its default configuration (fixed a priori)
  dp-sgd                    Opacus DP-SGD, best of utility.py's grid on validation, tuning
                            NOT accounted
  dp-sgd-tuning-accounted   every grid configuration under a share of the budget plus a
                            noisy-max selection (utility.dpsgd_accounted): fully DP
  nonprivate-mlp            the run's MLP (dpsynth's EvaluateConfig) on the real rows

The MLP is the one ``dpsynth run`` trains (EvaluateConfig's defaults). Throughput is the
encode of the subset (images per second, this machine's torch threads); the load average
during the run is recorded with it, because on a shared machine it moves the number.
Writes benchmarks/results/resolution.json and docs/resolution.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import CACHE, write_result  # noqa: E402
from utility import DELTA, DPSGD_GRID, dpsgd_accounted, dpsgd_tuning_free  # noqa: E402

from dpsynth import DPSynthesizer  # noqa: E402
from dpsynth.config import EvaluateConfig  # noqa: E402
from dpsynth.data import load_fashion_mnist  # noqa: E402
from dpsynth.encoders import get_encoder  # noqa: E402
from dpsynth.evaluation import TwoLayerMLP  # noqa: E402
from dpsynth.evaluation.baselines import model_accuracy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = [64, 96, 128, 160, 224]
EPSILONS = [0.5, 1.0, 2.0]


def mlp_params() -> dict:
    """The evaluation MLP of ``dpsynth run`` (its defaults), whatever they are today."""
    from dpsynth.steps import _mlp_params

    return _mlp_params(EvaluateConfig())


def subset(labels: np.ndarray, per_class: int | None, total: int | None) -> np.ndarray:
    """A fixed stratified subset of row indices (seed 0), sorted; all rows if neither."""
    n = len(labels)
    size = per_class * len(np.unique(labels)) if per_class else total
    if not size or size >= n:
        return np.arange(n)
    keep, _ = train_test_split(np.arange(n), train_size=size, random_state=0,
                               stratify=labels)
    return np.sort(keep)


def encoded(split: str, size: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The subset's embeddings at ``size`` px (cached) and how fast they were encoded."""
    key = f"fashion-mnist_efficientnet-lite0-{size}_{split}_rows{len(rows)}"
    X_path, meta_path = CACHE / f"{key}_X.npy", CACHE / f"{key}_meta.json"
    data = load_fashion_mnist(split)
    y = data.labels[rows]
    if X_path.exists() and meta_path.exists():
        return np.load(X_path), y, json.loads(meta_path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    encoder = get_encoder("efficientnet-lite0", image_size=size)
    images = data.images[rows]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    X = encoder.encode(images, batch_size=128, progress=True)
    seconds = time.perf_counter() - start
    meta = {"images": len(rows), "seconds": round(seconds, 1),
            "images_per_second": round(len(rows) / seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"encoded {split} at {size} px: {meta}", flush=True)
    np.save(X_path.with_suffix(".tmp.npy"), X)
    X_path.with_suffix(".tmp.npy").replace(X_path)
    meta_path.write_text(json.dumps(meta))
    return X, y, meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--eps", type=float, nargs="+", default=EPSILONS)
    ap.add_argument("--train-per-class", type=int, default=1000,
                    help="training records per class (6000: all of Fashion-MNIST's)")
    ap.add_argument("--test", type=int, default=3000, help="test records (10000: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/resolution.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs/resolution.png"))
    ap.add_argument("--table", action="store_true",
                    help="print the Markdown table of --out (docs/results.md) and stop")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return
    torch.set_num_threads(2)
    started = time.perf_counter()
    train_rows = subset(load_fashion_mnist("train").labels, args.train_per_class, None)
    test_rows = subset(load_fashion_mnist("test").labels, None, args.test)
    classes = np.arange(10)
    mlp = mlp_params()
    rows: list[dict] = []
    throughput: dict[str, dict] = {}

    def add(size: int, method: str, eps: float, acc: float, **extra) -> None:
        row = {"size": size, "method": method, "epsilon": "inf" if math.isinf(eps) else eps,
               "accuracy": round(acc, 4), **extra}
        rows.append(row)
        print(f"[{time.perf_counter() - started:6.0f}s] {row}", flush=True)

    for size in args.sizes:
        X_all, y_all, meta_train = encoded("train", size, train_rows)
        X_test, y_test, meta_test = encoded("test", size, test_rows)
        throughput[str(size)] = {"train": meta_train, "test": meta_test}
        X_tr, X_val, y_tr, y_val = train_test_split(X_all, y_all, test_size=0.1,
                                                    random_state=0, stratify=y_all)
        clf = TwoLayerMLP(**mlp).fit(X_tr, y_tr, classes=classes)
        add(size, "nonprivate-mlp", math.inf, clf.score(X_test, y_test),
            val_accuracy=round(clf.score(X_val, y_val), 4))
        for eps in args.eps:
            synth = DPSynthesizer(eps, DELTA, random_state=0).fit(X_tr, y_tr, classes=classes)
            X_syn, y_syn = synth.sample(len(X_tr))
            model = TwoLayerMLP(**mlp).fit(X_syn, y_syn, classes=classes)
            add(size, "dpsynth", eps, model.score(X_test, y_test),
                val_accuracy=round(model.score(X_val, y_val), 4))
            val, cfg, net, _ = dpsgd_tuning_free(eps, X_tr, y_tr, X_val, y_val, 10)
            add(size, "dp-sgd", eps, model_accuracy(net, X_test, y_test),
                config=cfg.label(), val_accuracy=round(val, 4))
            add(size, "dp-sgd-tuning-accounted", eps,
                dpsgd_accounted(eps, X_tr, y_tr, X_val, y_val, X_test, y_test, 10))
    setup = {"data": "Fashion-MNIST (Debian dataset-fashion-mnist), stratified subsets, "
                     "seed 0",
             "train": len(train_rows) - len(train_rows) // 10,
             "validation": len(train_rows) // 10, "test": len(test_rows),
             "encoder": "efficientnet-lite0 (ImageNet weights), bilinear resize, "
                        "L2-normalised 1280-d", "delta": DELTA, "mlp": mlp,
             "dpsgd_grid": [c.label() for c in DPSGD_GRID], "sizes": args.sizes,
             "command": "python benchmarks/resolution.py " + " ".join(sys.argv[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, rows, setup, started, throughput=throughput)
    plot(rows, throughput, Path(args.plot))


def best_size(result: dict) -> int:
    """The size whose dpsynth default has the best mean *validation* accuracy over the
    eps of the run (the test split is not used to choose)."""
    by_size: dict[int, list[float]] = {}
    for r in result["rows"]:
        if r["method"] == "dpsynth":
            by_size.setdefault(r["size"], []).append(r["val_accuracy"])
    return max(by_size, key=lambda s: float(np.mean(by_size[s])))


def table(result: dict) -> str:
    """Test accuracy (%) per size: non-private, then per eps dpsynth / DP-SGD tuning free /
    DP-SGD tuning accounted; and the encode throughput."""
    rows, throughput = result["rows"], result["throughput"]
    eps = sorted({r["epsilon"] for r in rows if r["epsilon"] != "inf"})
    acc = {(r["size"], r["method"], r["epsilon"]): 100 * r["accuracy"] for r in rows}
    head = ("| input | encode (img/s) | non-private MLP | "
            + " | ".join(f"eps {e}: dpsynth / DP-SGD / accounted" for e in eps) + " |")
    lines = [head, "|" + "---|" * (3 + len(eps))]
    for size in sorted({r["size"] for r in rows}):
        cells = [f"{acc[(size, 'dpsynth', e)]:.1f} / {acc[(size, 'dp-sgd', e)]:.1f} / "
                 f"{acc[(size, 'dp-sgd-tuning-accounted', e)]:.1f}" for e in eps]
        lines.append(f"| {size} px | {throughput[str(size)]['train']['images_per_second']} | "
                     f"{acc[(size, 'nonprivate-mlp', 'inf')]:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nbest size on validation (dpsynth): {best_size(result)} px"


def plot(rows: list[dict], throughput: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = sorted({r["size"] for r in rows})
    for method, eps, style in [("nonprivate-mlp", "inf", "k--")] + [
            (m, e, None) for m in ("dpsynth", "dp-sgd-tuning-accounted")
            for e in sorted({r["epsilon"] for r in rows if r["epsilon"] != "inf"})]:
        pts = [(r["size"], 100 * r["accuracy"]) for r in rows
               if r["method"] == method and r["epsilon"] == eps]
        if not pts:
            continue
        label = method if eps == "inf" else f"{method}, eps={eps}"
        if style:
            ax.plot(*zip(*pts, strict=True), style, label=label)
        else:
            ax.plot(*zip(*pts, strict=True), marker="o",
                    linestyle="-" if method == "dpsynth" else ":", label=label)
    ax.set_xlabel("encoder input size (px)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sizes)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Fashion-MNIST, EfficientNet-Lite0, delta=1e-5")
    ax2.plot(sizes, [throughput[str(s)]["train"]["images_per_second"] for s in sizes],
             marker="o")
    ax2.set_xlabel("encoder input size (px)")
    ax2.set_ylabel("images / s (2 CPU threads)")
    ax2.set_yscale("log")
    ax2.set_xticks(sizes)
    ax2.grid(alpha=0.3)
    ax2.set_title("encode throughput (CPU)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
