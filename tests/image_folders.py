"""Tiny grey image folders for the tests that run ``dpsynth run`` on an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def gray_image_folder(root: Path, classes=("c0", "c1", "c2"), per_class: int = 40,
                      size: int = 8) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` random ``size`` x ``size`` grey images."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def image_folder_sets(tmp_path: Path, *extra: str) -> list[str]:
    """``--set`` arguments for ``tmp_path/train`` and ``tmp_path/test`` with the pixels
    encoder at 8 x 8 and a cache under ``tmp_path``; ``extra`` overrides are appended."""
    sets = ["data.source=image-folder", f"data.train_dir={tmp_path / 'train'}",
            f"data.test_dir={tmp_path / 'test'}", "data.image_size=8", "data.color=gray",
            "encoder.name=pixels", "encoder.options={image_shape: [8, 8]}",
            f"encoder.cache_dir={tmp_path / 'cache'}", *extra]
    return [a for s in sets for a in ("--set", s)]
