"""Encode Fashion-MNIST (60k train + 10k test) with EfficientNet-Lite0, cached per input size.

    .venv/bin/python benchmarks/embeddings.py                   # 64 px
    .venv/bin/python benchmarks/embeddings.py --image-size 160  # the pipeline's size

Writes benchmarks/cache/fashion-mnist_efficientnet-lite0-<size>_{train,test}_{X,y}.npy
(git-ignored). Other benchmarks call :func:`load_embeddings`, which encodes on first use.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dpsynth.data import load_fashion_mnist
from dpsynth.encoders import get_encoder

CACHE = Path(__file__).parent / "cache"


def load_embeddings(split: str, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    key = f"fashion-mnist_efficientnet-lite0-{image_size}"
    X_path, y_path = CACHE / f"{key}_{split}_X.npy", CACHE / f"{key}_{split}_y.npy"
    if not X_path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        data = load_fashion_mnist(split)
        encoder = get_encoder("efficientnet-lite0", image_size=image_size)
        start = time.perf_counter()
        X = encoder.encode(data.images, batch_size=256, progress=True)
        print(f"encoded {split} at {image_size} px: {len(X)} images in "
              f"{time.perf_counter() - start:.0f} s "
              f"({torch.get_num_threads()} threads)")
        np.save(y_path, data.labels)
        np.save(X_path.with_suffix(".tmp.npy"), X)
        X_path.with_suffix(".tmp.npy").replace(X_path)
    return np.load(X_path), np.load(y_path)


def utility_split(image_size: int = 64) -> tuple[np.ndarray, ...]:
    """(X_train, X_val, y_train, y_val, X_test, y_test): the utility benchmark's split, a
    stratified 6,000-record validation split carved from the 60k training set (seed 0)."""
    from sklearn.model_selection import train_test_split

    X_all, y_all = load_embeddings("train", image_size)
    X_test, y_test = load_embeddings("test", image_size)
    parts = train_test_split(X_all, y_all, test_size=0.1, random_state=0, stratify=y_all)
    return (*parts, X_test, y_test)


def write_result(path: str | Path, rows: list, setup: dict, started: float, **extra) -> None:
    """Write a results file with the machine and the wall time in its setup."""
    import json
    import platform

    setup = {**setup, "machine": f"{platform.machine()}, {torch.get_num_threads()} torch "
                                 f"threads, {platform.python_version()}",
             "seconds": round(time.perf_counter() - started)}
    Path(path).write_text(json.dumps({"rows": rows, **extra, "setup": setup}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=64)
    size = ap.parse_args().image_size
    for split in ("test", "train"):
        X, y = load_embeddings(split, size)
        print(split, X.shape, np.bincount(y))
