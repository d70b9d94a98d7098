"""One Kubeflow Pipelines (v2) component per step: thin, typed bindings of artifacts to
``dpsynth.steps``. No logic lives here beyond binding; everything a component does is a
call into the library, so the in-process ``dpsynth run`` and the pipeline share one code
path (see docs/pipeline.md).

Components run in the images built from ``components/Dockerfile.cpu`` and
``components/Dockerfile.cuda``; ``DPSYNTH_IMAGE_REGISTRY`` and ``DPSYNTH_IMAGE_TAG`` name
them at compile time (one registry and tag for all).

Lightweight components ship their function source to the pod, so every import is inside
the function body.
"""

import os

from kfp import dsl
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

DEFAULT_REGISTRY = "ghcr.io/dpsynth"
DEFAULT_TAG = "0.1.0"


def image(kind: str) -> str:
    """The container image of ``kind`` ("cpu" or "cuda") from the configured registry/tag."""
    registry = os.environ.get("DPSYNTH_IMAGE_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    tag = os.environ.get("DPSYNTH_IMAGE_TAG", DEFAULT_TAG)
    return f"{registry}/dpsynth:{tag}-{kind}"


def define_components() -> dict[str, object]:
    """Build the components now (so the image env vars are read at compile time)."""
    cpu, cuda = image("cpu"), image("cuda")

    @dsl.component(base_image=cpu)
    def plan(config_yaml: str, overrides: list, config: Output[Artifact],
             privacy_plan: Output[Artifact], ledger: Output[Markdown]) -> str:
        """Validate the configuration, build the privacy plan and check and charge the
        dataset's budget in the ledger. Reads no private data; a refusal fails the
        pipeline here, before any encode task starts. Returns the MLflow run id."""
        import os
        import shutil
        import tempfile
        from pathlib import Path

        import yaml

        from dpsynth.config import load_config_text
        from dpsynth.runner import charge_run

        cfg = load_config_text(config_yaml, list(overrides))
        if not (cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")):
            raise ValueError("no MLflow tracking store: set the pipeline parameter mlflow_uri "
                             "or the dpsynth-mlflow secret. The privacy budget ledger needs a "
                             "store that every run of this pipeline shares.")
        if not (cfg.privacy.ledger_uri or os.environ.get("DPSYNTH_LEDGER_URI")):
            # The default ledger is a file in the user's home: in a pod it would vanish
            # with the pod, and every run would find a fresh budget.
            raise ValueError("no privacy budget ledger: set DPSYNTH_LEDGER_URI in the "
                             "dpsynth-mlflow secret (or privacy.ledger_uri in the config) to "
                             "the PostgreSQL ledger that every run shares (see README).")
        work = Path(tempfile.mkdtemp())
        charged = charge_run(cfg, work)
        # Later steps log to the same store: pin the resolved URI into the config.
        resolved = cfg.to_yaml_dict()
        resolved["tracking"]["uri"] = charged.tracker.uri
        Path(config.path).write_text(yaml.safe_dump(resolved, sort_keys=False))
        shutil.copyfile(charged.plan_path, privacy_plan.path)
        budget = charged.budget.to_dict()
        Path(ledger.path).write_text(
            "# Privacy budget\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in budget.items()))
        return charged.run_id

    @dsl.component(base_image=cuda)
    def encode(config: Input[Artifact], split: str, part: int, parts: int,
               embeddings: Output[Dataset]):
        """Encode part ``part`` of ``parts`` of a split into an EmbeddingSet."""
        from pathlib import Path

        from dpsynth import steps
        from dpsynth.config import load_config

        es = steps.encode(load_config(config.path), split, Path(embeddings.path), part=part,
                          parts=parts, progress=False)
        embeddings.metadata.update(encoder=es.encoder, dim=es.dim, part=part, parts=parts)

    @dsl.component(base_image=cpu)
    def dp_cluster(embeddings: Input[list[Dataset]], privacy_plan: Input[Artifact],
                   clusters: Output[Model]):
        """DP subspace, class counts and sums, DP k-means centres (DP releases)."""
        from dpsynth import steps

        steps.dp_cluster([e.path for e in embeddings], privacy_plan.path, clusters.path)

    @dsl.component(base_image=cpu)
    def fit_gmm(embeddings: Input[list[Dataset]], clusters: Input[Model],
                privacy_plan: Input[Artifact], mixture: Output[Model]):
        """DP mixture release given the clusters."""
        from dpsynth import steps

        steps.fit_gmm([e.path for e in embeddings], clusters.path, privacy_plan.path,
                      mixture.path)

    @dsl.component(base_image=cpu)
    def synthesize(mixture: Input[Model], config: Input[Artifact], synthetic: Output[Dataset]):
        """Sample the synthetic EmbeddingSet (post-processing)."""
        from dpsynth import steps
        from dpsynth.config import load_config

        s = load_config(config.path).synthesize
        es = steps.synthesize(mixture.path, synthetic.path, n=s.n,
                              class_balance=s.class_balance, random_state=s.random_state,
                              shard_rows=s.shard_rows)
        synthetic.metadata.update(count=es.count, **es.manifest["provenance"])

    @dsl.component(base_image=cuda)
    def decode(synthetic: Input[Dataset], config: Input[Artifact], decoded: Output[Artifact],
               preview: Output[HTML]):
        """Decode synthetic samples per class; an HTML preview of the grid for the UI."""
        import base64
        from pathlib import Path

        from dpsynth import steps
        from dpsynth.config import load_config

        d = load_config(config.path).decode
        out = steps.decode(synthetic.path, decoded.path, per_class=d.per_class,
                           decoder=d.decoder, options=d.options)
        if out is None:
            Path(preview.path).write_text("<p>This encoder has no decoder.</p>")
            return
        data = base64.b64encode((out / "grid.png").read_bytes()).decode()
        Path(preview.path).write_text(
            f"<h3>Decoded DP synthetic samples</h3><img src='data:image/png;base64,{data}'>")

    @dsl.component(base_image=cpu)
    def parameters(dataset: str, train_dir: str, test_dir: str, image_size: int,
                   encoder: str, epsilon: float, delta: float, components_per_class: int,
                   n_samples: int, decode: bool, mlflow_uri: str, dataset_id: str,
                   noise_seed: int, extra_overrides: list) -> list:
        """The pipeline parameters as ``key=value`` config overrides (pure data). They are
        applied after ``config_yaml``, so a parameter wins over the same key there."""
        out = [f"data.source={dataset}", f"encoder.name={encoder}",
               f"privacy.epsilon={epsilon}", f"privacy.delta={delta}",
               f"model.components_per_class={components_per_class}",
               f"synthesize.n={n_samples}", f"decode.enabled={str(decode).lower()}"]
        if train_dir:
            out += [f"data.train_dir={train_dir}", f"data.test_dir={test_dir}"]
        if image_size:
            out.append(f"data.image_size={image_size}")
        if mlflow_uri:
            out.append(f"tracking.uri={mlflow_uri}")
        if dataset_id:
            out.append(f"data.dataset_id={dataset_id}")
        if noise_seed >= 0:
            out.append(f"privacy.noise_seed={noise_seed}")
        return out + list(extra_overrides)

    @dsl.component(base_image=cpu)
    def evaluate(synthetic: Input[Dataset], test: Input[Dataset],
                 train: Input[list[Dataset]], privacy_plan: Input[Artifact],
                 config: Input[Artifact], run_id: str, evaluation: Output[Artifact],
                 metrics: Output[Metrics], classification: Output[ClassificationMetrics],
                 report: Output[HTML], summary: Output[Markdown]):
        """MLP on synthetic data, scored on the real test set; metrics to the KFP UI and
        to the MLflow run that the plan step charged."""
        import shutil
        from pathlib import Path

        from dpsynth import steps
        from dpsynth.config import load_config
        from dpsynth.runner import finish_run
        from dpsynth.tracking import Tracker

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
        lines = [f"- **accuracy (synthetic-trained MLP)**: {100 * m['accuracy']:.1f}%",
                 f"- **guarantee**: (eps={m['epsilon']}, delta={m['delta']})"
                 + ("" if m["private"] else " NOT PRIVATE")]
        if m.get("nonprivate_accuracy") is not None:
            lines.append(f"- **non-private ceiling**: {100 * m['nonprivate_accuracy']:.1f}% "
                         "(not covered by the guarantee)")
        Path(summary.path).write_text("# dpsynth\n\n" + "\n".join(lines) + "\n")
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment).open()
        tracker.log_artifact(run_id, out, "evaluation")
        finish_run(tracker, run_id, m, out / "metrics.json")
        if tracker.not_logged:
            print(f"not logged to MLflow ({tracker.error}): {tracker.not_logged}")

    return {"parameters": parameters, "plan": plan, "encode": encode,
            "dp_cluster": dp_cluster, "fit_gmm": fit_gmm, "synthesize": synthesize,
            "decode": decode, "evaluate": evaluate}
