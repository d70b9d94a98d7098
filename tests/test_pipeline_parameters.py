"""The pipeline's parameter table: the typed settings the plan task applies, the schema
they are described by, and the arguments that reproduce a configuration."""

from __future__ import annotations

import inspect
import math

import pytest

from dpsynth.config import field_facts, load_config
from dpsynth_kfp.components import plan
from dpsynth_kfp.parameters import (
    PARAMETERS,
    PLAN_PARAMETERS,
    PROMOTE_PARAMETERS,
    arguments,
    resolve,
    settings,
)
from dpsynth_kfp.promote_task import promote


def _defaults(**given):
    values = {p.name: p.default for p in PARAMETERS}
    values.update(given)
    return values


def test_the_settings_are_typed_values_not_text():
    """The parameters reach the configuration with their types: no key=value text that
    is parsed back as YAML (where 'inf', 'yes' or '1e-5' would be read by YAML's rules)."""
    assert settings(_defaults()) == {
        "data.source": "fashion-mnist", "encoder.name": "efficientnet-lite0",
        "privacy.epsilon": 1.0, "privacy.delta": 1e-05, "model.components_per_class": 1,
        "synthesize.n": 60000, "decode.enabled": False}
    given = settings(_defaults(
        dataset="image-folder", train_dir="/data/train", test_dir="/data/test",
        data_image_size=64, decode=True, mlflow_uri="http://mlflow:5000", dataset_id="yes",
        encoder_image_size=0, epsilon=math.inf, noise_seed=0,
        extra_overrides=["evaluate.steps=30"]))
    assert given["data.dataset_id"] == "yes"  # text stays text (YAML would read True)
    assert given["privacy.epsilon"] == math.inf and given["privacy.noise_seed"] == 0
    assert "encoder.options.image_size" not in given  # 0: the config's own
    assert "evaluate.steps" not in given  # the extra overrides are text, applied last
    config = resolve(_defaults(dataset_id="yes", extra_overrides=["evaluate.steps=30"]))
    assert config.data.dataset_id == "yes" and config.evaluate.steps == 30
    # The production input size is configs/production.yaml's (config_yaml's default), not
    # a setting: a setting would reach every encoder.
    assert resolve(_defaults()).encoder.options == {"image_size": 160}


def test_the_run_form_is_described_by_the_configuration_schema():
    """A row with a config key takes its type, default and description from RunConfig:
    epsilon's default and meaning are written once, in dpsynth.config."""
    for p in PARAMETERS:
        if p.key is None or p.key == "encoder.options.image_size":
            continue
        annotation, default, description = field_facts(p.key)
        assert description and description.replace("``", "") in p.description, p.name
        assert p.key in p.description
        if default is not None and not isinstance(default, bool):
            assert p.default == default and type(p.default) is p.type, p.name
    epsilon = next(p for p in PARAMETERS if p.name == "epsilon")
    assert (epsilon.type, epsilon.default) == (float, field_facts("privacy.epsilon")[1])


@pytest.mark.parametrize("config_file, extra", [
    ("configs/digits-quick.yaml", ["privacy.noise_seed=3", "tracking.uri=sqlite:///x.db"]),
    ("configs/digits-quick.yaml", ["decode.enabled=false", "data.dataset_id=d"]),
    (None, ["data.source=image-folder", "data.train_dir=/t", "data.test_dir=/s",
            "data.image_size=32", "privacy.epsilon=inf"]),
    # An encoder option the config leaves out stays out (the encoder's own default), one
    # it sets travels with it.
    (None, ["encoder.options={}"]),
    (None, ["encoder.options={image_size: 96}"]),
])
def test_the_arguments_reproduce_the_configuration(config_file, extra):
    config = load_config(config_file, extra)
    args = arguments(config)
    values = {p.name: args.get(p.name, p.default) for p in PARAMETERS}
    again = resolve(values)
    assert again.model_dump(exclude={"decode"}) == config.model_dump(exclude={"decode"})
    # decode.enabled: None (when there is a decoder) becomes the decision, as in `dpsynth run`
    assert again.decode.enabled is (config.decode.enabled
                                    if config.decode.enabled is not None else
                                    config.encoder.name == "pixels")


def test_the_plan_component_is_a_plain_typed_function_taking_the_table():
    """No generated source: plan's inputs are a written signature, the table's rows with
    their types, in the table's order."""
    from dpsynth_kfp import plan_task

    assert plan.python_func is plan_task.plan
    signature = inspect.signature(plan.python_func)
    taken = [(name, p.annotation) for name, p in signature.parameters.items()
             if name not in ("config", "privacy_plan", "ledger", "kfp_run_id",
                             "declared_releases")]
    assert taken == [(p.name, p.type) for p in PLAN_PARAMETERS]
    # Every other parameter goes to the promote task, or says how pods are scheduled
    # (the data claim: a mount, no task input).
    others = [p for p in PARAMETERS if p not in PLAN_PARAMETERS + PROMOTE_PARAMETERS]
    assert [(p.name, p.task, p.key) for p in others] == [("data_pvc", "cluster", None)]


def test_the_promote_gates_are_the_promote_components_defaults():
    """The gate parameters (all but the switch) are promote's inputs, with its defaults
    (those of dpsynth.promote.Gates); none sets a config key."""
    signature = inspect.signature(promote.python_func)
    for p in PROMOTE_PARAMETERS:
        assert p.key is None
        if p.name == "promote":
            assert p.default is False
            continue
        assert signature.parameters[p.name].default == p.default, p.name
        assert signature.parameters[p.name].annotation is p.type, p.name


def test_choosing_another_encoder_in_the_run_form_drops_the_configs_options():
    """The UI trap: the pipeline pushed image_size=160 into every encoder, so open_clip
    from the run form failed unless the user typed 0. Now the size is an option of the
    production config's EfficientNet, dropped when the form picks another encoder; an
    option given to an encoder that lacks it is one clear error."""
    config = resolve(_defaults(encoder="open_clip"))
    assert config.encoder.name == "open_clip" and config.encoder.options == {}
    with pytest.raises(ValueError, match="image_size: not an option of this encoder"):
        resolve(_defaults(encoder="open_clip", encoder_image_size=224))
    same = resolve(_defaults(encoder_image_size=96))
    assert same.encoder.options == {"image_size": 96}


@pytest.mark.slow
def test_open_clip_from_the_run_form_passes_the_plan_steps_checks(tmp_path):
    """Every field at its default but encoder=open_clip: the plan task builds the encoder
    (random ViT-B-32 weights: no hub here), checks the data and charges the plan, made at
    open_clip's dimension."""
    import json
    from types import SimpleNamespace

    from dpsynth_kfp.plan_task import run

    outputs = {name: SimpleNamespace(path=str(tmp_path / name))
               for name in ("config", "privacy_plan", "ledger")}
    values = _defaults(encoder="open_clip", mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}")
    run_id = run(**outputs, **{p.name: values[p.name] for p in PLAN_PARAMETERS})
    assert run_id
    plan_file = json.loads((tmp_path / "privacy_plan").read_text())
    assert plan_file["metadata"]["embedding_dim"] == 512  # ViT-B-32's, not EfficientNet's
    resolved = load_config(tmp_path / "config")
    assert resolved.encoder.name == "open_clip" and resolved.encoder.options == {}
