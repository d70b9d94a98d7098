"""One Kubeflow Pipelines (v2) component per step of :data:`dpsynth.step_graph.STEPS`:
thin, typed bindings of artifacts to ``dpsynth.steps``. No logic lives here beyond binding;
everything a component does is a call into the library, so the in-process ``dpsynth run``
and the pipeline share one code path (see docs/pipeline.md).

Each component is defined at module level and compiled to its own spec,
``components/<step>/component.yaml`` (``dpsynth pipeline compile-components``); the
pipeline is assembled from those files (:func:`load_step`), so replacing one file swaps
the component. The specs name the default images (:data:`DEFAULT_IMAGES`), one per
component family ("cpu": plan and the DP/CPU steps, "cuda": encode and decode); when the
pipeline is compiled, ``DPSYNTH_IMAGE_REGISTRY`` and ``DPSYNTH_IMAGE_TAG`` re-point them
(``<registry>/dpsynth:<tag>-<family>``), and ``DPSYNTH_IMAGE_DIGEST_CPU`` /
``DPSYNTH_IMAGE_DIGEST_CUDA`` pin a family to a digest (``<registry>/dpsynth@sha256:...``,
which wins over the tag). The images are built from ``components/Dockerfile.cpu`` and
``components/Dockerfile.cuda`` and hold kfp, so every component is compiled with
``install_kfp_package=False`` (no pip install at pod start).

Lightweight components ship their function source to the pod, so every import is inside
the function body. The descriptions of the inputs (``Args:``) and of the outputs
(``Returns:``, kfp's convention) go into the specs.
"""

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml
from kfp import compiler, components, dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)
from kfp.dsl.base_component import BaseComponent

from dpsynth.step_graph import STEP_NAMES
from dpsynth_kfp import plan_task
from dpsynth_kfp.parameters import PLAN_PARAMETERS

DEFAULT_REGISTRY = "ghcr.io/dpsynth"
DEFAULT_TAG = "0.1.0"
#: Where the committed specs live: ``components/<step>/component.yaml``.
COMPONENTS_DIR = Path(__file__).resolve().parents[2] / "components"
SPEC_FILE = "component.yaml"


#: The component families, as the step graph's ``device``.
FAMILIES = ("cpu", "cuda")


def image(kind: str, registry: str | None = None, tag: str | None = None,
          digest: str | None = None) -> str:
    """The container image of the component family ``kind`` ("cpu" or "cuda"). Registry
    and tag default to $DPSYNTH_IMAGE_REGISTRY and $DPSYNTH_IMAGE_TAG, else ghcr.io/dpsynth
    and 0.1.0; a digest (``sha256:<hex>``; default $DPSYNTH_IMAGE_DIGEST_<KIND>) names the
    image by digest instead of by tag."""
    if kind not in FAMILIES:
        raise ValueError(f"unknown image family {kind!r}; families are {FAMILIES}")
    registry = (registry or os.environ.get("DPSYNTH_IMAGE_REGISTRY") or DEFAULT_REGISTRY)
    repository = f"{registry.rstrip('/')}/dpsynth"
    digest = digest if digest is not None else \
        os.environ.get(f"DPSYNTH_IMAGE_DIGEST_{kind.upper()}", "")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"image digest for {kind!r} must be sha256:<64 hex digits>, "
                             f"got {digest!r}")
        return f"{repository}@{digest}"
    tag = tag or os.environ.get("DPSYNTH_IMAGE_TAG") or DEFAULT_TAG
    if tag == "latest":
        raise ValueError("image tag 'latest' is refused: name a version or a digest")
    return f"{repository}:{tag}-{kind}"


#: The images the component specs name ("cpu" or "cuda", as the step graph's device).
DEFAULT_IMAGES = {kind: image(kind, DEFAULT_REGISTRY, DEFAULT_TAG, "") for kind in FAMILIES}
CPU, CUDA = DEFAULT_IMAGES["cpu"], DEFAULT_IMAGES["cuda"]


# ------------------------------------------------------------------------------ plan
#: Made from a plain typed function (:func:`dpsynth_kfp.plan_task.plan`), whose inputs are
#: the plan task's run parameters (:data:`dpsynth_kfp.parameters.PLAN_PARAMETERS`).
plan = dsl.component(base_image=CPU, install_kfp_package=False)(plan_task.plan)


def _describe_plan_inputs() -> None:
    """The plan component's input descriptions, from the parameter table (so from the
    run configuration's schema), not written a second time in plan's docstring."""
    described = {p.name: p.description for p in PLAN_PARAMETERS}
    described.update(
        kfp_run_id="The Kubeflow run's id (the pipeline passes "
        "dsl.PIPELINE_JOB_ID_PLACEHOLDER): a per-run input, so plan is never served from a "
        "cache, even when the client enables caching.",
        declared_releases="The DP releases that replacement components of private steps "
        "declare (JSON, fixed when the pipeline is compiled): planned and charged with the "
        "configuration's own.")
    for name, spec in plan.component_spec.inputs.items():
        spec.description = described[name]


_describe_plan_inputs()


# ---------------------------------------------------------------------------- encode
@dsl.component(base_image=CUDA, install_kfp_package=False)
def encode(config: Input[Artifact], split: str, part: int, parts: int,
           embeddings: Output[Dataset]):
    """Encode part ``part`` of ``parts`` of a split into an EmbeddingSet (private).

    Args:
        config: The run configuration that the plan task wrote.
        split: "train" or "test".
        part: Which part of the split's shards, from 0.
        parts: How many parts the split is encoded in (a public, compile-time width).

    Returns:
        embeddings: The EmbeddingSet of this part (docs/formats.md).
    """
    from pathlib import Path

    from dpsynth import steps
    from dpsynth.config import load_config

    es = steps.encode(load_config(config.path), split, Path(embeddings.path), part=part,
                      parts=parts, progress=False)
    embeddings.metadata.update(encoder=es.encoder, dim=es.dim, part=part, parts=parts)


# ------------------------------------------------------------------------ dp_cluster
@dsl.component(base_image=CPU, install_kfp_package=False)
def dp_cluster(embeddings: Input[list[Dataset]], privacy_plan: Input[Artifact],
               clusters: Output[Model]):
    """DP subspace, class counts and sums, DP k-means centres (DP releases).

    Args:
        embeddings: The training EmbeddingSet's parts, in order.
        privacy_plan: The plan that sets every release's noise.

    Returns:
        clusters: A saved clusters-stage synthesizer (DP releases).
    """
    from dpsynth import steps

    steps.dp_cluster([e.path for e in embeddings], privacy_plan.path, clusters.path)


# --------------------------------------------------------------------------- fit_gmm
@dsl.component(base_image=CPU, install_kfp_package=False)
def fit_gmm(embeddings: Input[list[Dataset]], clusters: Input[Model],
            privacy_plan: Input[Artifact], mixture: Output[Model]):
    """DP mixture release given the clusters.

    Args:
        embeddings: The training EmbeddingSet's parts, in order.
        clusters: dp_cluster's output.
        privacy_plan: The plan that sets every release's noise.

    Returns:
        mixture: The saved mixture (DP releases).
    """
    from dpsynth import steps

    steps.fit_gmm([e.path for e in embeddings], clusters.path, privacy_plan.path,
                  mixture.path)


# ------------------------------------------------------------------------ synthesize
@dsl.component(base_image=CPU, install_kfp_package=False)
def synthesize(mixture: Input[Model], config: Input[Artifact], synthetic: Output[Dataset],
               part: int = 0, parts: int = 1):
    """Sample the synthetic EmbeddingSet (post-processing), or one part of its shards.

    Args:
        mixture: fit_gmm's output.
        config: The run configuration (its synthesize section).
        part: Which part of the set's shards this task writes (0 <= part < parts).
        parts: How many tasks write the set (a public, compile-time width); with more
            than one, join_synthetic joins their sets into the one a single task writes.

    Returns:
        synthetic: The synthetic EmbeddingSet (docs/formats.md), or the part's.
    """
    from dpsynth import steps
    from dpsynth.config import load_config
    from dpsynth.step_graph import step

    es = steps.synthesize_part(mixture.path, synthetic.path, part=part, parts=parts,
                               **step("synthesize").kwargs(load_config(config.path)))
    synthetic.metadata.update(count=es.count, part=part, parts=parts,
                              **es.manifest["provenance"])


@dsl.component(base_image=CPU, install_kfp_package=False)
def join_synthetic(parts: Input[list[Dataset]], synthetic: Output[Dataset]):
    """Join the synthesize tasks' parts into one synthetic EmbeddingSet, the set one
    synthesize task would write, bit for bit (not a step of the graph: the pipeline's
    fan-out of synthesize).

    Args:
        parts: Every synthesize part's EmbeddingSet.

    Returns:
        synthetic: The synthetic EmbeddingSet (docs/formats.md).
    """
    from dpsynth import steps

    es = steps.join_synthetic([p.path for p in parts], synthetic.path)
    synthetic.metadata.update(count=es.count, **es.manifest["provenance"])


# ---------------------------------------------------------------------------- decode
@dsl.component(base_image=CUDA, install_kfp_package=False)
def decode(synthetic: Input[Dataset], config: Input[Artifact], decoded: Output[Artifact],
           preview: Output[HTML]):
    """Decode synthetic samples per class; an HTML preview of the grid for the UI.

    Args:
        synthetic: The synthetic EmbeddingSet.
        config: The run configuration (its decode section).

    Returns:
        decoded: images.npy, labels.npy and grid.png.
        preview: The grid, for the Kubeflow UI.
    """
    import base64
    from pathlib import Path

    from dpsynth import steps
    from dpsynth.config import load_config
    from dpsynth.step_graph import step

    out = steps.decode(synthetic.path, decoded.path,
                       **step("decode").kwargs(load_config(config.path)))
    if out is None:
        Path(preview.path).write_text("<p>This encoder has no decoder.</p>")
        return
    data = base64.b64encode((out / "grid.png").read_bytes()).decode()
    Path(preview.path).write_text(
        f"<h3>Decoded DP synthetic samples</h3><img src='data:image/png;base64,{data}'>")


# -------------------------------------------------------------------------- evaluate
@dsl.component(base_image=CPU, install_kfp_package=False)
def evaluate(synthetic: Input[Dataset], test: Input[Dataset],
             train: Input[list[Dataset]], privacy_plan: Input[Artifact],
             config: Input[Artifact], run_id: str, evaluation: Output[Artifact],
             metrics: Output[Metrics], classification: Output[ClassificationMetrics],
             report: Output[HTML], summary: Output[Markdown]):
    """MLP on synthetic data, scored on the real test set; metrics to the KFP UI and
    to the MLflow run that the plan step charged.

    Args:
        synthetic: The synthetic EmbeddingSet.
        test: The test EmbeddingSet.
        train: The training EmbeddingSet's parts (the non-private baseline).
        privacy_plan: The plan, for the report.
        config: The run configuration (its evaluate section).
        run_id: The MLflow run that plan opened.

    Returns:
        evaluation: metrics.json, plots and report.html.
        metrics: Accuracy, epsilon and delta for the Kubeflow UI.
        classification: The confusion matrix for the Kubeflow UI.
        report: The HTML report.
        summary: A Markdown summary.
    """
    import shutil
    from pathlib import Path

    from dpsynth import steps
    from dpsynth.config import load_config
    from dpsynth.ledger_charge import finish_run
    from dpsynth.tracking import Tracker
    from dpsynth_kfp.summary import summary_markdown

    cfg = load_config(config.path)
    out = Path(evaluation.path)
    m = steps.evaluate_run(synthetic.path, test.path, out, cfg,
                           train_dir=[t.path for t in train],
                           plan_path=privacy_plan.path, progress=False)
    for key in ("accuracy", "nonprivate_accuracy", "frechet_distance_to_test",
                "image_level_accuracy"):
        if m.get(key) is not None:
            metrics.log_metric(key, m[key])
    metrics.log_metric("epsilon", float(m["epsilon"]) if m["private"] else -1.0)
    metrics.log_metric("delta", m["delta"])
    classification.log_confusion_matrix(m["class_names"], m["confusion_matrix"])
    shutil.copyfile(out / "report.html", report.path)
    Path(summary.path).write_text(summary_markdown(m))
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment).open()
    tracker.log_artifact(run_id, out, "evaluation")
    finish_run(tracker, run_id, m, out / "metrics.json")
    if tracker.not_logged:
        print(f"not logged to MLflow ({tracker.error}): {tracker.not_logged}")


# ------------------------------------------------------------------ exit handler
@dsl.component(base_image=CPU, install_kfp_package=False)
def finalize(status: dsl.PipelineTaskFinalStatus, kfp_run_id: str, config_yaml: str,
             mlflow_uri: str, decode: bool, cleanup: Output[Artifact]) -> str:
    """The exit handler: after every task of the run, failed or not. When the run failed,
    mark the MLflow run FAILED, tag the step that failed and delete the run's private
    embeddings from the pipeline root.

    Args:
        status: The final status of the run's tasks (kfp fills it in).
        kfp_run_id: The Kubeflow run's id (plan tags its MLflow run with it).
        config_yaml: The pipeline parameter (where the MLflow store is).
        mlflow_uri: The pipeline parameter (the MLflow store; empty: the config's or
            MLFLOW_TRACKING_URI from the secret).
        decode: The pipeline parameter (whether decode ran).

    Returns:
        cleanup: What was done: the failed step, the deleted artifacts.
        Output: The failed step ("" when the run succeeded).
    """
    from dpsynth_kfp.exit_task import run

    return run(status=status, kfp_run_id=kfp_run_id, config_yaml=config_yaml,
               mlflow_uri=mlflow_uri, decode=decode, cleanup=cleanup)


#: The exit handler's component (not a step of the graph: it runs after them, always).
EXIT_COMPONENT = finalize
#: Steps the pipeline may run in parts (their component takes ``part`` and ``parts``),
#: and the component that joins the parts' outputs into the step's output.
JOINS: dict[str, BaseComponent] = {"synthesize": join_synthetic}
#: The inputs of a step run in parts; a replacement may leave them out (it runs whole).
PART_INPUTS = ("part", "parts")


def exit_component(images: Mapping[str, str] | None = None) -> BaseComponent:
    """The exit handler's component, its image re-pointed as the steps' are
    (:func:`_retarget`)."""
    return retargeted(EXIT_COMPONENT, images)


def retargeted(component: BaseComponent,
               images: Mapping[str, str] | None = None) -> BaseComponent:
    """A component outside the step graph (the exit handler's, promote), compiled and
    loaded back with its image re-pointed as the steps' are (:func:`_retarget`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SPEC_FILE
        compiler.Compiler().compile(component, str(path))
        return load_spec(path, images)


#: The built-in components, by step, in the step graph's order.
COMPONENTS: dict[str, BaseComponent] = {
    "plan": plan, "encode": encode, "dp_cluster": dp_cluster, "fit_gmm": fit_gmm,
    "synthesize": synthesize, "decode": decode, "evaluate": evaluate}
assert tuple(COMPONENTS) == STEP_NAMES, "one component per step of the graph, in order"


# ----------------------------------------------------------------------------- specs
def spec_path(step: str, root: str | Path = COMPONENTS_DIR) -> Path:
    """``<root>/<step>/component.yaml``."""
    return Path(root) / step / SPEC_FILE


def compile_components(root: str | Path = COMPONENTS_DIR) -> list[Path]:
    """Compile every built-in component to ``<root>/<step>/component.yaml``, and for each
    step that reads private data its release declaration, ``releases.yaml`` (none of its
    own: :mod:`dpsynth_kfp.declarations`)."""
    from dpsynth.step_graph import STEPS
    from dpsynth_kfp.declarations import write_builtin_declaration

    private = {s.name for s in STEPS if s.private}
    written = []
    for name, component in COMPONENTS.items():
        path = spec_path(name, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component, str(path))
        written.append(path)
        if name in private:
            written.append(write_builtin_declaration(name, path))
    return written


def _retarget(text: str, images: Mapping[str, str] | None = None) -> str:
    """The spec with the default dpsynth images re-pointed to ``images[kind]`` (a cluster
    settings file's), else ``image(kind)`` (the image env vars); any other image, e.g. a
    replacement's own, is kept."""
    wanted = {DEFAULT_IMAGES[kind]: (images or {}).get(kind) or image(kind)
              for kind in DEFAULT_IMAGES}
    if all(old == new for old, new in wanted.items()):
        return text
    docs = list(yaml.safe_load_all(text))
    for executor in docs[0].get("deploymentSpec", {}).get("executors", {}).values():
        container = executor.get("container", {})
        container["image"] = wanted.get(container.get("image"), container.get("image"))
    return yaml.safe_dump_all(docs, sort_keys=False)


def load_spec(path: str | Path, images: Mapping[str, str] | None = None) -> BaseComponent:
    """A component spec (``component.yaml``), its dpsynth images re-pointed as
    :func:`_retarget` says."""
    component = components.load_component_from_file(str(path))
    text = _retarget(component.component_yaml, images)
    return component if text == component.component_yaml else \
        components.load_component_from_text(text)


def load_step(step: str, root: str | Path = COMPONENTS_DIR,
              images: Mapping[str, str] | None = None) -> BaseComponent:
    """The component of ``step`` from its spec file. Without the file (an installed
    package, away from the repository's ``components/`` folder), the built-in the spec is
    compiled from."""
    path = spec_path(step, root)
    if not path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / SPEC_FILE
            compiler.Compiler().compile(COMPONENTS[step], str(path))
            return load_spec(path, images)
    return load_spec(path, images)
