"""Encode Fashion-MNIST (60k train + 10k test) with EfficientNet-Lite0 at 64 px, cached.

    .venv/bin/python benchmarks/embeddings.py

Writes benchmarks/cache/fashion-mnist_efficientnet-lite0-64_{train,test}_{X,y}.npy
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
KEY = "fashion-mnist_efficientnet-lite0-64"


def load_embeddings(split: str) -> tuple[np.ndarray, np.ndarray]:
    X_path, y_path = CACHE / f"{KEY}_{split}_X.npy", CACHE / f"{KEY}_{split}_y.npy"
    if not X_path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        data = load_fashion_mnist(split)
        encoder = get_encoder("efficientnet-lite0", image_size=64)
        start = time.perf_counter()
        X = encoder.encode(data.images, batch_size=256, progress=True)
        print(f"encoded {split}: {len(X)} images in {time.perf_counter() - start:.0f} s "
              f"({torch.get_num_threads()} threads)")
        np.save(y_path, data.labels)
        np.save(X_path.with_suffix(".tmp.npy"), X)
        X_path.with_suffix(".tmp.npy").replace(X_path)
    return np.load(X_path), np.load(y_path)


if __name__ == "__main__":
    for split in ("test", "train"):
        X, y = load_embeddings(split)
        print(split, X.shape, np.bincount(y))
