"""Run configuration: pydantic models loaded from YAML, overridable with ``key=value``.

Every field is validated before any data is read; unknown keys are errors (a typo must not
silently fall back to a default, least of all for a privacy parameter). Defaults are the
README's main job: Fashion-MNIST, EfficientNet-Lite0, eps = 1, delta = 1e-5.
"""

from __future__ import annotations

import inspect
import math
import os
import typing
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from sklearn.utils._param_validation import Interval, StrOptions

from dpsynth.data.sources import class_name_problem
from dpsynth.privacy.validation import PrivacyParameterError, validate_epsilon_delta
from dpsynth.synthesizer import DPSynthesizer


class ConfigError(ValueError):
    """An invalid configuration, one line per problem, each naming its key."""


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number and not a boolean (``int``, ``float``, optional)."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return (bool(args) and any(a in (int, float) for a in args)
            and all(a in (int, float, type(None)) for a in args))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True,
                              use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic takes YAML's true as 1: `model.subspace_dim=true` must not mean r = 1,
        # nor `privacy.epsilon=true` epsilon = 1.
        if isinstance(value, bool) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
        return value


def _epsilon(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    return value


def _registered(kind: str, name: str) -> str:
    """``name`` if the ``kind`` registry (encoder, decoder, clusterer) has it; else the
    error lists the available names. The registries are imported only here: this module is
    imported early, and their built-ins import heavy libraries."""
    from dpsynth.registry import name_problem

    problem = name_problem(kind, name)
    if problem:
        raise ValueError(problem)
    return name


class DataConfig(_Section):
    """Where the private training records (images or texts) and the public test records
    come from."""

    source: Literal["fashion-mnist", "digits", "image-folder", "webdataset", "text"] = (
        "fashion-mnist")
    """Data source: fashion-mnist, digits, image-folder, webdataset or text."""
    root: Path | None = None
    """fashion-mnist: folder with the IDX files (default: Debian's
    dataset-fashion-mnist)."""
    train_dir: Path | None = None
    """image-folder: ``train_dir/<class name>/*.png|jpg`` (private) and the same for test.
    text: ``train_dir/<class name>/*.txt`` (one UTF-8 text per file), or the files below."""
    test_dir: Path | None = None
    """The public test records, laid out as ``train_dir``."""
    train_file: Path | None = None
    """text: a JSON Lines (.jsonl) or CSV (.csv, with a header row) file, one record per
    line/row, with a text and a label column (labels are class names)."""
    test_file: Path | None = None
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    train_urls: str | None = None
    """webdataset: tar shards, brace-expanded ("/data/train-{000000..000099}.tar")."""
    test_urls: str | None = None
    class_names: list[str] | None = None
    """The public class list, in label order (image-folder default: train_dir's folders;
    required for webdataset, whose .cls labels index it)."""
    image_size: int | None = Field(default=None, ge=8, le=4096)
    """image-folder: images are resized to image_size x image_size."""
    color: Literal["gray", "rgb"] = "rgb"
    on_bad_image: Literal["fail", "skip"] = "fail"
    """image-folder: an image that cannot be decoded stops the run ("fail", naming the file)
    or is left out and reported ("skip")."""
    workers: int = Field(default=4, ge=1, le=64)
    """image-folder: threads decoding image files in parallel."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first ``limit`` training records (a quick run); selection by
    position."""
    dataset_id: str | None = None
    """The key of the privacy budget ledger (default: derived from the source)."""
    follow_symlinks_outside_root: bool = False
    """image-folder: read symlinks (class folders or files) whose real path lies outside
    train_dir/test_dir. Off by default, so that a link cannot quietly pull in records
    from elsewhere; each real file still counts once and in one class only."""

    @field_validator("class_names", mode="before")
    @classmethod
    def _numbers_are_names(cls, names: Any) -> Any:
        # Digit-named class folders (0/, 1/, ...): YAML reads [0, 1] as integers, which
        # name the folders as written (not 007, which YAML reads as 7: quote such names).
        if not isinstance(names, list):
            return names
        for name in names:
            if isinstance(name, bool) or name is None or isinstance(name, float):
                raise ValueError(f"class name {name!r} is not text: quote it in YAML "
                                 "(YAML reads yes/no/on/off as booleans, ~ as null, 1.0 as "
                                 "a number)")
        return [str(name) if isinstance(name, int) else name for name in names]

    @field_validator("class_names")
    @classmethod
    def _one_class_per_name(cls, names: list[str] | None) -> list[str] | None:
        # A name listed twice reads its records under two labels: each would enter two
        # classes, and the per-class releases would no longer compose in parallel.
        problem = class_name_problem(names or [], folders=False)
        if problem:
            raise ValueError(problem)
        return names

    @model_validator(mode="after")
    def _folder_needs_paths(self) -> DataConfig:
        needs = {"image-folder": ("train_dir", "test_dir", "image_size"),
                 "webdataset": ("train_urls", "test_urls", "image_size", "class_names")}
        if self.source == "text":
            files = self.train_file is not None or self.test_file is not None
            if files and (self.train_dir is not None or self.test_dir is not None):
                raise ValueError("source 'text' reads folders (train_dir, test_dir) or files "
                                 "(train_file, test_file), not both")
            needs["text"] = ("train_file", "test_file") if files else ("train_dir", "test_dir")
        missing = [k for k in needs.get(self.source, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"source {self.source!r} needs {', '.join(missing)}")
        # Image-folder class names are folders under the root: "../x" or "a/b" would read
        # outside it or inside another class. (WebDataset names are only labels, and may
        # hold a '/', like Fashion-MNIST's "T-shirt/top".)
        problem = (self.source == "image-folder" or self.source == "text" and self.train_dir
                   ) and class_name_problem(self.class_names or [], folders=True)
        if problem:
            raise ValueError(f"data.class_names: {problem}")
        return self

    def ledger_id(self) -> str:
        """The dataset id the budget ledger charges (the private training set)."""
        if self.dataset_id:
            return self.dataset_id
        if self.source == "image-folder":
            return f"image-folder:{Path(self.train_dir).resolve()}"
        if self.source == "webdataset":
            return f"webdataset:{self.train_urls}"
        if self.source == "text":
            return f"text:{Path(self.train_dir or self.train_file).resolve()}"
        return {"fashion-mnist": "fashion-mnist/train", "digits": "sklearn-digits"}[self.source]

    @property
    def modality(self) -> str:
        """What the source's records are, "image" or "text": the encoder must take them."""
        return "text" if self.source == "text" else "image"


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPSYNTH_CACHE_DIR")
                or Path.home() / ".cache" / "dpsynth" / "embeddings")


class EncoderConfig(_Section):
    name: str = "efficientnet-lite0"
    """Encoder registry name (built in or a plugin's; ``prefix:spec`` for parametrised
    ones)."""

    @field_validator("name")
    @classmethod
    def _known_encoder(cls, name: str) -> str:
        return _registered("encoder", name)

    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the encoder's factory (e.g. ``image_size`` for EfficientNet)."""
    batch_size: int = Field(default=256, ge=1)
    shard_rows: int = Field(default=8192, ge=1)
    """Rows per EmbeddingSet shard: the unit of resumption after a crash."""
    cache: bool = True
    """Reuse embeddings keyed by (dataset, encoder, preprocessing); ``false`` re-encodes."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    allow_cpu: bool = False
    """On the CUDA image ($DPSYNTH_REQUIRE_CUDA=1) encode refuses to run without a usable
    GPU (a driver older than torch's CUDA would make it encode on CPU for hours);
    ``true`` lets it run on CPU with a warning. Elsewhere it has no effect."""

    @model_validator(mode="after")
    def _options_of_this_encoder(self) -> EncoderConfig:
        # Each encoder's options are typed by its factory: another encoder's option (an
        # image_size given to open_clip) is an error here, not a crash in a pod.
        from dpsynth.registry import options_problem

        if self.options and (problem := options_problem("encoder", self.name, self.options)):
            raise ValueError(problem)
        return self


class _EpsilonDelta(_Section):
    """An (epsilon, delta) pair: ``inf`` accepted for epsilon, refused (never clamped)
    when invalid."""

    epsilon: float
    delta: float

    _parse_eps = field_validator("epsilon", mode="before")(_epsilon)

    @model_validator(mode="after")
    def _valid(self) -> _EpsilonDelta:
        # A run's epsilon is calibrated (bounded range, validation.py); a lifetime budget
        # is only compared with composed costs, so it may exceed MAX_EPSILON.
        validate_epsilon_delta(self.epsilon, self.delta,
                               calibrated=isinstance(self, PrivacyConfig))
        return self


class BudgetConfig(_EpsilonDelta):
    """Lifetime (epsilon, delta) of a dataset across all runs recorded in the ledger.

    ``epsilon: inf`` is the data owner declaring the dataset non-private (public data, a
    test): the ledger records the marking for good and enforces no budget on it after.
    """

    epsilon: float = 10.0
    delta: float = 1e-4


class PrivacyConfig(_EpsilonDelta):
    epsilon: float = 1.0
    """The run's DP epsilon, charged to the dataset's budget (``inf``: non-private)."""
    delta: float = 1e-5
    """The run's DP delta."""
    noise_seed: int | None = None
    """Test only: seeds the DP noise and marks every output NOT private."""
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    ledger_uri: str | None = None
    """Where the budget ledger is: sqlite:////ABS/PATH or postgresql://ROLE@HOST/DB (no
    password here: this config is logged). None: $DPSYNTH_LEDGER_URI, else a per-user
    SQLite file (never under --out, whose reset would reset the budget)."""

    # A model (not field) validator: the error then shows the privacy section, not the
    # URI, so a password put there by mistake is not echoed into logs.
    @model_validator(mode="after")
    def _ledger_uri(self) -> PrivacyConfig:
        from dpsynth.privacy.ledger_store import ledger_uri_problem

        problem = self.ledger_uri and ledger_uri_problem(self.ledger_uri, allow_password=False)
        if problem:
            raise ValueError(f"ledger_uri: {problem}")
        return self


#: DPSynthesizer parameters that the privacy section holds, not the model section.
PRIVACY_PARAMETERS = ("epsilon", "delta", "noise_seed")
#: Where the model section departs from DPSynthesizer's signature (annotation, default,
#: description); every other field is generated from the signature, the docstring and
#: ``_parameter_constraints`` (:func:`_model_fields`).
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    # steps.build_synthesizer resolves None from the encoder.
    "normalize": {"annotation": bool | None, "default": None,
                  "description": "None: normalise exactly when the encoder's embeddings are "
                                 "normalised; true or false: as DPSynthesizer's normalize."},
    # A run's sampling and hash directions are reproducible unless asked otherwise.
    "random_state": {"default": 0},
}


def _parameter_docs(cls: type) -> dict[str, str]:
    """The numpydoc ``Parameters`` section of ``cls``: each name's description, one line."""
    lines = [*inspect.cleandoc(cls.__doc__ or "").splitlines(), ""]
    start = lines.index("Parameters") + 2  # past the underline
    docs: dict[str, str] = {}
    names: list[str] = []
    for line, after in zip(lines[start:], lines[start + 1:], strict=False):
        if after and set(after) == {"-"}:  # the next section's title
            break
        if line and not line[0].isspace():
            names = [n.strip() for n in line.split(" : ")[0].rstrip(":").split(",")]
            docs.update(dict.fromkeys(names, ""))
        elif line.strip():
            for name in names:
                docs[name] = f"{docs[name]} {line.strip()}".strip()
    return docs


def _bounds(constraints: list[Any]) -> dict[str, Any]:
    """pydantic Field bounds equivalent to the Interval among sklearn ``constraints``."""
    for c in constraints:
        if isinstance(c, Interval):
            out: dict[str, Any] = {}
            if c.left is not None:
                out["ge" if c.closed in ("left", "both") else "gt"] = c.left
            if c.right is not None:
                out["le" if c.closed in ("right", "both") else "lt"] = c.right
            if c.type is not Integral and math.inf not in c:
                out["allow_inf_nan"] = False
            return out
    return {}


def _model_fields(estimator: type) -> dict[str, Any]:
    """The model section's fields: the estimator's (DPSynthesizer's) parameters in
    signature order, less :data:`PRIVACY_PARAMETERS`, with their defaults, types (a str
    among StrOptions becomes a Literal), Interval bounds and docstring, then
    :data:`MODEL_OVERRIDES`."""
    hints = typing.get_type_hints(estimator.__init__)
    docs = _parameter_docs(estimator)
    constraints = estimator._parameter_constraints
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(estimator.__init__).parameters.items():
        if name == "self" or name in PRIVACY_PARAMETERS:
            continue
        if name not in docs or name not in constraints or name not in hints:
            raise TypeError(f"{estimator.__name__} parameter {name!r} needs a type hint, "
                            "an entry in the docstring's Parameters and one in "
                            "_parameter_constraints (the run config is generated from them)")
        annotation = hints[name]
        rules = [] if isinstance(constraints[name], str) else constraints[name]
        options = [c for c in rules if isinstance(c, StrOptions)]
        if options:
            annotation = Literal[tuple(sorted(options[0].options))]
        spec = {"annotation": annotation, "default": param.default,
                "description": docs[name], **MODEL_OVERRIDES.get(name, {})}
        fields[name] = (spec["annotation"], Field(default=spec["default"],
                                                  description=spec["description"],
                                                  **_bounds(rules)))
    return fields


def _known_clusterer(cls, name: str, info: ValidationInfo) -> str:
    # As DPSynthesizer: the clusterer places components, so it is used (and must be
    # installed) only with more than one component per class.
    if info.data.get("components_per_class", 1) > 1:
        _registered("clusterer", name)
    return name


#: :class:`dpsynth.DPSynthesizer` parameters (see its docstring), generated from its
#: signature: a new estimator parameter appears here by itself.
ModelConfig = create_model(
    "ModelConfig", __base__=_Section, __module__=__name__,
    __doc__=":class:`dpsynth.DPSynthesizer` parameters (see its docstring), generated from "
            "its signature, docstring and _parameter_constraints.",
    __validators__={"_known_clusterer": field_validator("clusterer")(_known_clusterer)},
    **_model_fields(DPSynthesizer))


#: How synthetic records are spread over classes unless asked otherwise (a run's
#: ``synthesize.class_balance``, ``dpsynth resample``, the registered model's ``predict``).
DEFAULT_CLASS_BALANCE = "balanced"


class SynthesizeConfig(_Section):
    n: int = Field(default=60000, ge=1)
    """Number of synthetic records (public; not the size of the private set)."""
    class_balance: Literal["proportional", "balanced"] = DEFAULT_CLASS_BALANCE
    """``balanced``: the same number of records per released class; ``proportional``: in
    proportion to the noisy class counts. Balanced is the default: it was as good or
    better at every eps of the small-data benchmark, most on imbalanced data (issue 13,
    docs/results.md "Small data"). A class below the noise threshold gets none either
    way."""
    random_state: int | None = 0
    shard_rows: int = Field(default=65536, ge=1)


class DecodeConfig(_Section):
    enabled: bool | None = None
    """Run the decode step (synthetic embeddings back to images); ``None``: whenever there
    is a decoder (``decoder`` or one that inverts the encoder)."""
    per_class: int = Field(default=10, ge=1, le=100)
    decoder: str | None = None
    """Decoder registry name (e.g. ``unclip``); ``None``: the one that inverts the encoder.
    Decoder registry name (e.g. ``unclip``); ``None``: the one that inverts the encoder."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the decoder (for unclip: model, steps, guidance_scale, ...)."""
    allow_cpu: bool = False
    """As ``encoder.allow_cpu``, for decode: ``true`` lets decode run on CPU on the CUDA
    image when there is no usable GPU (with a warning) instead of refusing."""

    @field_validator("decoder")
    @classmethod
    def _known_decoder(cls, name: str | None) -> str | None:
        return None if name is None else _registered("decoder", name)

    @model_validator(mode="after")
    def _options_of_this_decoder(self) -> DecodeConfig:
        from dpsynth.registry import options_problem

        if self.decoder and self.options and (
                problem := options_problem("decoder", self.decoder, self.options)):
            raise ValueError(problem)
        return self


class EvaluateConfig(_Section):
    hidden: int = Field(default=256, ge=0)
    steps: int = Field(default=2000, ge=1)
    """Optimiser steps, the same whatever the number of rows (a number of epochs underfits
    small data); the default is fixed on public data, see
    ``dpsynth.evaluation.mlp.STEPS``."""
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=256, ge=1)
    random_state: int | None = 0
    nonprivate_baseline: bool = True
    """Train the same MLP on the real private embeddings as a ceiling. NOT covered by the DP
    guarantee: the number is for the data owner and is labelled so everywhere."""
    image_level: bool = False
    """Also decode synthetic samples, re-encode the images and score an MLP trained on them
    (needs an encoder with a decoder)."""
    image_level_max: int = Field(default=10000, ge=10)

    @model_validator(mode="before")
    @classmethod
    def _epochs_was_replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "epochs" in data:
            raise ValueError(
                "evaluate.epochs was replaced by evaluate.steps (issue 13): the MLP trains "
                "for a fixed number of optimiser steps whatever the number of rows, so "
                "small data is not underfit; remove evaluate.epochs (set evaluate.steps "
                "to change the default)")
        return data


class TrackingConfig(_Section):
    uri: str | None = None
    """MLflow tracking URI; ``None``: $MLFLOW_TRACKING_URI, else the embedded sqlite store
    in the per-user dpsynth home ($DPSYNTH_HOME; never under --out)."""
    experiment: str = "dpsynth"


class RunConfig(_Section):
    name: str = "fashion-mnist-efficientnet"
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _texts_have_no_images(self) -> RunConfig:
        # Decoders map embeddings to images: a text run has none to decode or score.
        if self.data.modality != "text":
            return self
        asked = [k for k, on in (("decode.enabled", self.decode.enabled is True),
                                 ("decode.decoder", bool(self.decode.decoder)),
                                 ("evaluate.image_level", self.evaluate.image_level)) if on]
        if asked:
            raise ValueError(
                f"{' and '.join(asked)}: data.source 'text' has no images, so synthetic "
                "embeddings are not decoded and there is no image-level evaluation; set "
                "decode.enabled: false and evaluate.image_level: false (and no "
                "decode.decoder)")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        for section in (data["privacy"], data["privacy"]["budget"]):
            if section["epsilon"] == math.inf:
                section["epsilon"] = "inf"
        return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"privacy.epsilon=2"`` -> (["privacy", "epsilon"], 2); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. privacy.epsilon=2), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return [part.strip() for part in key.split(".")], value


#: An override of the first key makes the second (the options of the plugin it named)
#: stale: they are dropped unless an override sets them too.
_PLUGIN_OPTIONS = {("encoder", "name"): ("encoder", "options"),
                   ("decode", "decoder"): ("decode", "options")}


def field_facts(key: str) -> tuple[Any, Any, str]:
    """(annotation, default, description) of the dotted config ``key`` (``privacy.epsilon``)
    as :class:`RunConfig` declares it: the one place a run setting is described, read by
    the pipeline's run form (:mod:`dpsynth_kfp.parameters`) and the CLI's options."""
    model: type[BaseModel] = RunConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    return field.annotation, default, " ".join((field.description or "").split())


def _drop_stale_options(data: dict[str, Any], settings: list[tuple[list[str], Any]]) -> None:
    """A setting that switches the encoder (or decoder) drops the options the config gave
    the one it replaces: an option reaches only the plugin that has it (the run form's
    encoder field over a config made for EfficientNet, say)."""
    for (section, key), (_, options_key) in _PLUGIN_OPTIONS.items():
        node = data.get(section)
        if not isinstance(node, dict) or options_key not in node:
            continue
        switched = [value for path, value in settings if tuple(path) == (section, key)]
        touched = any(tuple(path[:2]) == (section, options_key) for path, _ in settings)
        if switched and switched[-1] != node.get(key) and not touched:
            node.pop(options_key)


def apply_settings(data: dict[str, Any], settings: Sequence[tuple[str, Any]],
                   *, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Set each dotted key of ``settings`` (``("privacy.epsilon", 2.0)``, in order) to its
    value, as given: no text round trip, so a run parameter arrives with its type. An
    error names the setting by its entry in ``labels`` (default: the key)."""
    paths = [([part.strip() for part in key.split(".")], value) for key, value in settings]
    _drop_stale_options(data, paths)
    for (path, value), where in zip(paths, labels or [key for key, _ in settings],
                                    strict=True):
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: {'.'.join(path[:i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming its key; one problem is one line in all."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or repr(got) in msg else f" (got {got!r})"
        problems.append(f"{where}: {msg}{shown}")
    if len(problems) == 1:
        return f"invalid configuration ({source}): {problems[0]}"
    return "\n".join([f"invalid configuration ({source}):", *(f"  {p}" for p in problems)])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None
                ) -> RunConfig:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    if path is None:
        return load_config_text(None, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return load_config_text(path.read_text(), overrides, source=str(path))


def load_config_text(text: str | None, overrides: list[str] | None = None, *,
                     settings: Mapping[str, Any] | None = None,
                     source: str = "config text") -> RunConfig:
    """Like :func:`load_config` for YAML given as a string (``None``/empty: defaults).
    ``settings`` (dotted key -> typed value, the pipeline's run parameters) apply before
    the ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if text and text.strip():
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source} must hold a mapping of sections, got "
                              f"{type(loaded).__name__}")
        data = loaded or {}
    else:
        source = "defaults"
    if settings:
        source += " + run parameters"
    if overrides:
        source += " + --set"
    # One pass, so a switched plugin's options are dropped as for one list of overrides.
    texts = list(overrides or [])
    pairs = [(".".join(path), value) for path, value in map(parse_override, texts)]
    if settings or pairs:
        data = apply_settings(data, [*(settings or {}).items(), *pairs],
                              labels=[*(settings or {}), *(f"--set {t!r}" for t in texts)])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except PrivacyParameterError as exc:  # raised directly by a validator
        raise ConfigError(f"invalid configuration ({source}): {exc}") from None
