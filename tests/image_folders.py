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


def tiny_run_args(tmp_path: Path, *extra: str) -> list[str]:
    """``dpsynth run`` arguments for a seconds-long private run on the image folders under
    ``tmp_path`` (:func:`tiny_folders`), its own dataset id per test folder."""
    return image_folder_sets(tmp_path, "privacy.epsilon=8", "privacy.budget.epsilon=50",
                             "model.subspace_dim=4", "model.normalize=false",
                             "synthesize.n=60", "evaluate.steps=2",
                             "evaluate.nonprivate_baseline=false",
                             f"data.dataset_id=folder-{tmp_path.name}", *extra)


def tiny_folders(tmp_path: Path) -> Path:
    """Small grey train and test image folders under ``tmp_path``."""
    gray_image_folder(tmp_path / "train")
    gray_image_folder(tmp_path / "test", per_class=3)
    return tmp_path


def png_shard(path: Path, keys: list[str], first_value: int = 0) -> Path:
    """A WebDataset tar shard: per key an 8x8 RGB PNG filled with ``first_value + i`` and a
    ``.cls`` of class 0."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), first_value + i, np.uint8)).save(buf,
                                                                                  format="PNG")
            for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path
