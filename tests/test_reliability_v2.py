"""Issue 27 ("Reliability v2"), items 5, 6, 10 and 11: what a run's own environment, its
inputs, a killed run and a user's files in ``--out`` must not do to the run or the budget.

Every scenario is bounded in time: what could hang (a FIFO, a killed run) runs in a
subprocess with a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from image_folders import gray_image_folder, image_folder_sets
from typer.testing import CliRunner

from dpsynth.cli import app

HERE = Path(__file__).parent
cli = CliRunner()


def _folder_args(tmp_path: Path, *extra: str) -> list[str]:
    return image_folder_sets(tmp_path, "privacy.epsilon=8", "privacy.budget.epsilon=50",
                             "model.subspace_dim=4", "model.normalize=false",
                             "synthesize.n=60", "evaluate.steps=2",
                             "evaluate.nonprivate_baseline=false",
                             f"data.dataset_id=folder-{tmp_path.name}", *extra)


@pytest.fixture
def folders(tmp_path):
    gray_image_folder(tmp_path / "train")
    gray_image_folder(tmp_path / "test", per_class=3)
    return tmp_path


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

