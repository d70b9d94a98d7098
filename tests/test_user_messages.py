"""Messages a new user stumbled over (issue 25, item 4).

Each test here failed before its fix: the eps = inf threshold line, class names in warnings
and metrics, the progress unit for texts, the two epsilons of the summary, the README's text
example and a refused run's leftovers.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from dpsynth import DPSynthesizer
from dpsynth.cli import app
from dpsynth.privacy.plan import release_threshold


# ------------------------------------------------- 1. eps = inf has no noise threshold
@pytest.mark.parametrize("k", [1, 3])
def test_eps_inf_says_there_is_no_noise_threshold(k):
    plan = DPSynthesizer(math.inf, 1e-5, components_per_class=k, subspace_dim=8).make_plan(32)
    line = release_threshold(plan).describe()
    assert line.startswith("no noise threshold: eps = inf, every class with 2+ records"), line
    assert "sigma" not in line and "probability" not in line and "%" not in line


def test_dpsynth_plan_at_eps_inf_says_there_is_no_noise_threshold():
    result = CliRunner().invoke(app, ["plan", "--epsilon", "inf", "--dim", "48",
                                      "--subspace-dim", "8"])
    assert result.exit_code == 0, result.output
    note = json.loads(result.stdout)["smallest_releasable_class"]["note"]
    assert note.startswith("no noise threshold: eps = inf") and note in result.stderr
    assert "97.7" not in result.stderr


def test_finite_eps_still_states_the_smallest_releasable_class():
    plan = DPSynthesizer(1.0, 1e-5, subspace_dim=8).make_plan(32)
    assert release_threshold(plan).describe().startswith("smallest releasable class: about ")
