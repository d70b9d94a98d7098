"""``dpsynth run`` as an unlucky user meets it: runs that cannot start cost nothing, --out
holds only what dpsynth wrote, and a run that fails after its charge keeps its releases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from image_folders import tiny_folders, tiny_run_args
from typer.testing import CliRunner

from dpsynth import steps
from dpsynth.cli import app
from dpsynth.config import load_config
from dpsynth.outputs import OWNER_FILE, OutputDirError, remove_embedding_set
from dpsynth.preflight import PreflightError, preflight

cli = CliRunner()


_folder_args = tiny_run_args


@pytest.fixture
def folders(tmp_path):
    return tiny_folders(tmp_path)


def _run(out: Path, *args: str):
    return cli.invoke(app, ["run", "--no-progress", "--out", str(out), *args])


# ------------------------------------------------------------- pre-flight: no charge
@pytest.mark.parametrize("breakage, message", [
    (lambda p: (p / "train").rename(p / "elsewhere"), "image folder"),
    (lambda p: (p / "test").rename(p / "elsewhere"), "test split"),
    (lambda p: (p / "train" / "c2").rename(p / "train" / "C2"), "C2"),
])
def test_a_run_that_cannot_start_is_refused_before_the_charge(folders, charges, breakage,
                                                               message):
    breakage(folders)
    out = folders / "out"
    result = _run(out, *_folder_args(folders, "data.class_names=[c0,c1,c2]"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert charges == [] and not out.exists()


def test_an_encoder_that_does_not_take_the_images_is_refused_before_the_charge(folders,
                                                                               charges):
    out = folders / "out"
    result = _run(out, *_folder_args(folders, "encoder.options={image_shape: [12, 12]}"))
    assert result.exit_code == 2, result.output
    assert "cannot encode the private training images (shape (8, 8))" in result.stderr
    assert "(12, 12)" in result.stderr and charges == [] and not out.exists()


def test_an_unknown_encoder_is_one_line_naming_the_key(folders, charges):
    result = _run(folders / "out", *_folder_args(folders, "encoder.name=no-such-encoder"))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert "encoder.name: unknown encoder 'no-such-encoder'; available:" in result.stderr
    assert charges == []


def test_an_unknown_decoder_is_refused_before_the_charge(folders, charges):
    result = _run(folders / "out", *_folder_args(folders, "decode.decoder=no-such-decoder"))
    assert result.exit_code == 2, result.output
    assert "decode.decoder: unknown decoder 'no-such-decoder'" in result.stderr
    assert charges == []


def test_missing_fashion_mnist_files_are_refused_before_the_charge(tmp_path, charges,
                                                                   monkeypatch):
    monkeypatch.setenv("DPSYNTH_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    result = _run(tmp_path / "out", "--set", "encoder.name=pixels")
    assert result.exit_code == 2, result.output
    assert "train-images-idx3-ubyte" in result.stderr and charges == []


def test_a_truncated_idx_file_is_found_from_its_header(tmp_path):
    from dpsynth.data.idx import read_idx_header

    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (5, 4, 4))
    (tmp_path / "ok").write_bytes(header + bytes(80))
    assert read_idx_header(tmp_path / "ok")[1] == (5, 4, 4)
    (tmp_path / "short").write_bytes(header + bytes(79))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx_header(tmp_path / "short")


@pytest.mark.parametrize("make_out, message", [
    (lambda p: p / "afile", "exists and is not a directory"),
    (lambda p: p / "afile" / "below", "which is a file"),
    (lambda p: Path("/sys/dpsynth-test-out"), "is not writable"),
])
def test_an_unusable_out_is_refused_in_one_line(tmp_path, charges, make_out, message):
    (tmp_path / "afile").write_text("mine")
    result = _run(make_out(tmp_path), "--config", "configs/digits-quick.yaml")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert charges == [] and (tmp_path / "afile").read_text() == "mine"


# ----------------------------------------------------------------- --out ownership
def test_a_foreign_non_empty_out_is_refused_unless_overwrite(folders, charges):
    out = folders / "out"
    (out / "synthetic").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "synthetic" / "mine.npy").write_bytes(b"precious")
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 2 and "not a dpsynth output directory" in result.stderr
    assert charges == []
    # --overwrite: the run writes its outputs, and still removes nothing of the user's.
    result = _run(out, "--overwrite", *_folder_args(folders))
    assert result.exit_code == 2 and "holds no EmbeddingSet" in result.stderr, result.output
    assert (out / "synthetic" / "mine.npy").read_bytes() == b"precious"
    (out / "synthetic" / "mine.npy").unlink()
    result = _run(out, "--overwrite", *_folder_args(folders))
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "my notes"
    owned = json.loads((out / OWNER_FILE).read_text())["files"]
    assert "metrics.json" in owned and "notes.txt" not in owned


def test_a_rerun_removes_its_own_stale_outputs_and_nothing_else(folders):
    out = folders / "out"
    assert _run(out, *_folder_args(folders, "decode.per_class=4")).exit_code == 0
    pngs = sorted((out / "decoded" / "png").rglob("*.png"))
    assert len(pngs) == 12
    (out / "decoded" / "png" / "keep-me.txt").write_text("mine")
    (out / "evaluation" / "my-plot.png").write_bytes(b"mine")
    result = _run(out, *_folder_args(folders, "decode.per_class=1"))
    assert result.exit_code == 0, result.output
    assert len(sorted((out / "decoded" / "png").rglob("*.png"))) == 3  # no stale PNG
    assert (out / "decoded" / "png" / "keep-me.txt").read_text() == "mine"
    assert (out / "evaluation" / "my-plot.png").read_bytes() == b"mine"


def test_synthesize_removes_only_an_embedding_set(tmp_path):
    user = tmp_path / "theirs"
    user.mkdir()
    (user / "data.csv").write_text("a,b")
    with pytest.raises(OutputDirError, match="holds no EmbeddingSet"):
        remove_embedding_set(user)
    assert (user / "data.csv").read_text() == "a,b"
    from dpsynth.data.store import write_embedding_set

    X = np.ones((4, 3), np.float32)
    s = write_embedding_set(tmp_path / "set", X, np.zeros(4, np.int64), encoder="pixels",
                            normalized=False, classes=[0], class_names=["a"], dataset_id="d",
                            key={"k": 1})
    (s.path / "README.txt").write_text("mine")
    remove_embedding_set(s.path)
    assert sorted(p.name for p in s.path.iterdir()) == ["README.txt"]


# ------------------------------------------------------------ failure after charge
def test_a_class_without_test_records_is_reported_not_a_crash(folders):
    for f in (folders / "test" / "c1").iterdir():
        f.unlink()
    out = folders / "out"
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class_accuracy"]["1"] is None
    assert metrics["classes_without_test_records"] == ["c1"]
    assert "no test record" in metrics["note"]
    assert isinstance(metrics["per_class_accuracy"]["0"], float)


def test_a_failure_after_the_charge_keeps_the_releases_and_says_so(folders, monkeypatch):
    from mlflow.tracking import MlflowClient

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(steps, "evaluate_run", broken)
    out = folders / "out"
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert "failed in step 'evaluate'" in err and "evaluation exploded" in err
    assert "charge is kept" in err and "missing: report, metrics" in err
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["failed_step"] == "evaluate"
    assert set(record["missing"]) == {"report", "metrics"}
    for kept in ("clusters", "mixture", "synthetic_embeddings"):
        assert Path(record["outputs"][kept]).exists()
    client = MlflowClient(record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "FAILED"
    assert record["budget"]["within_budget"] is True


def test_preflight_reads_no_record(folders, monkeypatch):
    """The pre-flight decides from listings and headers: an image decoder that explodes
    proves no image file is opened."""
    import dpsynth.data.sources as sources

    def no_reading(*args, **kwargs):
        raise AssertionError("the pre-flight read a record")

    monkeypatch.setattr(sources, "decode_image", no_reading)
    cfg = load_config(None, _folder_args(folders)[1::2])
    report = preflight(cfg, folders / "out")
    assert report.image_shape == {"train": (8, 8), "test": (8, 8)}
    assert report.records == {"train": 120, "test": 9}
    with pytest.raises(PreflightError, match="no folder under data.train_dir"):
        preflight(cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"class_names": ["c0", "c1", "c2", "c3"]})}), None)


def test_a_file_that_is_no_image_stops_the_run_before_the_charge(folders, charges):
    (folders / "train" / "c1" / "notes.png").write_text("not an image")
    result = _run(folders / "out", *_folder_args(folders))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "notes.png" in result.stderr
    assert "on_bad_image: skip" in result.stderr and charges == []


def test_an_image_damaged_past_its_header_fails_after_the_charge_in_one_line(folders,
                                                                              charges):
    good = (folders / "train" / "c1" / "0.png").read_bytes()
    (folders / "train" / "c1" / "broken.png").write_bytes(good[: len(good) // 2])
    out = folders / "out"
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "broken.png" in result.stderr
    assert "charge is kept" in result.stderr and len(charges) == 1
    assert json.loads((out / "run.json").read_text())["failed_step"] == "encode"


def test_a_data_only_preflight_checks_the_data_without_the_encoder(folders):
    """The pipeline's plan pod may not hold the encoder's weights: it checks the data.
    (A known encoder whose weights are not on this offline machine stands in for it.)"""
    cfg = load_config(None, _folder_args(
        folders, "encoder.name=open_clip:ViT-B-32:laion2b_s34b_b79k",
        "encoder.options={}")[1::2])
    report = preflight(cfg, None, data_only=True)
    assert report.records == {"train": 120, "test": 9} and report.cache == {}
    with pytest.raises(PreflightError, match="cannot be loaded"):
        preflight(cfg, None)
    (folders / "train").rename(folders / "gone")
    with pytest.raises(PreflightError, match="image folder .*train does not exist"):
        preflight(cfg, None, data_only=True)
