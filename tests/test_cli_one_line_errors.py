"""Bad arguments are one line, before any work (issue 27, item 9): resample's arguments
before the registry is asked anything or --out is made; the plan's dimension."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dpsynth.cli import app

cli = CliRunner()
NOWHERE = "http://127.0.0.1:9"  # nothing listens: a request would fail, not hang


@pytest.mark.parametrize("args, says", [
    (["--n", "10", "--class-balance", "bogus"], "class balance 'bogus' is not one of"),
    (["--n", "10", "--random-state", "-1"], "random_state must be an integer >= 0"),
    (["--n", "2000000000"], "n must be an integer in [1, 1,000,000,000]"),
    (["--n", "0"], "--n"),
])
def test_resample_refuses_bad_arguments_before_any_request(tmp_path, args, says):
    out = tmp_path / "out"
    result = cli.invoke(app, ["resample", "--dataset-id", "x", "--out", str(out),
                              "--tracking-uri", NOWHERE, *args])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert "127.0.0.1:9" not in result.output  # refused before the store was asked
    assert not out.exists()


@pytest.mark.parametrize("dim", ["0", "-5"])
def test_plan_refuses_a_dimension_below_one(dim):
    result = cli.invoke(app, ["plan", "--dim", dim])
    assert result.exit_code == 2 and "--dim" in result.output
    assert '"releases"' not in result.output  # no plan printed
