"""The pipeline's production-refresh task: ``promote`` (after evaluate) and ``resample``
(the resample-only mode), thin bindings of :mod:`dpsynth.promote`.

The pipeline (:func:`dpsynth_kfp.pipeline.build_pipeline`) binds ``promote`` after
evaluate inside ``dsl.If(promote == True)`` (the run parameter, off by default), the gates
from the run parameters; :func:`dpsynth_kfp.pipeline.build_resample_pipeline` is the
one-task pipeline of ``resample``. The binding is::

    promote(mixture=fit_gmm_task.outputs["mixture"],
            synthetic=synthesize_task.outputs["synthetic"],
            evaluation=evaluate_task.outputs["evaluation"],
            privacy_plan=plan_task.outputs["privacy_plan"],
            config=plan_task.outputs["config"], run_id=plan_task.outputs["run_id"],
            tracking_uri=..., max_epsilon=..., ...)

A failed gate fails the task (the message names the gate); the alias ``production`` stays
where it was. Both tasks are post-processing of DP releases and read no private data. They
are never retried by Kubeflow (:data:`dpsynth_kfp.pipeline.NOT_RETRIED`): a gate failure
is deterministic, and MLflow's client already retries a transient HTTP error. A promote
run again for the same release returns the version it registered the first time.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from dpsynth_kfp.components import CPU


@dsl.component(base_image=CPU, install_kfp_package=False)
def promote(mixture: Input[Model], synthetic: Input[Dataset], evaluation: Input[Artifact],
            privacy_plan: Input[Artifact], config: Input[Artifact], run_id: str,
            tracking_uri: str, release: Output[Artifact], require_private: bool = True,
            max_epsilon: float = 10.0, max_delta: float = 1e-5, min_accuracy: float = 0.1,
            accuracy_tolerance: float = 0.02, frechet_tolerance: float = 0.05):
    """Register the run's synthetic set and synthesizer in MLflow and, if every gate
    passes, move the alias production to the new version.

    Args:
        mixture: fit_gmm's output.
        synthetic: The synthetic EmbeddingSet.
        evaluation: evaluate's output (its metrics.json feeds the gates).
        privacy_plan: The plan.
        config: The run configuration (its dataset id names the model).
        run_id: The MLflow run that plan opened (recorded as the version's source).
        tracking_uri: MLflow tracking and registry URI.
        require_private: Gate: DP and noise not seeded.
        max_epsilon: Gate: epsilon ceiling.
        max_delta: Gate: delta ceiling.
        min_accuracy: Gate: accuracy floor.
        accuracy_tolerance: Gate: accuracy may be this much below production's.
        frechet_tolerance: Gate: Fréchet distance may be this much above production's.

    Returns:
        release: release.json (model name, version, aliases, tags).
    """
    import json
    from pathlib import Path

    from dpsynth.promote import Gates, promote_artifacts

    result = promote_artifacts(
        mixture=Path(mixture.path), synthetic=Path(synthetic.path),
        metrics=Path(evaluation.path) / "metrics.json", privacy_plan=Path(privacy_plan.path),
        config=Path(config.path), source_run_id=run_id, tracking_uri=tracking_uri,
        gates=Gates(require_private=require_private, max_epsilon=max_epsilon,
                    max_delta=max_delta, min_accuracy=min_accuracy,
                    accuracy_tolerance=accuracy_tolerance,
                    frechet_tolerance=frechet_tolerance))
    Path(release.path).write_text(json.dumps(result.to_dict(), indent=2))
    release.metadata.update(model=result.model_name, version=result.version)


@dsl.component(base_image=CPU, install_kfp_package=False)
def resample(dataset_id: str, n: int, tracking_uri: str, synthetic: Output[Dataset],
             alias: str = "production", promote_version: bool = False):
    """Resample-only refresh: new records from the promoted mixture, registered as a new
    version (post-processing: no budget, no private data).

    Args:
        dataset_id: The dataset id (the model is dpsynth-<dataset_id>).
        n: Number of records.
        tracking_uri: MLflow tracking and registry URI.
        alias: The version to resample.
        promote_version: Promote the new version through the default gates.

    Returns:
        synthetic: The new EmbeddingSet and its metadata.
    """
    from pathlib import Path

    from dpsynth.promote import Gates
    from dpsynth.promote import resample as resample_release

    resample_release(dataset_id, n, Path(synthetic.path), alias=alias,
                     tracking_uri=tracking_uri,
                     promote_gates=Gates() if promote_version else None)
