"""The pipeline's run parameters: one table, mapping each to the config key it sets.

A row that sets a config key takes its type, default and description from the run
configuration's schema (:func:`dpsynth.config.field_facts`): the run form says what
:class:`dpsynth.config.RunConfig` says, and the default is written once, there. A row only
adds what the pipeline needs beyond that: the value that means "the config's own" (an
empty ``train_dir``) and a note for the form.

The table builds the pipeline's signature and the descriptions in the Kubeflow run form
(:func:`dpsynth_kfp.pipeline.build_pipeline`); the plan task (:func:`dpsynth_kfp.plan_task.
plan`, a plain typed function whose inputs are the rows whose ``task`` is plan) turns its
arguments into typed settings (:func:`settings`) over ``config_yaml`` (:func:`resolve`);
:func:`arguments` gives the values that reproduce a configuration for a local run. A
parameter is added by adding a row here and an argument to the plan task.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpsynth.config import RunConfig, field_facts, load_config_text
from dpsynth.promote import Gates
from dpsynth.step_graph import config_value

#: The pipeline's production configuration (GPU encode at 160 px, ...): the default of
#: ``config_yaml``, so the settings live in one config file, not in this table. Absent in an
#: installed package away from the repository: then the defaults of RunConfig.
PRODUCTION_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "production.yaml"


def _production_yaml() -> str:
    """configs/production.yaml as one line of JSON (which is YAML): kfp writes every default
    into a comment header of the compiled files, and a multi-line default would break
    them."""
    import json

    import yaml

    if not PRODUCTION_CONFIG.is_file():
        return ""
    return json.dumps(yaml.safe_load(PRODUCTION_CONFIG.read_text()), sort_keys=False)


def _always(_value: Any) -> bool:
    return True


def _non_negative(value: Any) -> bool:
    return value >= 0


#: A parameter's default when it is the config key's own default (the schema's).
FROM_CONFIG: Any = object()


def form_type(annotation: Any) -> type:
    """The run form's type for a config field's annotation: KFP parameters are str, int,
    float, bool or list (an optional field's form value is its type's; a path or a choice
    among names is text)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])
    if args and typing.get_origin(annotation) is not list:
        return form_type(args[0])
    if annotation is Path:
        return str
    if annotation in (str, int, float, bool, list):
        return annotation
    raise TypeError(f"a config field of type {annotation!r} cannot be a run parameter")


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter. With a config ``key``, ``type`` and ``description`` come
    from the schema (:func:`dpsynth.config.field_facts`) and ``default``
    :data:`FROM_CONFIG` is the key's own default."""

    name: str
    #: The config key it sets; ``None`` for the rows with no key. Those, and a key that the
    #: schema does not type (a plugin's option), give ``type`` and ``description``.
    key: str | None = None
    default: Any = FROM_CONFIG
    #: What the form adds to the schema's description (what an unset value means).
    note: str = ""
    type: type = field(default=str)
    description: str = ""
    #: Whether a value is applied; otherwise the config's own value stands (an empty
    #: ``train_dir`` keeps the config's). The default applies every value.
    applies: Callable[[Any], bool] = field(default=_always, repr=False)
    #: The task that takes it: "plan" (the run's configuration), "promote" (the
    #: production refresh after evaluate; no config key, plan does not take it) or
    #: "cluster" (how pods are scheduled or what they mount: no task input, no config key).
    task: str = "plan"
    #: The value that leaves the config's own value standing, which :func:`arguments`
    #: passes when the config has none (default: the parameter's default).
    unset: Any = None

    def __post_init__(self) -> None:
        if self.key is None or self.description:  # a key the schema does not type
            return
        annotation, default, described = field_facts(self.key)
        kind = form_type(annotation)
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "description", " ".join(
            part for part in (described.replace("``", ""), self.note, f"({self.key})")
            if part))
        if self.default is FROM_CONFIG:
            object.__setattr__(self, "default", kind(default))


#: The promote gates' defaults (dpsynth.promote.Gates's, written once there).
_GATES = Gates()

#: In the order of the pipeline's signature. The parameters are applied after
#: ``config_yaml``, so a parameter wins over the same key there; ``extra_overrides`` last.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("config_yaml", default=_production_yaml(), description=(
        "A whole run configuration (YAML, as in configs/; the default is "
        "configs/production.yaml). The parameters below override its keys; empty: "
        "dpsynth's defaults.")),
    Parameter("dataset", "data.source"),
    Parameter("train_dir", "data.train_dir", "", "Form: a path every pod can read; empty "
              "for the config's.", applies=bool),
    Parameter("test_dir", "data.test_dir", "", "Form: empty for the config's.", applies=bool),
    Parameter("data_image_size", "data.image_size", 0, "Form: 0 for the config's.", applies=bool),
    Parameter("data_pvc", default="dpsynth-data", task="cluster", description=(
        "The PersistentVolumeClaim with the private data, mounted at /data on plan "
        "and encode (image-folder: train_dir=/data/train, test_dir=/data/test). The "
        "claim must exist in the run's namespace (manifests/ creates dpsynth-data).")),
    Parameter("encoder", "encoder.name"),
    # A plugin's option, not a RunConfig field: its own row says what it is.
    Parameter("encoder_image_size", "encoder.options.image_size", 0, type=int,
              applies=bool, unset=0,
              description="efficientnet-lite0: the encoder's input size in px "
              "(encoder.options.image_size); 0: the config's own (configs/production.yaml: "
              "160). Other encoders have no such option."),
    Parameter("encode_allow_cpu", "encoder.allow_cpu", False,
              "Form: unchecked leaves the config's own value.", applies=bool),
    Parameter("epsilon", "privacy.epsilon"),
    Parameter("delta", "privacy.delta"),
    Parameter("components_per_class", "model.components_per_class"),
    Parameter("n_samples", "synthesize.n"),
    Parameter("decode", "decode.enabled", False,
              "Form: the box sets it; unchecked is false."),
    Parameter("decode_allow_cpu", "decode.allow_cpu", False,
              "Form: unchecked leaves the config's own value.", applies=bool),
    Parameter("mlflow_uri", "tracking.uri", "", "Form: empty for unset (in a pod, "
              "MLFLOW_TRACKING_URI from the dpsynth-mlflow secret). One is required: every "
              "run shares the ledger.",
              applies=bool),
    Parameter("dataset_id", "data.dataset_id", "", "Form: empty for unset.",
              applies=bool),
    Parameter("noise_seed", "privacy.noise_seed", -1, "Form: -1 for unset (fresh noise).",
              applies=_non_negative),
    Parameter("extra_overrides", default=[], type=list,
              description="More key=value config overrides (YAML values), applied last."),
    Parameter("promote", default=False, type=bool, task="promote", description=(
        "After evaluate, register the synthetic set and the mixture in the MLflow "
        "model registry and move the alias production to them if every gate below "
        "passes (a failed gate fails the run; production stays). Off: no promote "
        "task.")),
    Parameter("max_epsilon", default=_GATES.max_epsilon, type=float, task="promote",
              description="promote gate: the run's epsilon may not exceed this."),
    Parameter("max_delta", default=_GATES.max_delta, type=float, task="promote",
              description="promote gate: the run's delta may not exceed this."),
    Parameter("min_accuracy", default=_GATES.min_accuracy, type=float, task="promote",
              description="promote gate: the synthetic-trained accuracy must reach this."),
    Parameter("accuracy_tolerance", default=_GATES.accuracy_tolerance, type=float, task="promote",
              description="promote gate: accuracy may be at most this much below "
              "production's."),
    Parameter("frechet_tolerance", default=_GATES.frechet_tolerance, type=float, task="promote",
              description="promote gate: the Fréchet distance may be at most this much "
              "above production's."),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
#: The parameters the plan task takes (its inputs); the others go to the promote task.
PLAN_PARAMETERS: tuple[Parameter, ...] = tuple(p for p in PARAMETERS if p.task == "plan")
#: The promote task's parameters (the gates and the switch).
PROMOTE_PARAMETERS: tuple[Parameter, ...] = tuple(p for p in PARAMETERS
                                                  if p.task == "promote")


BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}
#: The parameter naming the data PVC (a "cluster" parameter).
DATA_PVC = BY_NAME["data_pvc"]


def for_key(key: str) -> Parameter:
    """The parameter that sets config key ``key``."""
    found = [p for p in PARAMETERS if p.key == key]
    if not found:
        raise KeyError(f"no pipeline parameter sets {key!r}")
    return found[0]


def settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The typed config settings (dotted key -> value) for the parameter values ``values``
    (by parameter name, as the plan task takes them): each applied parameter's value as
    given, no text round trip. Pure data: the plan task applies them (:func:`resolve`)."""
    return {p.key: values[p.name] for p in PLAN_PARAMETERS
            if p.key is not None and p.applies(values[p.name])}


def resolve(values: Mapping[str, Any], source: str = "config_yaml") -> RunConfig:
    """The configuration that the plan task resolves from the parameter values ``values``
    (by parameter name): ``config_yaml``, the parameters over it, the extra overrides
    last; validated. Raises :class:`dpsynth.config.ConfigError`."""
    extra = [str(o) for o in values.get("extra_overrides") or []]
    return load_config_text(str(values["config_yaml"] or ""), extra,
                            settings=settings(values), source=source)


def arguments(config: RunConfig) -> dict[str, Any]:
    """Parameter values that reproduce ``config`` exactly: the whole config travels as
    ``config_yaml`` and each named parameter carries the same value (they would win)."""
    import yaml

    from dpsynth.decoders import decoder_name_for

    out: dict[str, Any] = {"config_yaml": yaml.safe_dump(config.to_yaml_dict(),
                                                         sort_keys=False)}
    for p in PARAMETERS:
        if p.key is None:
            continue
        value = config_value(config, p.key)
        if value is None:
            out[p.name] = p.default if p.unset is None else p.unset
        else:
            out[p.name] = p.type(value)
    decode = config.decode
    if decode.enabled is None:  # "when there is a decoder", as `dpsynth run` decides
        out[for_key("decode.enabled").name] = bool(decode.decoder) or decoder_name_for(
            config.encoder.name) is not None
    return out
