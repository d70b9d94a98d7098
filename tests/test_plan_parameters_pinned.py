"""Pinned: the configuration the plan task resolves from run-form values, recorded before
the plan component became a plain typed function (tests/data/plan_parameters_pinned.json).
A redesign of how the values travel must resolve exactly the same configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpsynth_kfp.parameters import PARAMETERS, resolve

PINNED = json.loads((Path(__file__).parent / "data" / "plan_parameters_pinned.json")
                    .read_text())
ROOT = Path(__file__).resolve().parents[1]


def _values(given: dict) -> dict:
    values = {p.name: p.default for p in PARAMETERS}
    given = dict(given)
    if "config_yaml_file" in given:
        given["config_yaml"] = (ROOT / given.pop("config_yaml_file")).read_text()
    values.update(given)
    return values


@pytest.mark.parametrize("case", sorted(PINNED))
def test_the_plan_task_resolves_the_pinned_configuration(case):
    config = json.loads(resolve(_values(PINNED[case]["given"])).model_dump_json())
    config["encoder"].pop("cache_dir")  # the machine's, not the run form's
    assert config == PINNED[case]["config"]
