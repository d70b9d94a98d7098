"""The privacy budget cannot be reset by accident (issue 27, "Privacy budget"): the ledger
is not its only witness (its MLflow mirror is another), and the lifetime limit is the
dataset owner's recorded decision, not whatever a run's configuration says."""

from __future__ import annotations

import pytest

from dpsynth.config import load_config
from dpsynth.ledger_charge import charge_run
from dpsynth.privacy.ledger import BudgetExceededError
from dpsynth.privacy.ledger_store import LedgerUnavailableError, open_ledger

DATASET = "witnessed"


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
