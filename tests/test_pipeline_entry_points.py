"""`dpsynth pipeline submit | schedule | compile` validate before they act (issue 27,
item 7): what the run's plan step (or the cluster) would refuse is refused here, with one
line, before any request or any file."""

from __future__ import annotations

import pytest
from fake_kfp import FakeKfp
from typer.testing import CliRunner

from dpsynth.cli import app

cli = CliRunner()


@pytest.mark.parametrize("param, says", [
    ("epsilon=abc", "the pipeline takes a number for epsilon"),
    ("epsilon=", "the pipeline takes a number for epsilon"),
    ("epsilon=1000", "above the largest supported finite epsilon"),
    ("delta=0.5", "delta must be < 0.001"),
    ("dataset=nosuch", "data.source"),
    ("n_samples=1.5", "the pipeline takes an integer for n_samples"),
    ("decode=maybe", "the pipeline takes true or false for decode"),
])
def test_submit_refuses_what_the_plan_step_would_before_any_request(param, says):
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url, "--param", param])
        assert kfp.requests == []
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("cron, says", [
    ("99 99 99 * * *", "second field '99'"),
    ("0 0 25 * * *", "hour field '25'"),
    ("0 0 3 0 * *", "day-of-month field '0'"),
    ("0 0 3 * 13 *", "month field '13'"),
    ("0 */0 * * * *", "minute field '*/0'"),
    ("0 5-1 * * * *", "minute field '5-1'"),
    ("a b c d e f", "second field 'a'"),
])
def test_schedule_refuses_a_cron_that_cannot_fire(cron, says):
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url, "--cron", cron,
                                  "--no-budget-check"])
        assert kfp.requests == []
    assert result.exit_code == 2 and says in result.output


def test_schedule_accepts_the_documented_crons():
    from dpsynth_kfp.cli import _check_cron

    for cron in ("0 0 3 * * *", "0 30 2 * * 1", "*/15 * * * * *", "0 0,30 9-17 * * 1-5",
                 "0 0 0 1 1 ?"):
        _check_cron(cron)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_schedule_refuses_a_concurrency_below_one(value):
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url, "--cron",
                                  "0 0 3 * * *", "--max-concurrency", value,
                                  "--no-budget-check"])
        assert kfp.requests == []
    assert result.exit_code == 2 and "max-concurrency" in result.output


def test_schedule_refuses_a_ledger_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "typo" / "ledger.sqlite"
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url, "--cron",
                                  "0 0 3 * * *", "--ledger-uri", f"sqlite:///{missing}"])
        assert kfp.requests == []
    assert result.exit_code == 2 and "no privacy budget ledger at" in result.output
    assert not missing.exists() and not missing.parent.exists()


def test_compile_bounds_the_fan_out_and_gives_one_line_errors(tmp_path):
    out = tmp_path / "p.yaml"
    wide = cli.invoke(app, ["pipeline", "compile", "-o", str(out), "--encode-parts", "100000"])
    assert wide.exit_code == 2 and "encode-parts" in wide.output and not out.exists()
    bad = tmp_path / "bad" / "component.yaml"
    bad.parent.mkdir()
    bad.write_text("this: [is not a component\n")
    garbage = cli.invoke(app, ["pipeline", "compile", "-o", str(out), "--component",
                               f"synthesize={bad}"])
    assert garbage.exit_code == 2 and "cannot compile the pipeline" in garbage.output
    assert "Traceback" not in garbage.output and not out.exists()
    blocker = tmp_path / "a-file"  # a folder that is a file: unwritable even for root
    blocker.write_text("x")
    unwritable = cli.invoke(app, ["pipeline", "compile", "-o", str(blocker / "p.yaml")])
    assert unwritable.exit_code == 2 and "cannot write" in unwritable.output
    assert "Traceback" not in unwritable.output
