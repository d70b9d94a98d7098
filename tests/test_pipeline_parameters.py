"""The pipeline's parameter table: the overrides the plan task applies, and the arguments
that reproduce a configuration."""

from __future__ import annotations

import inspect

import pytest

from dpsynth.config import load_config, load_config_text
from dpsynth_kfp.components import plan
from dpsynth_kfp.parameters import (
    PARAMETERS,
    PLAN_PARAMETERS,
    PRODUCTION_IMAGE_SIZE,
    PROMOTE_PARAMETERS,
    arguments,
    overrides,
)
from dpsynth_kfp.promote_task import promote


def _defaults(**given):
    values = {p.input_name: p.default for p in PARAMETERS}
    values.update(given)
    return values


def test_the_overrides_are_those_the_parameters_pod_joined():
    """Pinned: what the former `parameters` task returned for the same values (in another
    order: no two set the same key; the extra overrides still come last)."""
    # The pipeline's default encodes at the production input size (GPU encode).
    assert sorted(overrides(_defaults())) == sorted([
        "data.source=fashion-mnist", "encoder.name=efficientnet-lite0", "privacy.epsilon=1.0",
        "privacy.delta=1e-05", "model.components_per_class=1", "synthesize.n=60000",
        "decode.enabled=false", f"encoder.options.image_size={PRODUCTION_IMAGE_SIZE}"])
    given = overrides(_defaults(
        dataset="image-folder", train_dir="/data/train", test_dir="/data/test",
        image_size=64, decode=True, mlflow_uri="http://mlflow:5000", dataset_id="shop",
        encoder_image_size=0,
        noise_seed=0, overrides=["evaluate.steps=30", "data.image_size=32"]))
    assert given[-2:] == ["evaluate.steps=30", "data.image_size=32"]
    assert sorted(given[:-2]) == sorted([
        "data.source=image-folder", "encoder.name=efficientnet-lite0", "privacy.epsilon=1.0",
        "privacy.delta=1e-05", "model.components_per_class=1", "synthesize.n=60000",
        "decode.enabled=true", "data.train_dir=/data/train", "data.test_dir=/data/test",
        "data.image_size=64", "tracking.uri=http://mlflow:5000", "data.dataset_id=shop",
        "privacy.noise_seed=0"])


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
    values = {p.input_name: args.get(p.name, p.default) for p in PARAMETERS}
    again = load_config_text(args["config_yaml"], overrides(values))
    assert again.model_dump(exclude={"decode"}) == config.model_dump(exclude={"decode"})
    # decode.enabled: None (when there is a decoder) becomes the decision, as in `dpsynth run`
    assert again.decode.enabled is (config.decode.enabled
                                    if config.decode.enabled is not None else
                                    config.encoder.name == "pixels")


def test_the_plan_component_takes_the_table():
    signature = inspect.signature(plan.python_func)
    taken = {name: (p.annotation, p.default) for name, p in signature.parameters.items()
             if name not in ("config", "privacy_plan", "ledger", "kfp_run_id")}
    assert taken == {p.input_name: (p.type, p.default) for p in PLAN_PARAMETERS}
    for p in PLAN_PARAMETERS:
        assert plan.component_spec.inputs[p.input_name].description == p.description
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
        assert signature.parameters[p.input_name].default == p.default, p.name
        assert signature.parameters[p.input_name].annotation is p.type, p.name
