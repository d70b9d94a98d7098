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


def test_unreadable_images_are_skipped_and_reported_when_asked(tmp_path):
    root = _folder(tmp_path / "t")
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    src = ImageFolderSource(root, 8, on_bad_image="skip", workers=2)
    with pytest.warns(UserWarning) as record:
        images, labels = src.read(0, len(src))
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and all(m.startswith("skipped: cannot read image") for m in messages)
    assert len(src) == 8 and len(images) == 6 and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(p.rsplit("/", 1)[1] for p in src.skipped) == ["broken.png", "empty.jpg"]


def _skipping_folder_config(tmp_path, *extra):
    """Image folders train/ and test/ under tmp_path, unreadable files skipped."""
    return load_config(None, [
        "data.source=image-folder", f"data.train_dir={tmp_path / 'train'}",
        f"data.test_dir={tmp_path / 'test'}", "data.image_size=8", "data.on_bad_image=skip",
        "encoder.name=pixels", "encoder.options={image_shape: [8, 8, 3]}",
        f"encoder.cache_dir={tmp_path / 'cache'}", *extra])


def test_skipped_files_are_recorded_in_the_private_manifest(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "test")
    (tmp_path / "train" / "cat" / "zz-broken.png").write_bytes(b"\x89PNG broken")
    cfg = _skipping_folder_config(tmp_path)
    with pytest.warns(UserWarning, match="zz-broken.png"):
        train = steps.encode(cfg, "train", progress=False)
    assert train.count == 6
    assert train.manifest["provenance"]["skipped_unreadable"][0].endswith("zz-broken.png")


def test_a_resumed_encode_still_lists_files_skipped_before_the_crash(tmp_path, monkeypatch):
    _folder(tmp_path / "train", per_class=6)
    _folder(tmp_path / "test")
    (tmp_path / "train" / "cat" / "000-broken.png").write_bytes(b"\x89PNG broken")
    cfg = _skipping_folder_config(tmp_path, "encoder.shard_rows=4")
    real_make_encoder = steps.make_encoder

    class CrashInThirdShard:
        def __init__(self, encoder):
            self.encoder, self.shards = encoder, 0

        def __getattr__(self, name):
            return getattr(self.encoder, name)

        def encode(self, *args, **kwargs):
            self.shards += 1
            if self.shards == 3:
                raise RuntimeError("simulated crash")
            return self.encoder.encode(*args, **kwargs)

    monkeypatch.setattr(steps, "make_encoder", lambda c: CrashInThirdShard(real_make_encoder(c)))
    with pytest.warns(UserWarning, match="000-broken.png"), \
            pytest.raises(RuntimeError, match="simulated crash"):
        steps.encode(cfg, "train", progress=False)
    monkeypatch.undo()
    resumed = steps.encode(cfg, "train", progress=False)  # the broken file's shard is kept
    assert resumed.count == 12
    skipped = resumed.manifest["provenance"]["skipped_unreadable"]
    assert len(skipped) == 1 and skipped[0].endswith("000-broken.png")


def _tar_shards(root, n_shards=2, per_shard=4, size=10, broken=None):
    import io
    import tarfile

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(root / f"train-{s:06d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{s}-{i:03d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    buf, format="PNG")
                payload = b"broken" if key == broken else buf.getvalue()
                for name, data in ((f"{key}.png", payload), (f"{key}.cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{root}/train-{{000000..{n_shards - 1:06d}}}.tar"


def test_webdataset_shards_are_indexed_and_read_by_slice(tmp_path):
    from dpsynth.data.sources import WebDatasetSource

    urls = _tar_shards(tmp_path / "wds")
    src = WebDatasetSource(urls, 8, ["a", "b", "c"], color="gray")
    assert len(src) == 8 and src.labels.tolist() == [0, 1, 2, 0] * 2
    images, labels = src.read(3, 6)  # spans both shards
    assert images.shape == (3, 8, 8) and labels.tolist() == [0, 0, 1]
    with pytest.raises(FileNotFoundError, match="not found"):
        WebDatasetSource(str(tmp_path / "missing-{0..1}.tar"), 8, ["a"])


def test_webdataset_bad_images_fail_or_skip(tmp_path):
    from dpsynth.data.sources import WebDatasetSource

    urls = _tar_shards(tmp_path / "wds", broken="s1-002")
    with pytest.raises(ValueError, match=r"train-000001.tar:s1-002.png"):
        WebDatasetSource(urls, 8, ["a", "b", "c"]).read(0, 8)
    skipping = WebDatasetSource(urls, 8, ["a", "b", "c"], on_bad_image="skip")
    with pytest.warns(UserWarning, match="s1-002"):
        images, labels = skipping.read(0, 8)
    assert len(images) == 7 and len(labels) == 7


def test_webdataset_config_runs_through_encode(tmp_path):
    urls = _tar_shards(tmp_path / "wds")
    cfg = load_config(None, [
        "data.source=webdataset", f"data.train_urls={urls}", f"data.test_urls={urls}",
        "data.image_size=8", "data.color=gray", "data.class_names=[a, b, c]",
        "encoder.name=pixels", "encoder.options={image_shape: [8, 8]}",
        f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=3"])
    es = steps.encode(cfg, "train", progress=False)
    assert es.count == 8 and es.class_names == ["a", "b", "c"]
    assert cfg.data.ledger_id() == f"webdataset:{urls}"


# ----------------------------------------------------- one record, one class, once (issue 10)
def test_class_names_in_the_config_must_be_unique_plain_folder_names(tmp_path):
    from dpsynth.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.class_names: class names must be unique, "
                                          r"but \['c2'\] appear more than once"):
        load_config(None, ["data.class_names=[c0, c1, c2, c2]"])
    folder = ["data.source=image-folder", f"data.train_dir={tmp_path}",
              f"data.test_dir={tmp_path}", "data.image_size=8"]
    for bad in ("../outside", "a/b", "..", "/abs"):
        with pytest.raises(ConfigError, match=rf"plain folder names .*got \['{bad}'\]"):
            load_config(None, [*folder, f"data.class_names=[c0, '{bad}']"])
    # WebDataset class names are labels only: a '/' (Fashion-MNIST's "T-shirt/top") is fine.
    wds = load_config(None, ["data.source=webdataset", "data.train_urls=x.tar",
                             "data.test_urls=x.tar", "data.image_size=8",
                             "data.class_names=[T-shirt/top, Trouser]"])
    assert wds.data.class_names == ["T-shirt/top", "Trouser"]
    assert wds.data.follow_symlinks_outside_root is False


def test_image_folder_refuses_repeated_or_path_like_class_names(tmp_path):
    from dpsynth.data.sources import DataSourceError

    root = _folder(tmp_path / "t")
    _folder(tmp_path / "outside", classes=("x",))
    (root / "a").mkdir()
    (root / "a" / "b").symlink_to(root / "dog", target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"must be unique, but \['dog'\]"):
        ImageFolderSource(root, 8, class_names=["cat", "dog", "dog"])
    for bad in ("../outside", "a/b", "", "."):
        with pytest.raises(DataSourceError, match=rf"plain folder names .*got \['{bad}'\]"):
            ImageFolderSource(root, 8, class_names=["cat", "dog", bad])


def test_a_second_path_to_a_file_in_its_own_class_is_read_once(tmp_path):
    root = _folder(tmp_path / "t")
    (root / "cat" / "zz-link.png").symlink_to(root / "cat" / "0.png")
    (root / "cat" / "hard.png").hardlink_to(root / "cat" / "1.png")
    src = ImageFolderSource(root, 8)
    assert len(src) == 6 and src.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.name for p in src.files] == ["0.png", "1.png", "2.png"] * 2
    assert all(p.is_absolute() and not p.is_symlink() for p in src.files)
    images, _ = src.read(0, 6)
    assert len(images) == 6


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_one_file_under_two_classes_is_refused(tmp_path, link):
    from dpsynth.data.sources import DataSourceError

    root = _folder(tmp_path / "t")
    target = root / "cat" / "0.png"
    if link == "symlink":
        (root / "dog" / "x.png").symlink_to(target)
    else:
        (root / "dog" / "x.png").hardlink_to(target)
    with pytest.raises(DataSourceError, match=r"one file under two classes, 'cat' \(as "
                                              r".*cat/0.png\) and 'dog' \(as .*dog/x.png\)"):
        ImageFolderSource(root, 8)


def test_class_folders_that_are_one_directory_are_refused(tmp_path):
    from dpsynth.data.sources import DataSourceError

    root = _folder(tmp_path / "t")
    (root / "puppy").symlink_to(root / "dog", target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"class folders 'dog' and 'puppy' .* are the "
                                              r"same directory"):
        ImageFolderSource(root, 8)


def test_symlinks_leaving_the_root_are_refused_unless_allowed(tmp_path):
    from dpsynth.data.sources import DataSourceError

    root = _folder(tmp_path / "t")
    elsewhere = _folder(tmp_path / "elsewhere", classes=("bird", "fish"), per_class=2)
    (root / "cat" / "ext.png").symlink_to(elsewhere / "fish" / "0.png")
    (root / "bird").symlink_to(elsewhere / "bird", target_is_directory=True)
    with pytest.raises(DataSourceError, match=r"class folder .*bird is a symlink to .*, "
                                              r"outside the image folder .*follow_symlinks"):
        ImageFolderSource(root, 8)
    (root / "bird").unlink()
    with pytest.raises(DataSourceError, match=r"cat/ext.png is a symlink to .*fish/0.png, "
                                              r"outside the image folder"):
        ImageFolderSource(root, 8)
    (root / "bird").symlink_to(elsewhere / "bird", target_is_directory=True)
    src = ImageFolderSource(root, 8, follow_symlinks_outside_root=True)
    assert src.class_names == ("bird", "cat", "dog")
    assert src.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert src.fingerprint()["class_names"] == ["bird", "cat", "dog"]  # files outside: no error
    assert len(src.read(0, len(src))[0]) == 9
    # Allowed to leave the root, an outside file still belongs to one class only.
    (root / "dog" / "ext.png").symlink_to(elsewhere / "fish" / "0.png")
    with pytest.raises(DataSourceError, match="one file under two classes, 'cat'"):
        ImageFolderSource(root, 8, follow_symlinks_outside_root=True)
    # The config option reaches the source.
    (root / "dog" / "ext.png").unlink()
    _folder(tmp_path / "test", classes=("bird", "cat", "dog"), per_class=1)
    cfg = load_config(None, [
        "data.source=image-folder", f"data.train_dir={root}",
        f"data.test_dir={tmp_path / 'test'}", "data.image_size=8"])
    with pytest.raises(DataSourceError, match="outside the image folder"):
        make_source(cfg.data, "test")  # the class list comes from the training folder
    follow = cfg.data.model_copy(update={"follow_symlinks_outside_root": True})
    assert len(make_source(follow, "train")) == 9 and len(make_source(follow, "test")) == 3


def test_image_folder_errors_are_data_source_errors(tmp_path):
    from dpsynth.data.sources import DataNotFoundError, DataSourceError

    with pytest.raises(DataNotFoundError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing", 8)
    assert issubclass(DataNotFoundError, FileNotFoundError)
    root = _folder(tmp_path / "t")
    with pytest.raises(DataSourceError, match="not in class_names"):
        ImageFolderSource(root, 8, class_names=["cat"])
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    src = ImageFolderSource(root, 8)
    with pytest.raises(DataSourceError, match="cannot read image .*broken.png"):
        src.read(0, len(src))


def test_webdataset_reads_each_record_once(tmp_path):
    import io
    import shutil
    import tarfile

    from dpsynth.data.sources import DataNotFoundError, DataSourceError, WebDatasetSource

    _tar_shards(tmp_path / "wds")
    shard0, shard1 = tmp_path / "wds" / "train-000000.tar", tmp_path / "wds" / "train-000001.tar"
    with pytest.raises(DataSourceError, match=r"shards .*train-000000.tar and "
                                              r".*train-000000.tar are one file"):
        WebDatasetSource(f"{tmp_path}/wds/train-{{000000,000001,000000}}.tar", 8, ["a", "b", "c"])
    (tmp_path / "link.tar").symlink_to(shard1)
    with pytest.raises(DataSourceError, match=r"train-000001.tar and .*link.tar are one file"):
        WebDatasetSource(f"{{{shard0},{shard1},{tmp_path / 'link.tar'}}}", 8, ["a", "b", "c"])
    shutil.copy(shard0, tmp_path / "copy.tar")  # another file holding the same samples
    with pytest.raises(DataSourceError, match=r"sample 's0-000' is in two shards, "
                                              r".*train-000000.tar and .*copy.tar"):
        WebDatasetSource(f"{{{shard0},{tmp_path / 'copy.tar'}}}", 8, ["a", "b", "c"])
    with pytest.raises(DataSourceError, match=r"must be unique, but \['a'\]"):
        WebDatasetSource(str(shard0), 8, ["a", "b", "a"])
    with pytest.raises(DataNotFoundError, match="not found"):
        WebDatasetSource(str(tmp_path / "missing.tar"), 8, ["a"])

    def tar_of(path, members):
        with tarfile.open(path, "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    tar_of(tmp_path / "twice.tar", [("k.png", png.getvalue()), ("k.cls", b"0"),
                                    ("k.png", png.getvalue())])
    with pytest.raises(DataSourceError, match=r"twice.tar: sample 'k' has two members named "
                                              r"'k.png' and 'k.png'"):
        WebDatasetSource(str(tmp_path / "twice.tar"), 8, ["a"])
    tar_of(tmp_path / "label.tar", [("k.png", png.getvalue()), ("k.cls", b"cat")])
    with pytest.raises(DataSourceError, match=r"label.tar: sample 'k' has label b'cat', not"):
        WebDatasetSource(str(tmp_path / "label.tar"), 8, ["a"])


def test_cli_refuses_a_repeated_class_name_before_charging_the_budget(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dpsynth import runner
    from dpsynth.cli import app

    classes = ("c0", "c1", "c2")
    _folder(tmp_path / "train", classes=classes)
    _folder(tmp_path / "test", classes=classes, per_class=1)
    charged = []
    monkeypatch.setattr(runner, "charge_run", lambda *a, **k: charged.append(a))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "run", "--no-progress", "--out", str(out),
        "--set", "data.source=image-folder", "--set", f"data.train_dir={tmp_path / 'train'}",
        "--set", f"data.test_dir={tmp_path / 'test'}", "--set", "data.image_size=8",
        "--set", "data.class_names=[c0,c1,c2,c2]", "--set", "encoder.name=pixels",
        "--set", "encoder.options={image_shape: [8, 8, 3]}",
        "--set", f"encoder.cache_dir={tmp_path / 'cache'}"])
    assert result.exit_code == 2, result.output
    assert "error: " in result.stderr and "['c2'] appear more than once" in result.stderr
    assert charged == [] and not out.exists()  # no charge, no ledger, nothing written


def test_cli_prints_a_data_source_error_as_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dpsynth import runner
    from dpsynth.cli import app
    from dpsynth.data.sources import DataSourceError

    def refuse(*args, **kwargs):
        raise DataSourceError("/data/t/dog/x.png is one file under two classes")

    monkeypatch.setattr(runner, "run", refuse)
    result = CliRunner().invoke(app, ["run", "--no-progress", "--out", str(tmp_path / "o"),
                                      "--set", "data.source=digits"])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: /data/t/dog/x.png is one file under two classes\n"


def test_an_ordinary_folder_keeps_its_fingerprint(tmp_path):
    import hashlib

    # Resolving files must not change the cache key of a folder without symlinks (its
    # embeddings would be encoded again): the listing stays relative to the root.
    root = _folder(tmp_path / "t")
    src = ImageFolderSource(root, 8)
    listing = "\n".join(f"{c}/{i}.png:{(root / c / f'{i}.png').stat().st_size}:"
                        f"{(root / c / f'{i}.png').stat().st_mtime_ns}"
                        for c in ("cat", "dog") for i in range(3))
    assert src.fingerprint()["listing_sha256"] == hashlib.sha256(
        listing.encode()).hexdigest()[:16]
