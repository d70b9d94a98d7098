"""Issue 27 ("Reliability v2"), items 5, 6, 10 and 11: what a run's own environment, its
inputs, a killed run and a user's files in ``--out`` must not do to the run or the budget.

Every scenario is bounded in time: what could hang (a FIFO, a killed run) runs in a
subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from image_folders import tiny_folders, tiny_run_args
from stalled_run import kill_when_reached
from typer.testing import CliRunner

from dpsynth.cli import app

cli = CliRunner()


_folder_args = tiny_run_args


@pytest.fixture
def folders(tmp_path):
    return tiny_folders(tmp_path)


def _run(out: Path, *args: str):
    return cli.invoke(app, ["run", "--no-progress", "--out", str(out), *args])


def _refused(result, fragment: str, charges: list, out: Path | None = None) -> None:
    """Exit code 2, one ``error:`` line naming the problem, nothing charged."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert fragment in result.stderr, result.stderr
    assert charges == []
    if out is not None:
        assert not out.exists()


def _cli_subprocess(args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``dpsynth`` in a child process, killed (with its group) after ``timeout`` s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from dpsynth.cli import app; app()", *args],
        stdout=kwargs.pop("stdout", subprocess.PIPE), stderr=subprocess.PIPE, text=True,
        env=os.environ.copy(), start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        pytest.fail(f"dpsynth {' '.join(args[:3])} ... did not end within {timeout} s")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# ------------------------------------------------------- item 6: bombs and FIFOs
def test_a_decompression_bomb_png_is_refused_naming_the_file(folders, charges):
    from PIL import Image

    bomb = folders / "train" / "c1" / "bomb.png"
    # 20,000 x 20,000 one-bit pixels: a few kB on disk, 400 M pixels decoded (more than
    # twice PIL's default MAX_IMAGE_PIXELS, where Image.open raises).
    Image.new("1", (20_000, 20_000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    out = folders / "out"
    result = _run(out, *_folder_args(folders))
    _refused(result, f"{bomb}: more pixels than PIL's Image.MAX_IMAGE_PIXELS", charges, out)


def test_an_image_just_over_max_image_pixels_is_refused_too(folders, charges, monkeypatch):
    """Between one and two times the limit PIL only warns; dpsynth refuses."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8 * 8 * 3)
    big = folders / "train" / "c0" / "big.png"
    Image.new("L", (14, 14)).save(big)  # 196 pixels: over 192, under 384
    result = _run(folders / "out", *_folder_args(folders))
    assert result.exit_code == 2 and charges == [], result.output
    # PIL's own DecompressionBombWarning may come first; the error is one line.
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert f"{big}: 14 x 14 pixels, more than" in result.stderr


def test_a_bomb_is_skipped_when_bad_images_are_skipped(folders, monkeypatch):
    from PIL import Image

    from dpsynth.data.sources import ImageFolderSource

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (30, 30)).save(folders / "train" / "c0" / "zz-big.png")
    source = ImageFolderSource(folders / "train", 8, "gray", on_bad_image="skip")
    with pytest.warns(UserWarning, match="zz-big.png: more pixels than PIL"):
        images, _ = source.read(0, len(source))
    assert len(images) == len(source) - 1 and source.skipped[0].endswith("zz-big.png")


def test_a_fifo_named_png_in_a_class_folder_is_refused_not_opened(folders):
    fifo = folders / "train" / "c1" / "pipe.png"
    os.mkfifo(fifo)
    out = folders / "out"
    done = _cli_subprocess(["run", "--no-progress", "--out", str(out),
                            *_folder_args(folders)], timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert f"{fifo}: it is a FIFO, not a regular file" in done.stderr
    assert not out.exists()


def test_decode_image_never_opens_a_fifo(tmp_path):
    import threading

    from dpsynth.data.sources import decode_image

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    found: list = []
    reader = threading.Thread(target=lambda: found.append(
        decode_image(fifo, 8, "gray", str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): give it a writer that closes at once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
        pytest.fail("decode_image opened the FIFO and blocked")
    assert isinstance(found[0], str) and "it is a FIFO" in found[0]


# ------------------------------------------------- item 11: a user's files in --out
def _owned(out: Path) -> dict:
    return json.loads((out / ".dpsynth-outputs.json").read_text())


def _as_user(script: str, cwd: Path) -> None:
    """Write files the way a user does: from another process (a shell)."""
    subprocess.run(["sh", "-c", script], cwd=cwd, check=True, timeout=30)


def test_a_log_the_shell_redirects_into_out_survives_the_next_run(folders):
    """``dpsynth run --out D --overwrite > D/run1.log`` then ``dpsynth run --out D``."""
    out = folders / "out"
    out.mkdir()
    with open(out / "run1.log", "w") as log:  # what the shell's redirect does
        done = _cli_subprocess(["run", "--no-progress", "--overwrite", "--out", str(out),
                                *_folder_args(folders)], timeout=300, stdout=log)
    assert done.returncode == 0, done.stderr
    assert "dpsynth run finished" in (out / "run1.log").read_text()
    assert "run1.log" not in _owned(out)["files"]
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 0, result.output
    assert "dpsynth run finished" in (out / "run1.log").read_text()


def test_files_a_user_writes_into_out_during_a_run_are_kept(folders, monkeypatch):
    from dpsynth import steps

    out = folders / "out"
    assert _run(out, *_folder_args(folders)).exit_code == 0
    (out / "notes.txt").write_text("before the run\n")
    real = steps.evaluate_run

    def evaluate_while_the_user_writes(*args, **kwargs):
        metrics = real(*args, **kwargs)
        _as_user("echo 'during evaluate' >> notes.txt; echo mine > evaluation/mine.txt", out)
        return metrics

    monkeypatch.setattr(steps, "evaluate_run", evaluate_while_the_user_writes)
    assert _run(out, *_folder_args(folders)).exit_code == 0
    monkeypatch.undo()
    owned = _owned(out)
    assert "notes.txt" not in owned["files"] and "evaluation/mine.txt" not in owned["files"]
    assert set(owned["sha256"]) == set(owned["files"])  # every recorded file has its hash
    result = _run(out, *_folder_args(folders))
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "before the run\nduring evaluate\n"
    assert (out / "evaluation" / "mine.txt").read_text() == "mine\n"


def test_an_output_changed_since_dpsynth_wrote_it_is_kept_with_a_warning(folders):
    out = folders / "out"
    assert _run(out, *_folder_args(folders, "decode.per_class=4")).exit_code == 0
    pngs = sorted((out / "decoded" / "png").rglob("*.png"), key=lambda p: p.name)
    assert len(pngs) == 12
    edited = pngs[-1]  # the last sample's: a per_class=1 rerun does not write it again
    name = edited.relative_to(out).as_posix()
    _as_user(f"printf 'retouched' >> {edited}", out)
    result = _run(out, *_folder_args(folders, "decode.per_class=1"))
    assert result.exit_code == 0, result.output
    assert edited.read_bytes().endswith(b"retouched")  # changed since: kept
    # dpsynth's own stale PNGs, unchanged, are removed: 3 new ones and the edited one.
    assert len(list((out / "decoded" / "png").rglob("*.png"))) == 4
    assert name in result.output and "changed since" in result.output
    assert name not in _owned(out)["files"]


# ------------------------------------------- item 10: runs killed outright, any --out
def _digits_args(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=500",
            "synthesize.n=1500", "synthesize.shard_rows=500", "evaluate.steps=50",
            "evaluate.image_level=false", "evaluate.nonprivate_baseline=false",
            "data.dataset_id=digits-killed", "privacy.budget.epsilon=40",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]
    return ["--config", "configs/digits-quick.yaml", "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def test_a_run_killed_outright_is_marked_killed_by_any_later_run_on_the_host(tmp_path):
    from mlflow.tracking import MlflowClient

    from dpsynth import tracking

    marker = tmp_path / "reached"
    killed_out = tmp_path / "killed"
    pid = kill_when_reached("synthesize", marker,
                            ["--out", str(killed_out), *_digits_args(tmp_path)], timeout=240)
    dead = json.loads((killed_out / "run.json").read_text())
    assert dead["status"] == "running"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a file-based store
    run = client.get_run(dead["run_id"])
    assert run.info.status == "RUNNING"
    assert run.data.tags[tracking.HOST_TAG] and run.data.tags[tracking.PID_TAG] == str(pid)
    experiment = run.info.experiment_id
    # Two more RUNNING runs of this host: one of a live process (this one: left alone),
    # one whose pid now belongs to another process (another start time: ended).
    live = client.create_run(experiment, tags=tracking.process_tags()).info.run_id
    reused = client.create_run(experiment, tags={
        **tracking.process_tags(), tracking.PID_STARTED_TAG: "1"}).info.run_id

    result = cli.invoke(app, ["run", "--out", str(tmp_path / "elsewhere"),
                              *_digits_args(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"MLflow run {dead['run_id']} (process {pid} on this host)" in result.output
    ended = client.get_run(dead["run_id"])
    assert ended.info.status == "KILLED"
    assert f"process {pid} that ran it is gone" in ended.data.tags[tracking.ENDED_BY_TAG]
    steps_of_dead = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{dead['run_id']}'")
    status = {r.data.tags["dpsynth.step"]: r.info.status for r in steps_of_dead}
    assert status["synthesize"] == "KILLED" and status["fit_gmm"] == "FINISHED", status
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(reused).info.status == "KILLED"
    record = json.loads((tmp_path / "elsewhere" / "run.json").read_text())
    assert client.get_run(record["run_id"]).info.status == "FINISHED"


# ------------------------------------- item 5: the run's own environment, before the charge
@pytest.fixture
def stop_at_charge(monkeypatch):
    """Every call of ``runner.charge_run``, which then stops the run: a run the pre-flight
    should have refused ends here, charged, instead of running on into the failure."""
    from dpsynth import runner

    calls: list[object] = []

    def charged(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("charged: the pre-flight let this run through")

    monkeypatch.setattr(runner, "charge_run", charged)
    return calls


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only): ``tmpfs(size, *options)`` gives its folder; each is
    unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        where = tmp_path / f"tmpfs-{len(mounted)}"
        where.mkdir()
        opts = ",".join([f"size={size}", *options])
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=False, timeout=30)


def _digits(tmp_path: Path, *extra: str) -> list[str]:
    sets = [f"encoder.cache_dir={tmp_path / 'cache'}", "synthesize.n=1500",
            "evaluate.image_level=false", "evaluate.nonprivate_baseline=false",
            "data.dataset_id=digits-env", "privacy.budget.epsilon=40", *extra]
    return ["--config", "configs/digits-quick.yaml", "--no-progress",
            *[a for s in sets for a in ("--set", s)]]


def test_a_cache_dir_that_is_a_file_is_refused_naming_no_digest(tmp_path, stop_at_charge):
    import re

    (tmp_path / "cache").write_text("not a folder")
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"), *_digits(tmp_path)])
    _refused(result, f"encoder.cache_dir {tmp_path / 'cache'}", stop_at_charge)
    assert not re.search(r"[0-9a-f]{32}", result.stderr), result.stderr  # no digest


def test_a_cache_index_that_is_a_file_is_refused_naming_no_digest(tmp_path, stop_at_charge):
    import re

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index").write_text("not a folder")
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"), *_digits(tmp_path)])
    _refused(result, "is a file, not a folder", stop_at_charge)
    assert not re.search(r"[0-9a-f]{32}", result.stderr), result.stderr


def test_a_read_only_cache_dir_is_refused_before_the_charge(tmp_path, tmpfs, stop_at_charge):
    cache = tmpfs("1m", "ro")
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"),
                              *_digits(tmp_path, f"encoder.cache_dir={cache}")])
    _refused(result, f"encoder.cache_dir {cache} is not writable: Read-only file system",
             stop_at_charge)


def test_a_full_cache_dir_is_refused_before_the_charge(tmp_path, tmpfs, stop_at_charge):
    cache = tmpfs("256k")  # the digits embeddings take about 470 kB
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"),
                              *_digits(tmp_path, f"encoder.cache_dir={cache}")])
    _refused(result, "not enough free space: the run writes about", stop_at_charge)
    assert f"encoder.cache_dir {cache}" in result.stderr


def test_an_out_on_a_full_file_system_is_refused_before_the_charge(tmp_path, tmpfs,
                                                                   stop_at_charge):
    out = tmpfs("1m") / "out"
    result = cli.invoke(app, ["run", "--out", str(out), *_digits(tmp_path)])
    _refused(result, f"--out {out} (about", stop_at_charge)
    assert "not enough free space" in result.stderr


def test_free_space_is_checked_against_the_estimate(tmp_path, monkeypatch, stop_at_charge):
    """Without a tmpfs: the probe the pre-flight uses, reporting a nearly full disk."""
    from dpsynth import preflight

    monkeypatch.setattr(preflight, "free_space", lambda path: 100_000)
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"), *_digits(tmp_path)])
    _refused(result, "not enough free space", stop_at_charge)


def test_class_names_on_a_built_in_dataset_are_refused(tmp_path, stop_at_charge):
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"),
                              *_digits(tmp_path, "data.class_names=[a,b]")])
    _refused(result, "data.class_names is set, but data.source 'digits' is a built-in",
             stop_at_charge)


def test_an_image_size_too_large_for_memory_is_refused(folders, monkeypatch,
                                                       stop_at_charge):
    from dpsynth import preflight

    monkeypatch.setattr(preflight, "available_memory", lambda: 8 << 30)
    result = _run(folders / "out", *_folder_args(
        folders, "data.image_size=4096", "encoder.options={image_shape: [4096, 4096]}"))
    _refused(result, "encode would need about", stop_at_charge)
    assert "encoder.batch_size, data.image_size" in result.stderr


@pytest.mark.parametrize("sets", [
    ["model.components_per_class=2", "model.lsh_depth=40"],
    ["model.components_per_class=100000000"],
], ids=["lsh_depth", "components_per_class"])
def test_a_model_too_large_for_memory_is_refused(tmp_path, stop_at_charge, sets):
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"),
                              *_digits(tmp_path, *sets)])
    _refused(result, "fit would need about", stop_at_charge)
    assert "model.components_per_class" in result.stderr


def _shard(path: Path, n: int = 25, garbage: int | None = None) -> Path:
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
            data = b"garbage" if i == garbage else buf.getvalue()
            for name, payload in ((f"{i:06d}.png", data), (f"{i:06d}.cls", b"%d" % (i % 2))):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def _webdataset(tmp_path: Path, *extra: str) -> list[str]:
    sets = ["data.source=webdataset", f"data.train_urls={tmp_path / 'train.tar'}",
            f"data.test_urls={tmp_path / 'test.tar'}", "data.class_names=[a,b]",
            "data.image_size=8", "data.color=gray", "encoder.name=pixels",
            "encoder.options={image_shape: [8, 8]}", f"encoder.cache_dir={tmp_path / 'c'}",
            "privacy.epsilon=8", "privacy.budget.epsilon=50", "model.subspace_dim=4",
            "model.normalize=false", "synthesize.n=60", "evaluate.steps=2",
            "evaluate.nonprivate_baseline=false", *extra]
    return ["--no-progress", *[a for s in sets for a in ("--set", s)]]


@pytest.mark.parametrize("damage, fragment", [
    ("truncated", "is truncated or damaged"),
    ("not-a-tar", "is not a readable tar file"),
    ("garbage-image", "cannot identify image file"),
])
def test_a_bad_webdataset_shard_is_refused_before_the_charge(tmp_path, stop_at_charge,
                                                             damage, fragment):
    train = _shard(tmp_path / "train.tar", garbage=7 if damage == "garbage-image" else None)
    _shard(tmp_path / "test.tar", n=6)
    if damage == "truncated":
        train.write_bytes(train.read_bytes()[:int(train.stat().st_size * 0.6)])
    elif damage == "not-a-tar":
        train.write_text("this is no tar file\n" * 100)
    result = cli.invoke(app, ["run", "--out", str(tmp_path / "out"),
                              *_webdataset(tmp_path)])
    _refused(result, fragment, stop_at_charge)
    assert str(train) in result.stderr


def test_a_whole_webdataset_shard_still_reads_every_sample(tmp_path):
    from dpsynth.data.sources import WebDatasetSource

    source = WebDatasetSource(str(_shard(tmp_path / "s.tar")), 8, ["a", "b"], "gray")
    source.check_headers()
    assert len(source) == 25 and len(source.read(0, 25)[0]) == 25
