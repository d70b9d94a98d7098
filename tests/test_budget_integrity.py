"""The privacy budget cannot be reset by accident (issue 27, "Privacy budget"): the ledger
is not its only witness (its MLflow mirror is another), and the lifetime limit is the
dataset owner's recorded decision, not whatever a run's configuration says."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth.config import load_config
from dpsynth.ledger_charge import charge_run
from dpsynth.privacy.ledger import BudgetExceededError
from dpsynth.privacy.ledger_store import LedgerUnavailableError, open_ledger

DATASET = "witnessed"
cli = CliRunner()


def _config(*extra: str):
    return load_config("configs/digits-quick.yaml", [
        f"data.dataset_id={DATASET}", "privacy.epsilon=1", "privacy.budget.epsilon=2",
        "privacy.budget.delta=1e-4", *extra])


def _charge(tmp_path, name: str, *extra: str):
    return charge_run(_config(*extra), tmp_path / name, echo=lambda line: None)


def _spend_the_budget(tmp_path) -> int:
    """Charge eps = 1 runs until the eps = 2 budget refuses one; the number charged."""
    n = 0
    while True:
        try:
            _charge(tmp_path, f"run{n}")
        except BudgetExceededError:
            return n
        n += 1


@pytest.mark.parametrize("loss", ["deleted", "emptied"])
def test_a_lost_ledger_next_to_its_mirror_is_an_error_not_a_fresh_budget(
        tmp_path, _test_ledger, loss):
    spent = _spend_the_budget(tmp_path)
    assert spent >= 2
    if loss == "deleted":
        _test_ledger.unlink()
    else:
        _test_ledger.write_bytes(b"")
    with pytest.raises(BudgetExceededError) as info:
        _charge(tmp_path, "after")
    message = str(info.value)
    assert f"{spent} charge(s)" in message and "holds 0" in message
    assert "restore" in message and "nothing was charged" in message
    with open_ledger() as ledger:
        assert ledger.entries(DATASET) == []  # the refusal appended nothing


def test_a_ledger_with_fewer_charges_than_its_mirror_is_refused(tmp_path, _test_ledger):
    import shutil

    _charge(tmp_path, "one")
    backup = tmp_path / "backup.sqlite"
    shutil.copy(_test_ledger, backup)
    _charge(tmp_path, "two")
    shutil.copy(backup, _test_ledger)  # an old backup put back: one charge lost
    with pytest.raises(BudgetExceededError, match="holds 1 .* mirror .* 2 charge"):
        _charge(tmp_path, "three")


def test_an_unreadable_ledger_is_refused(tmp_path, _test_ledger):
    _charge(tmp_path, "one")
    _test_ledger.write_bytes(_test_ledger.read_bytes()[:100])  # truncated mid-file
    with pytest.raises(LedgerUnavailableError):
        _charge(tmp_path, "two")


def test_the_ledger_is_restored_from_its_mirror_by_the_owner(tmp_path, _test_ledger):
    spent = _spend_the_budget(tmp_path)
    _test_ledger.unlink()
    unset = cli.invoke(app, ["budget", "restore", "--dataset-id", DATASET])
    assert unset.exit_code == 2 and "give the dataset's --epsilon and --delta" in unset.stderr
    result = cli.invoke(app, ["budget", "restore", "--dataset-id", DATASET, "--epsilon", "2",
                              "--delta", "1e-4"])
    assert result.exit_code == 0, result.output
    assert f"restored {spent} charge(s)" in result.output
    assert "lifetime budget eps 2 at delta 0.0001 (set by the data owner" in result.output
    with open_ledger() as ledger:
        assert len(ledger.entries(DATASET)) == spent
    with pytest.raises(BudgetExceededError, match="limit eps = 2"):
        _charge(tmp_path, "after")  # the restored charges count again
    with pytest.raises(BudgetExceededError, match="disagrees"):
        _charge(tmp_path, "raised", "privacy.budget.epsilon=1000")


# ------------------------------------------------ the recorded lifetime limit (item 4)
def test_a_run_cannot_raise_the_lifetime_budget_in_its_own_config(tmp_path):
    first = _charge(tmp_path, "first").budget
    assert first.recorded_limit.new and first.recorded_limit.epsilon == 2
    for raised, what in ((["privacy.budget.epsilon=1000"], "eps 1000 at delta 0.0001"),
                         (["privacy.budget.delta=5e-4"], "eps 2 at delta 0.0005")):
        with pytest.raises(BudgetExceededError) as info:
            _charge(tmp_path, "raised", *raised)
        message = str(info.value)
        assert f"privacy.budget ({what}) disagrees" in message, message
        assert "eps 2 at delta 0.0001 (recorded by the dataset's first charge" in message
        assert (f"dpsynth budget set --dataset-id {DATASET} --epsilon E --delta D"
                in message)
    with open_ledger() as ledger:
        assert len(ledger.entries(DATASET)) == 1  # refused: nothing charged
    # The owner raises it, on the record; then the config must say the new limit.
    result = cli.invoke(app, ["budget", "set", "--dataset-id", DATASET, "--epsilon", "1000",
                              "--delta", "1e-4"])
    assert result.exit_code == 0, result.output
    assert "eps 1000 at delta 0.0001 (set by the data owner" in result.output
    assert _charge(tmp_path, "raised", "privacy.budget.epsilon=1000").budget.ok
    with pytest.raises(BudgetExceededError, match="set by the data owner"):
        _charge(tmp_path, "old-limit")
    shown = cli.invoke(app, ["budget", "show", "--dataset-id", DATASET])
    assert "lifetime budget eps 1000 at delta 0.0001" in shown.output
    assert "over 2 charge(s)" in shown.output


def test_the_owner_may_set_the_limit_before_the_first_charge(tmp_path):
    result = cli.invoke(app, ["budget", "set", "--dataset-id", DATASET, "--epsilon", "3",
                              "--delta", "1e-4"])
    assert result.exit_code == 0, result.output
    with pytest.raises(BudgetExceededError, match="disagrees"):
        _charge(tmp_path, "first")  # the config says 2
    budget = _charge(tmp_path, "first", "privacy.budget.epsilon=3").budget
    assert budget.ok and not budget.recorded_limit.new and budget.recorded_limit.by == "owner"


def test_only_the_owner_marks_a_charged_dataset_non_private(tmp_path):
    _charge(tmp_path, "private")
    for sets in (["privacy.budget.epsilon=inf"],
                 ["privacy.epsilon=inf", "privacy.budget.epsilon=inf"]):
        with pytest.raises(BudgetExceededError) as info:
            _charge(tmp_path, "mark", *sets)
        message = str(info.value)
        assert "already has 1 charge(s)" in message or "disagrees" in message, message
        assert f"dpsynth budget set --dataset-id {DATASET} --non-private" in message \
            or "dpsynth budget set" in message
    with open_ledger() as ledger:
        history = ledger.history(DATASET)
        assert history.nonprivate is None and len(history.charges) == 1
    result = cli.invoke(app, ["budget", "set", "--dataset-id", DATASET, "--non-private"])
    assert result.exit_code == 0, result.output
    assert "is marked non-private (since the data owner's `dpsynth budget set`" in result.output
    budget = _charge(tmp_path, "nonprivate", "privacy.epsilon=inf",
                     "privacy.budget.epsilon=inf").budget
    assert budget.ok and budget.nonprivate.by_owner
    again = cli.invoke(app, ["budget", "set", "--dataset-id", DATASET, "--epsilon", "5",
                             "--delta", "1e-4"])
    assert again.exit_code == 2 and "holds for good" in again.stderr


def test_a_dataset_never_charged_is_still_marked_by_its_first_run(tmp_path):
    budget = _charge(tmp_path, "first", "privacy.epsilon=inf",
                     "privacy.budget.epsilon=inf").budget
    assert budget.ok and budget.nonprivate.new


@pytest.mark.parametrize("args, fragment", [
    (["--epsilon", "5"], "needs both --epsilon and --delta"),
    (["--epsilon", "0", "--delta", "1e-5"], "epsilon must be > 0"),
    (["--epsilon", "inf", "--delta", "1e-5"], "say so with --non-private"),
    (["--epsilon", "5", "--delta", "1e-5", "--non-private"], "not both"),
])
def test_bad_owner_actions_are_refused(args, fragment):
    result = cli.invoke(app, ["budget", "set", "--dataset-id", DATASET, *args])
    assert result.exit_code == 2 and fragment in result.stderr, result.output
    with open_ledger() as ledger:
        assert ledger.history(DATASET).limit is None


# ------------------------------------------- the dataset's identity follows its records
def _folder_config(train: Path, *extra: str):
    return load_config(None, [
        "data.source=image-folder", f"data.train_dir={train}", f"data.test_dir={train.parent}"
        "/test", "data.image_size=8", "data.color=gray", "encoder.name=pixels",
        "encoder.options={image_shape: [8, 8]}", "privacy.budget.epsilon=2",
        "privacy.budget.delta=1e-4", *extra])


def test_a_renamed_training_folder_keeps_its_budget(tmp_path):
    from image_folders import gray_image_folder

    from dpsynth.privacy.identity import training_content_digest

    gray_image_folder(tmp_path / "data" / "train", per_class=3)
    first = charge_run(_folder_config(tmp_path / "data" / "train"), tmp_path / "one",
                       echo=lambda line: None)
    original = f"image-folder:{(tmp_path / 'data' / 'train').resolve()}"
    assert first.budget.dataset_id == original
    config = _folder_config(tmp_path / "data" / "train")
    digest = training_content_digest(config.data)
    (tmp_path / "data").rename(tmp_path / "moved")
    said: list[str] = []
    config = _folder_config(tmp_path / "moved" / "train")
    again = charge_run(config, tmp_path / "two", echo=said.append)
    assert again.budget.dataset_id == original and again.budget.previous_runs == 1
    assert config.data.dataset_id == original  # the rest of the run names the same id
    assert any("first charged as dataset" in line for line in said)
    # The digest is inside the boundary: in no output, no message, no MLflow record.
    written = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "two").rglob("*")
                        if p.is_file())
    assert digest not in written and digest not in "\n".join(said)
    assert digest[:16] not in written
    # A changed folder at a new path is a new dataset to the default id; an explicit
    # data.dataset_id is used as given.
    (tmp_path / "moved" / "train" / "c0" / "0.png").unlink()
    changed = charge_run(_folder_config(tmp_path / "moved" / "train"), tmp_path / "three",
                         echo=lambda line: None)
    assert changed.budget.dataset_id == f"image-folder:{(tmp_path / 'moved' / 'train')}"
    named = charge_run(_folder_config(tmp_path / "moved" / "train", "data.dataset_id=mine"),
                       tmp_path / "four", echo=lambda line: None)
    assert named.budget.dataset_id == "mine" and named.budget.previous_runs == 0


def test_webdataset_shards_spelled_differently_are_one_dataset(tmp_path):
    from image_folders import png_shard

    for n in range(3):
        png_shard(tmp_path / f"s-{n:06d}.tar", [f"k{n}"], first_value=n)
    spellings = [f"{tmp_path}/s-{{000000..000002}}.tar",
                 f"{tmp_path}/s-{{000000,000001,000002}}.tar",
                 f"{tmp_path}/./s-{{000000..000002}}.tar"]
    ids = []
    for i, urls in enumerate(spellings):
        config = load_config(None, [
            "data.source=webdataset", f"data.train_urls={urls}", f"data.test_urls={urls}",
            "data.image_size=8", "data.class_names=[a]", "encoder.name=pixels",
            "encoder.options={image_shape: [8, 8, 3]}", "privacy.budget.epsilon=10"])
        charged = charge_run(config, tmp_path / f"out{i}", echo=lambda line: None)
        ids.append(charged.budget.dataset_id)
        assert charged.budget.previous_runs == i
    assert ids == [f"webdataset:{spellings[0]}"] * 3
