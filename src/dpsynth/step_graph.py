"""The step graph: the one description of dpsynth's steps, in order.

Both ways of running dpsynth walk this graph. ``dpsynth run`` (:func:`dpsynth.runner.run`)
executes the steps in-process in this order; the Kubeflow pipeline factory
(``dpsynth_kfp.pipeline``) binds one task per step (one per split and part for encode) and
wires each task's inputs to the outputs that produce them. The sequence, the artifacts
passed between the steps and the configuration keys each step takes are written here and
nowhere else.

Artifacts are named by the graph (``train_embeddings``, ``mixture``, ...); each step maps
its own input and output names (the component's, e.g. dp_cluster's ``embeddings``) to
them. In-process, ``config`` is the validated :class:`~dpsynth.config.RunConfig`; in the
pipeline it is the ``config`` artifact that the plan task writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dpsynth.config import RunConfig


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Step:
    """One step: what it reads and writes and which configuration keys it takes."""

    name: str
    summary: str
    #: The step's input name -> the graph artifact it reads.
    inputs: Mapping[str, str] = field(default_factory=_frozen)
    #: The step's output name -> the graph artifact it writes. Outputs for the Kubeflow UI
    #: alone (previews, metrics) are the component's own and are not listed.
    outputs: Mapping[str, str] = field(default_factory=_frozen)
    #: Keyword argument of the ``dpsynth.steps`` function -> the config key it is read from.
    config: Mapping[str, str] = field(default_factory=_frozen)
    #: Read when an earlier step wrote them (in-process only: the pipeline's optional
    #: decode task runs in a condition, and its outputs are not passed on).
    reads_if_present: Mapping[str, str] = field(default_factory=_frozen)
    #: "cuda": reads images or runs a decoder. The pipeline gives these a GPU, the model
    #: cache and retries.
    device: str = "cpu"
    #: Reads private records: may start only after plan has charged the budget.
    private: bool = False
    #: Talks to the tracking store and the budget ledger (the pipeline gives it the secret).
    tracking: bool = False
    #: The config key that switches the step: ``False`` skips it. In-process ``None``
    #: means "when there is a decoder"; the pipeline decides by its parameter.
    switch: str | None = None
    #: The step runs once per split; an output named ``{split}_...`` is the split's.
    splits: tuple[str, ...] = ()
    #: The split the pipeline encodes in parallel parts (a public, compile-time width).
    fan_out: str | None = None

    def kwargs(self, config: RunConfig) -> dict[str, Any]:
        """The step function's keyword arguments from ``config`` (see :attr:`config`)."""
        return {kw: config_value(config, key) for kw, key in self.config.items()}

    def enabled(self, config: RunConfig) -> bool:
        """In-process: whether the step runs for ``config`` (a switch set to False skips)."""
        return self.switch is None or config_value(config, self.switch) is not False

    def produced(self, split: str | None = None) -> dict[str, str]:
        """Output name -> artifact, with ``{split}`` filled in."""
        return {out: art.format(split=split) for out, art in self.outputs.items()}


def config_value(config: RunConfig, key: str) -> Any:
    """The value at a dotted config key (``"synthesize.n"``); inside a mapping such as
    ``encoder.options``, None where the key is absent (``"encoder.options.image_size"``)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part)
        if node is None:
            return None
    return node


def _step(name: str, summary: str, *, inputs=None, outputs=None, config=None,
          reads_if_present=None, **kwargs) -> Step:
    return Step(name, summary, _frozen(inputs), _frozen(outputs), _frozen(config),
                _frozen(reads_if_present), **kwargs)


PLAN = "plan"

#: The steps in the order they run. A step reads only artifacts written above it.
STEPS: tuple[Step, ...] = (
    _step(PLAN, "Validate the configuration, build the privacy plan, check and charge the "
          "dataset's budget in the ledger and open the MLflow run. Reads no private data.",
          outputs={"config": "config", "privacy_plan": "privacy_plan", "Output": "run_id"},
          tracking=True),
    _step("encode", "Encode a split (the training split in parts) into an EmbeddingSet.",
          inputs={"config": "config"}, outputs={"embeddings": "{split}_embeddings"},
          device="cuda", private=True, splits=("train", "test"), fan_out="train"),
    _step("dp_cluster", "DP releases of the clustering: shared subspace, class counts and "
          "sums, DP k-means centres.",
          inputs={"embeddings": "train_embeddings", "privacy_plan": "privacy_plan"},
          outputs={"clusters": "clusters"}, private=True),
    _step("fit_gmm", "DP mixture release (weights, means, covariances) given the clusters.",
          inputs={"embeddings": "train_embeddings", "clusters": "clusters",
                  "privacy_plan": "privacy_plan"},
          outputs={"mixture": "mixture"}, private=True),
    _step("synthesize", "Sample the synthetic EmbeddingSet from the mixture "
          "(post-processing).",
          inputs={"mixture": "mixture", "config": "config"},
          outputs={"synthetic": "synthetic"},
          config={"n": "synthesize.n", "class_balance": "synthesize.class_balance",
                  "random_state": "synthesize.random_state",
                  "shard_rows": "synthesize.shard_rows"}),
    _step("decode", "Decode synthetic samples per class into images and a grid.",
          inputs={"synthetic": "synthetic", "config": "config"},
          outputs={"decoded": "decoded"},
          config={"per_class": "decode.per_class", "decoder": "decode.decoder",
                  "options": "decode.options", "allow_cpu": "decode.allow_cpu"},
          device="cuda", switch="decode.enabled"),
    _step("evaluate", "Train the MLP on the synthetic set and score it on the real test "
          "set; metrics, plots and the report, logged to the run that plan opened.",
          inputs={"synthetic": "synthetic", "test": "test_embeddings",
                  "train": "train_embeddings", "privacy_plan": "privacy_plan",
                  "config": "config", "run_id": "run_id"},
          outputs={"evaluation": "evaluation"}, reads_if_present={"decoded_dir": "decoded"},
          private=True, tracking=True),
)

STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


def step(name: str) -> Step:
    """The step called ``name``."""
    found = [s for s in STEPS if s.name == name]
    if not found:
        raise KeyError(f"unknown step {name!r}; steps are {list(STEP_NAMES)}")
    return found[0]


def _check(steps: tuple[Step, ...]) -> None:
    """Every input is written by an earlier step; every name is unique."""
    written: set[str] = set()
    for s in steps:
        missing = set(s.inputs.values()) - written
        if missing:
            raise AssertionError(f"step {s.name} reads {sorted(missing)} before any step "
                                 "writes it")
        for split in s.splits or (None,):
            written.update(s.produced(split).values())
    if len(set(STEP_NAMES)) != len(STEP_NAMES):
        raise AssertionError("step names must be unique")


_check(STEPS)
