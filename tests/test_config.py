"""Run configuration: YAML files, --set overrides and validation errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from dpsynth.config import ConfigError, RunConfig, load_config

CONFIGS = sorted(Path("configs").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"fashion-mnist.yaml", "fashion-mnist-pixels.yaml", "digits-quick.yaml",
            "clip-unclip.example.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    assert isinstance(load_config(path), RunConfig)


def test_default_config_is_the_documented_main_job():
    assert load_config("configs/fashion-mnist.yaml") == load_config(None)
    cfg = load_config(None)
    assert (cfg.data.source, cfg.encoder.name, cfg.privacy.epsilon, cfg.privacy.delta) == \
        ("fashion-mnist", "efficientnet-lite0", 1.0, 1e-5)


def test_overrides_are_typed_yaml_and_nested():
    cfg = load_config("configs/digits-quick.yaml",
                      ["privacy.epsilon=2", "model.subspace_dim=null",
                       "encoder.options={image_shape: [8, 8]}", "privacy.budget.epsilon=inf"])
    assert cfg.privacy.epsilon == 2.0
    assert cfg.model.subspace_dim is None
    assert cfg.encoder.options == {"image_shape": [8, 8]}
    assert math.isinf(cfg.privacy.budget.epsilon)


@pytest.mark.parametrize("override, message", [
    ("privacy.epsilon=0", "privacy: epsilon must be > 0"),
    ("privacy.epsilon=-1", "epsilon must be > 0"),
    ("privacy.epsilon=.nan", "epsilon is NaN"),
    ("privacy.delta=0.5", "delta must be < 0.001"),
    ("privacy.budget.delta=0", "delta must be > 0"),
    ("privacy.epsilonn=2", "privacy.epsilonn: Extra inputs are not permitted"),
    ("model.covariance=full", "model.covariance: Input should be"),
    ("model.components_per_class=0", "model.components_per_class"),
    ("encoder.batch_size=zero", "encoder.batch_size"),
    ("data.source=image-folder", "needs train_dir, test_dir, image_size"),
    ("data.source=webdataset", "needs train_urls, test_urls, image_size, class_names"),
    ("privacy=3", "privacy"),
])
def test_invalid_values_are_refused_with_the_key(override, message):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_privacy_parameters_are_never_clamped():
    with pytest.raises(ConfigError):
        load_config(None, ["privacy.delta=0.001"])  # exactly the limit: refused, not 9.9e-4


@pytest.mark.parametrize("text, message", [
    ("- a list", "must hold a mapping"),
    ("privacy: {epsilon: [", "not valid YAML"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["privacy.epsilon"])
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(None, ["name=x", "name.sub=1"])


def test_yaml_dict_round_trips_infinity(tmp_path):
    cfg = load_config(None, ["privacy.epsilon=inf"])
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, message", [
    # YAML true/false are booleans; they must not pass as epsilon = 1 or delta = 0.
    ("privacy.epsilon=true", "privacy.epsilon: must be a number, not the boolean true"),
    ("privacy.delta=false", "privacy.delta: must be a number, not the boolean false"),
    ("privacy.budget.epsilon=true", "privacy.budget.epsilon: must be a number, not the boolean"),
    # A run's epsilon is calibrated: bounded range, with the non-private mode named.
    ("privacy.epsilon=1000", "largest supported finite epsilon 20"),
    ("privacy.epsilon=1000", "use epsilon=inf ('inf' in a config)"),
    ("privacy.epsilon=0.000001", "smallest supported epsilon 0.01"),
    ("privacy.delta=1.0e-300", "smallest supported delta 1e-12"),
    ("privacy.budget.delta=1.0e-13", "smallest supported delta 1e-12"),
])
def test_privacy_parameters_outside_the_supported_range_are_refused(override, message):
    with pytest.raises(ConfigError, match="invalid configuration") as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_budget_epsilon_is_not_limited_to_the_calibration_range():
    cfg = load_config(None, ["privacy.epsilon=20", "privacy.budget.epsilon=1000"])
    assert (cfg.privacy.epsilon, cfg.privacy.budget.epsilon) == (20.0, 1000.0)
