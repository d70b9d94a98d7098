"""The dpsynth pipeline: plan -> encode (fanned out) -> dp_cluster -> fit_gmm ->
synthesize -> decode (optional) -> evaluate -> promote (optional, off by default).

``build_pipeline`` is a factory. It walks the step graph (:data:`dpsynth.step_graph.STEPS`,
the same graph ``dpsynth run`` walks), binds each step's component, loaded from its spec
``components/<step>/component.yaml``, and wires its inputs to the outputs the graph names.
Its signature and the descriptions in the Kubeflow run form come from the parameter table
(:data:`dpsynth_kfp.parameters.PARAMETERS`). Any component can be replaced by another
that honours the same contract (the inputs and outputs of its spec, the artifact formats
of docs/formats.md): replace the spec file, or name another spec or component in
``components``. The compile-time settings (fan-out width, GPU, node selector, PVC, secret)
are arguments of the factory; the run parameters are the pipeline's parameters.
"""

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl.base_component import BaseComponent

from dpsynth.privacy.plan import ReleaseSpec
from dpsynth.step_graph import PLAN, STEP_NAMES, STEPS, Step
from dpsynth_kfp.components import (
    COMPONENTS,
    COMPONENTS_DIR,
    JOINS,
    PART_INPUTS,
    exit_component,
    load_spec,
    load_step,
    retargeted,
    spec_path,
)
from dpsynth_kfp.declarations import (
    DeclarationError,
    Declared,
    check_unique,
    read_declaration,
    sidecar_of,
    undeclared_message,
)
from dpsynth_kfp.declarations import to_json as declarations_json
from dpsynth_kfp.parameters import (
    BY_NAME,
    DATA_PVC,
    NAMES,
    PARAMETERS,
    PLAN_PARAMETERS,
    PROMOTE_PARAMETERS,
    for_key,
)

#: The steps that read the private data (a data PVC is mounted on them).
ENCODE = "encode"
#: Inside the private boundary: plan (its pre-flight reads the data) and the steps that
#: read private records or embeddings.
PRIVATE_STEPS = frozenset({PLAN} | {s.name for s in STEPS if s.private})
#: What the Kubeflow UI shows for each task (kfp's own names are ``encode-2``...).
DISPLAY_NAMES = {
    "plan": "Plan and charge the privacy budget", "encode": "Encode",
    "dp_cluster": "DP clustering", "fit_gmm": "DP Gaussian mixture",
    "synthesize": "Synthesize", "decode": "Decode samples", "evaluate": "Evaluate",
    "finalize": "Finish the run (always)", "promote": "Register and gate the release",
    "resample": "Resample the promoted mixture"}
PIPELINE_NAME = "dpsynth"
DESCRIPTION = ("Differentially private synthetic embeddings: plan and budget check, encode, "
               "DP clustering, DP Gaussian mixture, synthesis, optional decoding, evaluation.")


@dataclass(frozen=True)
class TaskResources:
    """One task's CPU/memory requests and limits (Kubernetes quantities) and its timeout."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    timeout_s: int


#: Per step: plan is light and short; the DP/CPU steps hold the training embeddings in
#: memory; encode and decode run models on the GPU (decode: a diffusion model).
DEFAULT_RESOURCES: dict[str, TaskResources] = {
    "plan": TaskResources("500m", "2", "1Gi", "4Gi", 30 * 60),
    "encode": TaskResources("4", "8", "16Gi", "32Gi", 6 * 3600),
    "dp_cluster": TaskResources("2", "4", "4Gi", "16Gi", 2 * 3600),
    "fit_gmm": TaskResources("2", "4", "4Gi", "16Gi", 2 * 3600),
    "synthesize": TaskResources("1", "2", "2Gi", "8Gi", 3600),
    "decode": TaskResources("4", "8", "16Gi", "32Gi", 4 * 3600),
    "evaluate": TaskResources("2", "4", "4Gi", "16Gi", 2 * 3600),
    # Not a step of the graph: the optional task after evaluate (MLflow registry calls).
    "promote": TaskResources("500m", "2", "1Gi", "4Gi", 30 * 60),
    # The resample-only pipeline's one task: samples n records from the mixture.
    "resample": TaskResources("1", "2", "2Gi", "8Gi", 3600),
}
#: A step of the graph not in the table (one added later) gets its family's default.
FAMILY_RESOURCES: dict[str, TaskResources] = {
    "cpu": TaskResources("1", "4", "2Gi", "16Gi", 2 * 3600),
    "cuda": TaskResources("4", "8", "16Gi", "32Gi", 6 * 3600)}


def resources_for(step: Step, table: dict[str, TaskResources]) -> TaskResources:
    """``table[step]``, else the exit task's or the step family's default."""
    if step.name in table:
        return table[step.name]
    return EXIT_RESOURCES if step.name == EXIT_STEP.name else FAMILY_RESOURCES[step.device]


#: The exit handler's task, scheduled like a CPU step (it needs the MLflow secret).
EXIT_STEP = Step(name="finalize", summary="The exit handler.", tracking=True)
EXIT_RESOURCES = TaskResources("250m", "1", "512Mi", "2Gi", 30 * 60)

#: The production refresh after evaluate (:mod:`dpsynth_kfp.promote_task`), run only when
#: the ``promote`` parameter is true; not a step of the graph (``dpsynth run`` does not
#: promote; ``dpsynth promote`` does). Scheduled like a CPU step, with the MLflow secret.
PROMOTE_STEP = Step(name="promote", summary="Register and gate the release.", tracking=True)
#: The promote task's inputs: its input name -> the graph artifact.
PROMOTE_INPUTS = {"mixture": "mixture", "synthetic": "synthetic", "evaluation": "evaluation",
                  "privacy_plan": "privacy_plan", "config": "config", "run_id": "run_id"}


@dataclass(frozen=True)
class Toleration:
    """One toleration of the GPU steps (Kubernetes' fields)."""

    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"


#: The NVIDIA GPU operator's node label and taint (the committed pipeline's default, and
#: manifests/overlays/dev's cluster-settings.yaml).
GPU_OPERATOR_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = Toleration("nvidia.com/gpu")
#: Steps never retried by Kubeflow: plan charges the budget (once); promote registers a
#: version and runs the gates, whose failure is deterministic (a retry would only register
#: the same candidate again); resample registers a version too.
NOT_RETRIED = frozenset({PLAN, "promote", "resample"})
#: The steps inside the private boundary (they read private records or embeddings): their
#: pods carry this label, which the namespace's default-deny egress policy selects.
PRIVATE_BOUNDARY_LABEL = ("dpsynth.io/private-boundary", "true")
#: The images' non-root user (components/Dockerfile.*: ``useradd --uid 10001``).
IMAGE_UID = 10001


@dataclass(frozen=True)
class ClusterSettings:
    """How the tasks are scheduled and what every pod mounts (compile time). The GPU
    steps are the graph's ``device="cuda"`` steps; the secret goes to its ``tracking``
    steps. Every task gets ``resources[step]`` (requests, limits, a timeout); every task
    but those in :data:`NOT_RETRIED` is retried ``retries`` times.

    Each overlay keeps its own in ``manifests/overlays/<name>/cluster-settings.yaml``
    (:func:`dpsynth_kfp.cluster_settings.load_cluster_settings`)."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    #: The GPU steps' node selector (every label must match) and tolerations.
    node_selector: dict[str, str] | None = field(
        default_factory=lambda: dict(GPU_OPERATOR_SELECTOR))
    tolerations: tuple[Toleration, ...] = (GPU_TOLERATION,)
    model_cache_pvc: str | None = "dpsynth-model-cache"
    model_cache_mount: str = "/cache"
    mlflow_secret: str | None = "dpsynth-mlflow"
    #: secret key -> environment variable, all optional in the secret.
    mlflow_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN",
        # The privacy budget ledger (PostgreSQL, as its INSERT/SELECT-only role), and the
        # role's password apart from the URI (libpq reads PGPASSWORD).
        "DPSYNTH_LEDGER_URI": "DPSYNTH_LEDGER_URI",
        "DPSYNTH_LEDGER_PASSWORD": "PGPASSWORD"})
    #: The pipeline root's object store, for the exit handler (it deletes a failed run's
    #: private embeddings there): the secret with its keys (key -> environment variable;
    #: KFP's own MinIO secret, present in every profile namespace) and its endpoint.
    #: None: no credentials passed (a local root, or workload identity).
    pipeline_root_secret: str | None = "mlpipeline-minio-artifact"
    pipeline_root_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"})
    pipeline_root_endpoint: str | None = "http://minio-service.kubeflow:9000"
    #: Mount the PVC named by the run parameter ``data_pvc`` (the private data of
    #: image-folder/webdataset sources) at ``data_mount`` on the steps that read it: plan
    #: (its pre-flight checks the data is reachable before the charge) and encode. The
    #: claim is chosen per run, not compiled in; False: no data volume (the data is in the
    #: image or remote), and the parameter is ignored.
    mount_data: bool = True
    data_mount: str = "/data"
    #: plan's pre-flight builds the encoder and encodes one blank image; off for encoders
    #: whose weights only the GPU model cache holds (the data is still checked).
    plan_checks_encoder: bool = True
    #: Requests, limits and timeout by step; None: none (BestEffort, no timeout).
    resources: dict[str, TaskResources] | None = field(
        default_factory=lambda: dict(DEFAULT_RESOURCES))
    #: How many of a step's parts (synthesize's) run at once (dsl.ParallelFor's cap).
    parts_parallelism: int = 4
    #: Retries of every idempotent task (all but :data:`NOT_RETRIED`), with exponential
    #: backoff.
    retries: int = 2
    retry_backoff: str = "60s"
    #: Image by family ("cpu", "cuda"): a full reference, e.g. ``repo@sha256:...``. None or
    #: a missing family: the default, re-pointed by the ``DPSYNTH_IMAGE_*`` variables.
    images: dict[str, str] | None = None
    #: Pod labels, non-root security context: what the namespace's Pod Security
    #: "restricted" level and its default-deny egress policy need (off for local runs).
    pod_policies: bool = True


#: The committed pipeline's settings.
CLUSTER = ClusterSettings()
#: For local runs: no cluster objects at all (the local runner has no Kubernetes).
LOCAL = ClusterSettings(accelerator_type="", node_selector=None, tolerations=(),
                        model_cache_pvc=None, mlflow_secret=None, resources=None, retries=0,
                        mount_data=False, pipeline_root_secret=None,
                        pipeline_root_endpoint=None, pod_policies=False)


def _on_cluster(task, step: Step, settings: ClusterSettings, data_pvc: Any = None):
    """Schedule ``task`` as ``settings`` say; ``data_pvc``: the run parameter's channel
    (mounted on plan and encode when ``settings.mount_data``)."""
    if settings.mlflow_secret and step.tracking:
        kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret,
                                     secret_key_to_env=settings.mlflow_secret_keys,
                                     optional=True)
    if settings.resources:
        r = resources_for(step, settings.resources)
        task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
        task.set_memory_request(r.memory_request).set_memory_limit(r.memory_limit)
        kubernetes.set_timeout(task, r.timeout_s)
    if settings.mount_data and data_pvc is not None and step.name in (PLAN, ENCODE):
        kubernetes.mount_pvc(task, pvc_name=data_pvc, mount_path=settings.data_mount)
    if step.name == PLAN and not settings.plan_checks_encoder:
        task.set_env_variable("DPSYNTH_PLAN_CHECK_ENCODER", "0")
    if settings.pod_policies:
        kubernetes.add_pod_label(task, "dpsynth.io/step", step.name)
        if step.name in PRIVATE_STEPS:
            kubernetes.add_pod_label(task, *PRIVATE_BOUNDARY_LABEL)
        kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID,
                                        run_as_non_root=True)
    if settings.retries and step.name not in NOT_RETRIED:
        # The other steps are idempotent (each rewrites its own outputs).
        task.set_retry(num_retries=settings.retries, backoff_duration=settings.retry_backoff,
                       backoff_factor=2.0)
    if step.device != "cuda":
        return task
    if settings.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=settings.model_cache_pvc,
                             mount_path=settings.model_cache_mount)
        for var, sub in (("DPSYNTH_CACHE_DIR", "embeddings"), ("DPSYNTH_MODEL_CACHE", "models"),
                         ("HF_HOME", "huggingface"), ("TORCH_HOME", "torch")):
            task.set_env_variable(var, f"{settings.model_cache_mount}/{sub}")
    if settings.accelerator_type:
        task.set_accelerator_type(settings.accelerator_type)
        task.set_accelerator_limit(settings.accelerator_limit)
    for key, value in (settings.node_selector or {}).items():
        kubernetes.add_node_selector(task, key, value)
    for t in settings.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value,
                                  effect=t.effect)
    return task


def _check_contract(step: Step, builtin: BaseComponent, replacement: BaseComponent) -> None:
    """A replacement takes every input the pipeline passes (the built-in's), needs no
    other, and writes every output the step graph passes on."""
    given = builtin.component_spec.inputs or {}
    takes = replacement.component_spec.inputs or {}
    writes = replacement.component_spec.outputs or {}
    problems = []
    # A step the pipeline runs in parts may be replaced by a component that runs whole.
    optional = set(PART_INPUTS) if step.name in JOINS else set()
    if missing := sorted(set(given) - set(takes) - optional):
        problems.append(f"it does not take the inputs {missing}")
    if extra := sorted(n for n, s in takes.items() if n not in given and not s.optional):
        problems.append(f"it requires inputs the pipeline does not pass: {extra}")
    if absent := sorted(set(step.outputs) - set(writes)):
        problems.append(f"it does not write the outputs {absent}")
    if problems:
        raise ValueError(f"the replacement for step {step.name!r} does not fit: "
                         + "; ".join(problems) + f". The step takes {sorted(given)} and "
                         f"writes {sorted(step.outputs)} (components/README.md).")


def _named(component: BaseComponent, step: Step) -> BaseComponent:
    """``component`` under the step's name, so that its task is the step's task whatever
    the replacement is called (the same task names, outputs and run folders)."""
    name = step.name.replace("_", "-")
    if component.component_spec.name == name:
        return component
    renamed = copy.copy(component)
    renamed.component_spec = dataclasses.replace(component.component_spec, name=name)
    renamed.name = name
    return renamed


def declared_releases(components: Mapping[str, Any] | None = None,
                      root: str | Path = COMPONENTS_DIR) -> tuple[ReleaseSpec, ...]:
    """The releases the private steps' components declare beyond the configuration's own
    (:mod:`dpsynth_kfp.declarations`). A replacement of a private step without a
    declaration raises :class:`DeclarationError` naming what to write."""
    found: list[ReleaseSpec] = []
    for s in STEPS:
        if not s.private:
            continue
        chosen = (components or {}).get(s.name)
        if isinstance(chosen, Declared):
            found += [replace(r, declared_by=s.name) for r in chosen.releases]
            continue
        spec = spec_path(s.name, root) if chosen is None else chosen
        if isinstance(spec, BaseComponent):
            raise DeclarationError(undeclared_message(
                s.name, f"component {spec.name!r}") + " For a component object, pass "
                "Declared(component, releases=[...]) (dpsynth_kfp.declarations).")
        spec = Path(spec)
        if chosen is None and not spec.is_file():
            continue  # the built-in, compiled from the package: no releases of its own
        sidecar = sidecar_of(spec)
        if not sidecar.is_file():
            raise DeclarationError(undeclared_message(s.name, str(spec)))
        found += read_declaration(sidecar, s.name, spec)
    check_unique(found)
    return tuple(found)


def load_components(components: Mapping[str, Any] | None = None,
                    root: str | Path = COMPONENTS_DIR,
                    images: Mapping[str, str] | None = None) -> dict[str, BaseComponent]:
    """Every step's component: the spec under ``root`` unless ``components`` names a
    replacement (a component, the path of its spec, or either wrapped in
    :class:`~dpsynth_kfp.declarations.Declared`); each is checked against the built-in's
    contract."""
    unknown = set(components or {}) - set(STEP_NAMES)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; steps are {sorted(STEP_NAMES)}")
    ops = {}
    for s in STEPS:
        chosen = (components or {}).get(s.name)
        if isinstance(chosen, Declared):
            chosen = chosen.component
        if chosen is None:
            chosen = load_step(s.name, root, images)
        elif isinstance(chosen, str | Path):
            chosen = load_spec(chosen, images)
        # A spec file replaced in the folder is checked as a replacement is.
        _check_contract(s, COMPONENTS[s.name], chosen)
        ops[s.name] = _named(chosen, s)
    return ops


def _assemble(ops: Mapping[str, BaseComponent], values: Mapping[str, Any], encode_parts: int,
              settings: ClusterSettings, synthesize_parts: int = 1,
              declared: Sequence[ReleaseSpec] = ()) -> None:
    """Bind one task per step of the graph, in its order."""
    #: graph artifact -> a function giving a fresh channel (kfp 2.17 cannot compile one
    #: Collected shared by several consumers).
    made: dict[str, Callable[[], Any]] = {}

    def bind(step: Step, **kwargs):
        task = ops[step.name](**kwargs)
        task.set_caching_options(False)  # a DP release must never be served from a cache
        label = DISPLAY_NAMES.get(step.name, step.name)
        if "split" in kwargs:
            label += f" {kwargs['split']} split" + (" (one part)" if kwargs["parts"] != 1
                                                    else "")
        elif "part" in kwargs:
            label += " (one part)"
        task.set_display_name(label)
        return _on_cluster(task, step, settings, values[DATA_PVC.name])


    def publish(step: Step, task, split: str | None = None, collected: bool = False):
        for out, artifact in step.produced(split).items():
            made[artifact] = ((lambda o=task.outputs[out]: dsl.Collected(o)) if collected
                              else (lambda o=task.outputs[out]: o))

    plan_step, *later = STEPS
    assert plan_step.name == PLAN, "plan comes first in the graph"
    # The exit handler runs after every task, failed or not: a failed run's MLflow run
    # ends FAILED (tagged with the failed step) and its private embeddings are deleted.
    # kfp lets an exit task depend on no task: it takes pipeline parameters and the run id
    # (plan tags the MLflow run with it).
    exit_task = exit_component(settings.images)(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                   config_yaml=values["config_yaml"],
                                   mlflow_uri=values[for_key("tracking.uri").name],
                                   decode=values[for_key("decode.enabled").name])
    exit_task.set_caching_options(False)
    exit_task.set_display_name(DISPLAY_NAMES[EXIT_STEP.name])
    _on_cluster(exit_task, EXIT_STEP, settings)
    if settings.pipeline_root_secret:
        kubernetes.use_secret_as_env(exit_task, secret_name=settings.pipeline_root_secret,
                                     secret_key_to_env=settings.pipeline_root_secret_keys,
                                     optional=True)
    if settings.pipeline_root_endpoint:
        exit_task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", settings.pipeline_root_endpoint)
    with dsl.ExitHandler(exit_task, name="dpsynth-run"):
        # The parameters are applied to config_yaml inside the plan task. kfp_run_id: a
        # per-run input, so that plan's cache key differs on every run even when the
        # client turns caching on for the whole run (the charge must happen).
        # declared_releases: a constant of the compiled pipeline (the components wired in
        # are fixed at compile time), composed into the plan and charged with it.
        publish(plan_step, bind(plan_step, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                declared_releases=declarations_json(declared),
                                **{p.name: values[p.name] for p in PLAN_PARAMETERS}))
        _assemble_later(later, values, encode_parts, bind, publish, made,
                        {"synthesize": synthesize_parts}, settings, ops)
        _assemble_promote(values, made, settings)


def promote_component(images: Mapping[str, str] | None = None) -> BaseComponent:
    """The promote task's component (:func:`dpsynth_kfp.promote_task.promote`)."""
    from dpsynth_kfp.promote_task import promote

    return retargeted(promote, images)


def _assemble_promote(values, made, settings: ClusterSettings) -> None:
    """promote after evaluate, only when the ``promote`` parameter is true. The gates are
    run parameters; the tracking URI is ``mlflow_uri`` (empty: the secret's)."""
    switch = values[BY_NAME["promote"].name]
    gates = {p.name: values[p.name] for p in PROMOTE_PARAMETERS if p.name != "promote"}
    with dsl.If(switch == True, name="promote-enabled"):  # noqa: E712 - kfp
        task = promote_component(settings.images)(
            tracking_uri=values[for_key("tracking.uri").name],
            **{name: made[artifact]() for name, artifact in PROMOTE_INPUTS.items()}, **gates)
        task.set_caching_options(False)  # a new release on every run
        task.set_display_name(DISPLAY_NAMES[PROMOTE_STEP.name])
        _on_cluster(task, PROMOTE_STEP, settings)


def _runs_in_parts(step: Step, component: BaseComponent, width: int) -> bool:
    """Whether ``step`` is bound as ``width`` parts and a join: it has a join, more than
    one part is asked for and its component takes ``part`` and ``parts``."""
    takes = component.component_spec.inputs or {}
    return step.name in JOINS and width > 1 and all(i in takes for i in PART_INPUTS)


def _assemble_later(later, values, encode_parts, bind, publish, made,
                    part_widths: Mapping[str, int], settings: ClusterSettings,
                    ops: Mapping[str, BaseComponent]) -> None:
    """Bind the steps after plan (inside the exit handler)."""
    for step in later:
        inputs = {name: made[artifact]() for name, artifact in step.inputs.items()}
        width = part_widths.get(step.name, 1)
        if _runs_in_parts(step, ops[step.name], width):
            # Each part writes a contiguous range of the set's shards from the same seed;
            # the join writes the set one task would (the part count is public).
            with dsl.ParallelFor(list(range(width)), parallelism=settings.parts_parallelism,
                                 name=f"{step.name}-parts") as part:
                task = bind(step, part=part, parts=width, **inputs)
            (output,) = step.outputs
            join = retargeted(JOINS[step.name], settings.images)(
                parts=dsl.Collected(task.outputs[output]))
            join.set_caching_options(False)
            join.set_display_name(f"{DISPLAY_NAMES.get(step.name, step.name)}: join the parts")
            publish(step, _on_cluster(join, step, settings))
        elif step.splits:
            for split in step.splits:
                # Each split of the step: the fan-out split in encode_parts parallel parts.
                if split == step.fan_out:
                    with dsl.ParallelFor(list(range(encode_parts)),
                                         name=f"{step.name}-{split}-parts") as part:
                        task = bind(step, split=split, part=part, parts=encode_parts,
                                    **inputs)
                    publish(step, task, split, collected=True)
                else:
                    publish(step, bind(step, split=split, part=0, parts=1, **inputs), split)
        elif step.switch:
            switch = values[for_key(step.switch).name]
            with dsl.If(switch == True, name=f"{step.name}-enabled"):  # noqa: E712 - kfp
                bind(step, **inputs)  # its outputs are not passed on (a condition)
        else:
            publish(step, bind(step, **inputs))


def _signature() -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default,
                          annotation=p.type) for p in PARAMETERS])


def _docstring() -> str:
    """The pipeline's description and its parameters' (kfp reads ``Args:`` into the spec,
    and the Kubeflow run form shows them)."""
    return (DESCRIPTION + "\n\nArgs:\n"
            + "".join(f"    {p.name}: {p.description}\n" for p in PARAMETERS))


def build_pipeline(*, encode_parts: int = 4, synthesize_parts: int = 4,
                   settings: ClusterSettings = CLUSTER,
                   components: Mapping[str, BaseComponent | str | Path] | None = None,
                   components_dir: str | Path = COMPONENTS_DIR):
    """The pipeline function, ready for ``kfp.compiler`` or a local run.

    encode_parts: the training set's encode fans out over this many tasks (public and
        fixed at compile time: a width derived from the data would leak its size).
    synthesize_parts: synthesize fans out over this many tasks, each writing a range of
        the set's shards, joined by one more task into the set a single task writes
        (public, fixed at compile time; 1: one task, no join).
    settings: GPU, node selector, toleration, PVC and secret (``LOCAL`` for none).
    components: replacements by step name ("encode", "synthesize", ...): a component or
        the path of a component spec (YAML). A replacement must take the built-in's inputs
        and write the outputs that later steps read.
    components_dir: where the built-in specs are (``<dir>/<step>/component.yaml``).
    """
    for name, width in (("encode_parts", encode_parts), ("synthesize_parts", synthesize_parts)):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {width!r}")
    ops = load_components(components, components_dir, settings.images)
    declared = declared_releases(components, components_dir)

    def dpsynth_pipeline(*args):
        _assemble(ops, dict(zip(NAMES, args, strict=True)), encode_parts, settings,
                  synthesize_parts, declared)

    dpsynth_pipeline.__signature__ = _signature()
    dpsynth_pipeline.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(dpsynth_pipeline)


RESAMPLE_PIPELINE_NAME = "dpsynth-resample"
RESAMPLE_DESCRIPTION = ("Resample-only refresh: new synthetic records from the promoted "
                        "mixture in the MLflow registry, registered as a new version. "
                        "Post-processing of a DP release: no budget, no private data.")
#: The resample pipeline's one task (:func:`dpsynth_kfp.promote_task.resample`).
RESAMPLE_STEP = Step(name="resample", summary="Resample the promoted mixture.",
                     tracking=True)


def build_resample_pipeline(*, settings: ClusterSettings = CLUSTER):
    """The resample-only pipeline: one task, :func:`dpsynth_kfp.promote_task.resample`,
    scheduled like a CPU step with the MLflow secret."""
    from dpsynth_kfp.promote_task import resample

    op = retargeted(resample, settings.images)

    # The run form's default sample size is the run configuration's (synthesize.n).
    default_n = BY_NAME["n_samples"].default

    @dsl.pipeline(name=RESAMPLE_PIPELINE_NAME, description=RESAMPLE_DESCRIPTION)
    def dpsynth_resample(dataset_id: str, n_samples: int = default_n, mlflow_uri: str = "",
                         alias: str = "production", promote: bool = False):
        """Resample-only refresh.

        Args:
            dataset_id: The dataset id (the registered model is dpsynth-<dataset_id>).
            n_samples: Synthetic records to sample.
            mlflow_uri: MLflow tracking and registry URI; empty: MLFLOW_TRACKING_URI from
                the dpsynth-mlflow secret.
            alias: The registered version to resample (its alias).
            promote: Promote the new version through the default gates.
        """
        task = op(dataset_id=dataset_id, n=n_samples, tracking_uri=mlflow_uri, alias=alias,
                  promote_version=promote)
        task.set_caching_options(False)  # fresh records on every run
        task.set_display_name(DISPLAY_NAMES[RESAMPLE_STEP.name])
        _on_cluster(task, RESAMPLE_STEP, settings)

    return dpsynth_resample
