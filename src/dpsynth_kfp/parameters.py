"""The pipeline's run parameters: one table, mapping each to the config key it sets.

The table builds the pipeline's signature and the descriptions in the Kubeflow run form
(:func:`dpsynth_kfp.pipeline.build_pipeline`), the plan component's inputs (the rows
whose ``task`` is plan; the promote switch and gates go to the promote task)
(:mod:`dpsynth_kfp.components`), the ``key=value`` overrides that the plan task applies
(:func:`overrides`) and the arguments that reproduce a configuration for a local run
(:func:`arguments`). A parameter is added by adding a row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpsynth.config import RunConfig
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


#: A parameter's default when it is the config key's own default (see :func:`_from_config`).
FROM_CONFIG: Any = object()


@dataclass(frozen=True)
class Parameter:
    """One pipeline parameter. ``default`` :data:`FROM_CONFIG`: the default of its config
    key in :class:`dpsynth.config.RunConfig`, so the value is written once."""

    name: str
    type: type
    default: Any
    description: str
    #: The config key it overrides; ``None`` for ``config_yaml`` and ``extra_overrides``.
    key: str | None = None
    #: Whether a value is applied; otherwise the config's own value stands (an empty
    #: ``train_dir`` keeps the config's). The default applies every value.
    applies: Callable[[Any], bool] = field(default=_always, repr=False)
    #: The plan component's name for the input (default: the parameter's name).
    plan_input: str | None = None
    #: The task that takes it: "plan" (the run's configuration), "promote" (the
    #: production refresh after evaluate; no config key, plan does not take it) or
    #: "cluster" (how pods are scheduled or what they mount: no task input, no config key).
    task: str = "plan"
    #: The value that leaves the config's own value standing, which :func:`arguments`
    #: passes when the config has none (default: the parameter's default).
    unset: Any = None

    @property
    def input_name(self) -> str:
        return self.plan_input or self.name

    def __post_init__(self) -> None:
        if self.default is FROM_CONFIG:
            object.__setattr__(self, "default", self.type(config_value(RunConfig(), self.key)))


#: In the order of the pipeline's signature. The parameters are applied after
#: ``config_yaml``, so a parameter wins over the same key there; ``extra_overrides`` last.
PARAMETERS: tuple[Parameter, ...] = (
    Parameter("config_yaml", str, _production_yaml(),
              "A whole run configuration (YAML, as in configs/; the default is "
              "configs/production.yaml). The parameters below override its keys; empty: "
              "dpsynth's defaults."),
    Parameter("dataset", str, FROM_CONFIG,
              "Data source: fashion-mnist, digits, image-folder or webdataset "
              "(data.source).", key="data.source"),
    Parameter("train_dir", str, "",
              "image-folder: the private training images, a path every pod can read "
              "(data.train_dir); empty: the config's.", key="data.train_dir", applies=bool),
    Parameter("test_dir", str, "",
              "image-folder: the public test images (data.test_dir); empty: the config's.",
              key="data.test_dir", applies=bool),
    Parameter("data_image_size", int, 0,
              "image-folder: images are resized to this square size (data.image_size); "
              "0: the config's.", key="data.image_size", applies=bool),
    Parameter("data_pvc", str, "dpsynth-data",
              "The PersistentVolumeClaim with the private data, mounted at /data on plan "
              "and encode (image-folder: train_dir=/data/train, test_dir=/data/test). The "
              "claim must exist in the run's namespace (manifests/ creates dpsynth-data).",
              task="cluster"),
    Parameter("encoder", str, FROM_CONFIG,
              "Encoder registry name (encoder.name).", key="encoder.name"),
    Parameter("encoder_image_size", int, 0,
              "efficientnet-lite0: the encoder's input size in px "
              "(encoder.options.image_size); 0: the config's own (configs/production.yaml: "
              "160). Other encoders have no such option.",
              key="encoder.options.image_size", applies=bool, unset=0),
    Parameter("encode_allow_cpu", bool, False,
              "Let encode run on CPU, with a warning, when its GPU node has no usable GPU "
              "(encoder.allow_cpu). Off: encode stops before reading any image, naming "
              "torch's CUDA version and the node driver's, since a CPU encode can take "
              "hours; false also leaves the config's own value.",
              key="encoder.allow_cpu", applies=bool),
    Parameter("epsilon", float, FROM_CONFIG,
              "The run's DP epsilon, charged to the dataset's budget (privacy.epsilon).",
              key="privacy.epsilon"),
    Parameter("delta", float, FROM_CONFIG, "The run's DP delta (privacy.delta).",
              key="privacy.delta"),
    Parameter("components_per_class", int, FROM_CONFIG,
              "Gaussian mixture components per class (model.components_per_class).",
              key="model.components_per_class"),
    Parameter("n_samples", int, FROM_CONFIG, "Synthetic records to sample (synthesize.n).",
              key="synthesize.n"),
    Parameter("decode", bool, False,
              "Run the decode step; needs an encoder with a decoder (decode.enabled).",
              key="decode.enabled"),
    Parameter("decode_allow_cpu", bool, False,
              "Let decode run on CPU, with a warning, when its GPU node has no usable GPU "
              "(decode.allow_cpu). Off: decode stops before it starts, as encode does; false "
              "also leaves the config's own value.",
              key="decode.allow_cpu", applies=bool),
    Parameter("mlflow_uri", str, "",
              "MLflow tracking store (tracking.uri); empty: MLFLOW_TRACKING_URI from the "
              "dpsynth-mlflow secret. One is required: every run shares the ledger.",
              key="tracking.uri", applies=bool),
    Parameter("dataset_id", str, "",
              "The privacy budget ledger's key for the dataset (data.dataset_id); empty: "
              "derived from the data source.", key="data.dataset_id", applies=bool),
    Parameter("noise_seed", int, -1,
              "Tests only: a value >= 0 seeds the noise and marks every output NOT "
              "private (privacy.noise_seed); -1: fresh noise.",
              key="privacy.noise_seed", applies=_non_negative),
    Parameter("extra_overrides", list, [],
              "More key=value config overrides (YAML values), applied last.",
              plan_input="overrides"),
    Parameter("promote", bool, False,
              "After evaluate, register the synthetic set and the mixture in the MLflow "
              "model registry and move the alias production to them if every gate below "
              "passes (a failed gate fails the run; production stays). Off: no promote "
              "task.", task="promote"),
    Parameter("max_epsilon", float, 10.0,
              "promote gate: the run's epsilon may not exceed this.", task="promote"),
    Parameter("max_delta", float, 1e-5,
              "promote gate: the run's delta may not exceed this.", task="promote"),
    Parameter("min_accuracy", float, 0.1,
              "promote gate: the synthetic-trained accuracy must reach this.",
              task="promote"),
    Parameter("accuracy_tolerance", float, 0.02,
              "promote gate: accuracy may be at most this much below production's.",
              task="promote"),
    Parameter("frechet_tolerance", float, 0.05,
              "promote gate: the Fréchet distance may be at most this much above "
              "production's.", task="promote"),
)

NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
#: The parameters the plan task takes (its inputs); the others go to the promote task.
PLAN_PARAMETERS: tuple[Parameter, ...] = tuple(p for p in PARAMETERS if p.task == "plan")
#: The promote task's parameters, by its input name (the gates' and the switch).
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


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def overrides(values: Mapping[str, Any]) -> list[str]:
    """The ``key=value`` config overrides for the parameter values ``values`` (by plan
    input name), the extra overrides last. Pure data: the plan task applies them."""
    out = [f"{p.key}={_format(values[p.input_name])}" for p in PLAN_PARAMETERS
           if p.key is not None and p.applies(values[p.input_name])]
    return out + [str(o) for o in values.get(BY_NAME["extra_overrides"].input_name) or []]


def resolve(values: Mapping[str, Any], source: str = "config_yaml") -> RunConfig:
    """The configuration that the plan task resolves from the parameter values ``values``
    (by plan input name): ``config_yaml``, the parameters over it, the extra overrides
    last; validated. Raises :class:`dpsynth.config.ConfigError`."""
    from dpsynth.config import load_config_text

    return load_config_text(str(values["config_yaml"] or ""), overrides(values),
                            source=source)


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
