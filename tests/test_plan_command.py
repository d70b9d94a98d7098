"""`dpsynth plan --config` plans what `dpsynth run --config` would run (issue 24)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dpsynth import steps
from dpsynth.cli import app
from dpsynth.config import load_config


def _plan(*args: str) -> tuple[int, dict | None, str]:
    result = CliRunner().invoke(app, ["plan", *args])
    out = result.stdout
    return result.exit_code, (json.loads(out[out.index("{"):]) if "{" in out else None), \
        result.output


def test_plan_with_a_config_is_the_runs_plan():
    code, printed, _ = _plan("--config", "configs/digits-quick.yaml", "--set",
                             "privacy.epsilon=2")
    assert code == 0
    config = load_config("configs/digits-quick.yaml", ["privacy.epsilon=2"])
    expected = steps.make_plan(config).to_dict()
    assert printed["metadata"] == expected["metadata"]
    assert printed["metadata"]["embedding_dim"] == 64  # the run's encoder, not 1280
    assert [(r["name"], r["sigma"]) for r in printed["releases"]] == \
        [(r["name"], r["sigma"]) for r in expected["releases"]]
    # Without a config: the quick options, as before.
    code, quick, _ = _plan("--epsilon", "2", "--dim", "64")
    assert code == 0 and quick["metadata"]["embedding_dim"] == 64
    assert quick["metadata"] != printed["metadata"]  # the config's model settings differ


def test_plan_refuses_quick_options_beside_a_config_and_a_bad_config():
    code, _, output = _plan("--config", "configs/digits-quick.yaml", "--epsilon", "3")
    assert code == 2 and "--epsilon with --config/--set" in output
    code, _, output = _plan("--set", "privacy.epsilon=-1")
    assert code == 2 and "invalid configuration" in output and "epsilon must be > 0" in output


def test_plan_prints_the_records_a_class_needs_not_to_be_mostly_noise():
    """From the plan alone: ceil(sigma sqrt(d) / (sqrt(2) R)) records, more at a smaller
    eps; none at eps = inf (no noise)."""
    import math

    bounds = {}
    for eps in ("1", "4"):
        code, printed, output = _plan("--epsilon", eps)
        assert code == 0
        bound = printed["noise_dominated_below"]
        sigma = next(r["sigma"] for r in printed["releases"] if r["name"] == "class_sums")
        dim, radius = printed["metadata"]["embedding_dim"], printed["metadata"]["clip_norm"]
        assert bound["records"] == math.ceil(sigma * math.sqrt(dim) / (math.sqrt(2) * radius))
        assert f"noise-dominated below about {bound['records']} records" in output
        bounds[eps] = bound["records"]
    assert bounds["1"] > bounds["4"] > 2
    code, printed, output = _plan("--epsilon", "inf")
    assert code == 0 and printed["noise_dominated_below"] is None
    assert "noise-dominated" not in output
