"""The pipeline's plan task: :func:`plan`, a plain typed function (the plan component is
made from it in :mod:`dpsynth_kfp.components`), forwards its inputs and outputs to
:func:`run`.

It applies the run parameters to ``config_yaml`` as typed settings
(:func:`dpsynth_kfp.parameters.resolve`),
validates the configuration, builds the privacy plan, checks and charges the dataset's
budget in the ledger (:func:`dpsynth.ledger_charge.charge_run`, as ``dpsynth run`` does)
and writes the resolved configuration and the plan for the later tasks. A refusal fails the
pipeline here, before any encode task starts.

Before the charge it runs the pre-flight (:func:`check_reachable`): the data must be
reachable from the pods (folders, file lists, IDX and tar headers: metadata, never a
record's contents), so a run that cannot read its data costs nothing. The encoder check of
the pre-flight (build the encoder, encode one all-zero image) can be switched off with
``DPSYNTH_PLAN_CHECK_ENCODER=0`` (``ClusterSettings.plan_checks_encoder``) for encoders whose
weights only the GPU steps' model cache holds; the data is checked either way. The plan
itself loads no weights: it takes the encoder's dimension from the facts its plugin
declares (:func:`dpsynth.steps.encoder_facts`), so with the check off the pod never builds
the encoder (a plugin that declares no facts is the exception: it is built to learn it).
"""

# No `from __future__ import annotations`: kfp reads plan's annotations at runtime.
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from kfp.dsl import Artifact, Markdown, Output

from dpsynth.config import RunConfig
from dpsynth.ledger_charge import charge_run
from dpsynth_kfp.parameters import resolve

#: "0", "false" or "no" skips the pre-flight's encoder check in plan (the data is checked).
CHECK_ENCODER_ENV = "DPSYNTH_PLAN_CHECK_ENCODER"


def check_reachable(cfg: RunConfig, check_encoder: bool | None = None) -> None:
    """The pre-flight before the charge (:func:`dpsynth.preflight.preflight`, no output
    folder); without ``check_encoder`` (default: $DPSYNTH_PLAN_CHECK_ENCODER, else on) only
    the data source's splits. Raises :class:`dpsynth.preflight.PreflightError`."""
    from dpsynth.preflight import preflight

    if check_encoder is None:
        check_encoder = os.environ.get(CHECK_ENCODER_ENV, "1").strip().lower() not in (
            "0", "false", "no")
    preflight(cfg, None, data_only=not check_encoder)


def run(*, config_yaml: str, config: Any, privacy_plan: Any, ledger: Any,
        kfp_run_id: str = "", declared_releases: str = "", **parameters: Any) -> str:
    """Returns the MLflow run id that the evaluate task logs to. ``kfp_run_id`` (the
    Kubeflow run's id) only makes plan's cache key differ on every run.
    ``declared_releases``: what replacement components declared
    (:mod:`dpsynth_kfp.declarations`), planned and charged with the rest."""
    from dpsynth_kfp.declarations import from_json

    declared = from_json(declared_releases)
    cfg = resolve({"config_yaml": config_yaml, **parameters})
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
    # Nothing is charged for a run that cannot read its data.
    check_reachable(cfg)
    work = Path(tempfile.mkdtemp())
    charged = charge_run(cfg, work, declared=declared)
    if kfp_run_id:
        # The exit handler finds the MLflow run of a failed Kubeflow run by this tag.
        from mlflow.tracking import MlflowClient

        from dpsynth_kfp.exit_task import KFP_RUN_TAG

        MlflowClient(charged.tracker.uri).set_tag(charged.run_id, KFP_RUN_TAG, kfp_run_id)
    # Later steps log to the same store: pin the resolved URI into the config.
    resolved = cfg.to_yaml_dict()
    resolved["tracking"]["uri"] = charged.tracker.uri
    Path(config.path).write_text(yaml.safe_dump(resolved, sort_keys=False))
    shutil.copyfile(charged.plan_path, privacy_plan.path)
    budget = charged.budget.to_dict()
    Path(ledger.path).write_text(
        "# Privacy budget\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in budget.items())
        + (f"\n- **Kubeflow run**: {kfp_run_id}" if kfp_run_id else ""))
    return charged.run_id


def plan(
    config: Output[Artifact],
    privacy_plan: Output[Artifact],
    ledger: Output[Markdown],
    kfp_run_id: str,
    config_yaml: str,
    dataset: str,
    train_dir: str,
    test_dir: str,
    data_image_size: int,
    encoder: str,
    encoder_image_size: int,
    encode_allow_cpu: bool,
    epsilon: float,
    delta: float,
    components_per_class: int,
    n_samples: int,
    decode: bool,
    decode_allow_cpu: bool,
    mlflow_uri: str,
    dataset_id: str,
    noise_seed: int,
    extra_overrides: list,
    declared_releases: str = "",
) -> str:
    """Validate the run configuration, make the privacy plan and charge it to the
    dataset's budget. A refusal fails the pipeline here, before any encode task starts.

    The inputs are the pipeline's run parameters (:data:`dpsynth_kfp.parameters.
    PARAMETERS` describes each, from the run configuration's schema), applied over
    ``config_yaml`` with their types; ``kfp_run_id`` (the pipeline passes
    dsl.PIPELINE_JOB_ID_PLACEHOLDER) makes plan's cache key differ on every run;
    ``declared_releases`` are the DP releases that replacement components of private steps
    declare (JSON, fixed when the pipeline is compiled), planned and charged with the
    configuration's own.

    Returns:
        config: The validated configuration, the parameters applied (YAML).
        privacy_plan: privacy_plan.json: every noisy release and its noise.
        ledger: The budget check, for the Kubeflow UI.
        Output: The MLflow run id that the evaluate task logs to.
    """
    from dpsynth_kfp.plan_task import run

    return run(**locals())
