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
    # The production input size is configs/production.yaml's (config_yaml's default), not
    # an override: an override would reach every encoder.
    assert sorted(overrides(_defaults())) == sorted([
        "data.source=fashion-mnist", "encoder.name=efficientnet-lite0", "privacy.epsilon=1.0",
        "privacy.delta=1e-05", "model.components_per_class=1", "synthesize.n=60000",
        "decode.enabled=false"])
    production = load_config_text(_defaults()["config_yaml"], overrides(_defaults()))
    assert production.encoder.options == {"image_size": 160}
    given = overrides(_defaults(
        dataset="image-folder", train_dir="/data/train", test_dir="/data/test",
        data_image_size=64, decode=True, mlflow_uri="http://mlflow:5000", dataset_id="shop",
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
             if name not in ("config", "privacy_plan", "ledger", "kfp_run_id",
                             "declared_releases")}
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


def test_choosing_another_encoder_in_the_run_form_drops_the_configs_options():
    """The UI trap: the pipeline pushed image_size=160 into every encoder, so open_clip
    from the run form failed unless the user typed 0. Now the size is an option of the
    production config's EfficientNet, dropped when the form picks another encoder; an
    option given to an encoder that lacks it is one clear error."""
    values = _defaults(encoder="open_clip")
    config = load_config_text(values["config_yaml"], overrides(values))
    assert config.encoder.name == "open_clip" and config.encoder.options == {}
    with pytest.raises(ValueError, match="image_size: not an option of this encoder"):
        load_config_text(values["config_yaml"],
                         overrides(_defaults(encoder="open_clip", encoder_image_size=224)))
    same = load_config_text(values["config_yaml"], overrides(_defaults(encoder_image_size=96)))
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
    run_id = run(**outputs, **{p.input_name: values[p.input_name] for p in PLAN_PARAMETERS})
    assert run_id
    plan_file = json.loads((tmp_path / "privacy_plan").read_text())
    assert plan_file["metadata"]["embedding_dim"] == 512  # ViT-B-32's, not EfficientNet's
    resolved = load_config(tmp_path / "config")
    assert resolved.encoder.name == "open_clip" and resolved.encoder.options == {}
