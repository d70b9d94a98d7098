"""The command line: ``dpsynth plan`` shows a plan without data and refuses bad parameters."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dpsynth.cli import app

runner = CliRunner()


def test_plan_prints_a_calibrated_plan():
    result = runner.invoke(app, ["plan", "--epsilon", "2", "--delta", "1e-6", "--dim", "48",
                                 "--subspace-dim", "8"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["private"] is True and plan["delta"] == 1e-6
    assert abs(plan["epsilon"] - 2.0) / 2.0 < 0.01
    names = [r["name"] for r in plan["releases"]]
    assert names == ["subspace_second_moment", "class_counts", "class_sums", "second_moments"]


def test_plan_refuses_invalid_epsilon_with_a_clear_message():
    result = runner.invoke(app, ["plan", "--epsilon", "0"])
    assert result.exit_code == 2
    assert "epsilon must be > 0" in result.stderr
