"""Image sources: the built-in splits and an image folder of your own."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.data.sources import ImageFolderSource, make_source


def _folder(root, classes=("cat", "dog"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def test_digits_split_is_a_fixed_partition():
    cfg = load_config("configs/digits-quick.yaml")
    train, test = make_source(cfg.data, "train"), make_source(cfg.data, "test")
    assert (len(train), len(test)) == (1437, 360)
    _, y_train = train.read(0, len(train))
    _, y_test = test.read(0, len(test))
    from sklearn.datasets import load_digits

    # Together the two splits are exactly the bundled set, label for label.
    assert np.array_equal(np.bincount(np.concatenate([y_train, y_test])),
                          np.bincount(load_digits().target))
    assert train.fingerprint() != test.fingerprint()
    assert train.fingerprint() == make_source(cfg.data, "train").fingerprint()
    limited = make_source(load_config("configs/digits-quick.yaml", ["data.limit=100"]).data,
                          "train")
    assert len(limited) == 100 and len(make_source(
        load_config("configs/digits-quick.yaml", ["data.limit=100"]).data, "test")) == 360


def test_image_folder_reads_resizes_and_labels_in_class_order(tmp_path):
    root = _folder(tmp_path / "train")
    src = ImageFolderSource(root, image_size=8, color="gray")
    assert src.class_names == ("cat", "dog") and len(src) == 6
    images, labels = src.read(0, 6)
    assert images.shape == (6, 8, 8) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    rgb, _ = ImageFolderSource(root, image_size=16).read(0, 2)
    assert rgb.shape == (2, 16, 16, 3)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderSource(tmp_path / "empty", 8)
    root = _folder(tmp_path / "t")
    with pytest.raises(ValueError, match=r"folders \['dog'\] that are not in class_names"):
        ImageFolderSource(root, 8, class_names=["cat"])
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    src = ImageFolderSource(root, 8)
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        src.read(0, len(src))


def test_image_folder_runs_through_encode_with_the_training_class_list(tmp_path):
    _folder(tmp_path / "train", classes=("a", "b", "c"))
    _folder(tmp_path / "test", classes=("a", "c"), per_class=2)  # no "b" images held out
    cfg = load_config(None, [
        "data.source=image-folder", f"data.train_dir={tmp_path / 'train'}",
        f"data.test_dir={tmp_path / 'test'}", "data.image_size=8", "data.color=gray",
        "encoder.name=pixels", "encoder.options={image_shape: [8, 8]}",
        f"encoder.cache_dir={tmp_path / 'cache'}"])
    train = steps.encode(cfg, "train", progress=False)
    test = steps.encode(cfg, "test", progress=False)
    assert train.class_names == test.class_names == ["a", "b", "c"]
    assert test.load()[1].tolist() == [0, 0, 2, 2]
    assert cfg.data.ledger_id().startswith("image-folder:")
