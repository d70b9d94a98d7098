"""The compiled Kubeflow pipeline and component specs: up to date, strictly valid, wired
as documented, assembled from the specs so that one file swaps a component."""

# No `from __future__ import annotations`: kfp reads the component annotations as types.
import re
import shutil
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from dpsynth.step_graph import STEP_NAMES, STEPS
from dpsynth_kfp.compile import (
    COMMITTED,
    PIPELINE_DOC,
    README,
    RESAMPLE_COMMITTED,
    compile_pipeline,
    compile_resample_pipeline,
    components_table,
    parameters_table,
)
from dpsynth_kfp.components import COMPONENTS_DIR, compile_components
from dpsynth_kfp.parameters import PARAMETERS, PLAN_PARAMETERS, PROMOTE_PARAMETERS
from dpsynth_kfp.pipeline import (
    DEFAULT_RESOURCES,
    EXIT_RESOURCES,
    PROMOTE_INPUTS,
    build_pipeline,
)


@pytest.fixture
def default_images(monkeypatch):
    monkeypatch.delenv("DPSYNTH_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("DPSYNTH_IMAGE_TAG", raising=False)
    monkeypatch.delenv("DPSYNTH_IMAGE_DIGEST_CPU", raising=False)
    monkeypatch.delenv("DPSYNTH_IMAGE_DIGEST_CUDA", raising=False)


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_committed_pipeline_is_what_the_code_compiles(tmp_path, default_images):
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert fresh.read_text() == COMMITTED.read_text(), (
        "pipelines/dpsynth_pipeline.yaml is stale: run `dpsynth pipeline compile`")


def test_committed_component_specs_are_what_the_code_compiles(tmp_path, default_images):
    """One spec per step of the graph, each equal to a fresh compile; the README table of
    inputs and outputs too."""
    assert sorted(p.parent.name for p in COMPONENTS_DIR.glob("*/component.yaml")) == \
        sorted(STEP_NAMES)
    for fresh in compile_components(tmp_path):  # the specs and the release declarations
        step = fresh.parent.name
        assert fresh.read_text() == (COMPONENTS_DIR / step / fresh.name).read_text(), (
            f"components/{step}/{fresh.name} is stale: run "
            "`dpsynth pipeline compile-components`")
    for doc, table in ((README, components_table()), (PIPELINE_DOC, parameters_table())):
        assert table in doc.read_text(), (
            f"the table in {doc.name} is stale: run `dpsynth pipeline compile-components`")


def _parsed():
    spec_doc, platform_doc = _docs(COMMITTED)
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())  # strict
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    k8s = {}
    for label, struct in platform.platforms["kubernetes"].deployment_spec.executors.items():
        k8s[label] = json_format.ParseDict(
            json_format.MessageToDict(struct),
            kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    return spec, k8s


def _dags(spec):
    yield "root", spec.root.dag
    for name, comp in spec.components.items():
        if comp.HasField("dag"):
            yield name, comp.dag


def _body(spec):
    """The tasks inside the exit handler: every step's task (the root holds the exit
    handler's DAG and the exit task)."""
    (dag,) = [d for _, d in _dags(spec) if "plan" in d.tasks]
    return dag.tasks


def test_every_reference_resolves():
    spec, k8s = _parsed()
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    for name, comp in spec.components.items():
        if comp.executor_label:
            assert comp.executor_label in executors, name
    for dag_name, dag in _dags(spec):
        for task_name, task in dag.tasks.items():
            assert task.component_ref.name in spec.components, (dag_name, task_name)
            for dep in task.dependent_tasks:
                assert dep in dag.tasks, (dag_name, task_name, dep)
            for art in task.inputs.artifacts.values():
                producer = art.task_output_artifact.producer_task
                if producer:
                    assert producer in dag.tasks, (dag_name, task_name, producer)
    assert set(k8s) <= set(executors)


def test_gpu_steps_request_a_gpu_node_cache_and_retries():
    spec, k8s = _parsed()
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    gpu = [label for label in executors if label.startswith(("exec-encode", "exec-decode"))]
    assert len(gpu) == 3  # train fan-out, test, decode
    for label in gpu:
        resources = executors[label]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert executors[label]["container"]["image"].endswith("-cuda")
        assert k8s[label].node_selector.labels["nvidia.com/gpu.present"] == "true"
        assert k8s[label].tolerations[0].key == "nvidia.com/gpu"
        assert "/cache" in [m.mount_path for m in k8s[label].pvc_mount]
    for label in ("exec-plan", "exec-evaluate"):
        assert k8s[label].secret_as_env[0].secret_name == "dpsynth-mlflow"
        assert executors[label]["container"]["image"].endswith("-cpu")
    tasks = {}
    for _, dag in _dags(spec):
        tasks.update(dag.tasks)
    assert tasks["encode"].retry_policy.max_retry_count == 2
    assert tasks["decode"].retry_policy.max_retry_count == 2


def _tasks(spec):
    tasks = {}
    for _, dag in _dags(spec):
        tasks.update({n: t for n, t in dag.tasks.items() if t.HasField("component_ref")})
    return tasks


def test_every_task_has_requests_limits_and_a_timeout():
    spec, k8s = _parsed()
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    steps = {s.name.replace("_", "-"): s.name for s in STEPS}
    steps["promote"] = "promote"  # the optional task after evaluate
    steps["join-synthetic"] = "synthesize"  # scheduled as the step whose parts it joins
    for label, executor in executors.items():
        name = label.removeprefix("exec-")
        step = steps.get(name) or steps.get(name.rsplit("-", 1)[0])
        want = DEFAULT_RESOURCES[step] if step else EXIT_RESOURCES
        res = executor["container"]["resources"]
        assert res["resourceCpuRequest"] == want.cpu_request, label
        assert res["resourceCpuLimit"] == want.cpu_limit, label
        assert res["resourceMemoryRequest"] == want.memory_request, label
        assert res["resourceMemoryLimit"] == want.memory_limit, label
        assert k8s[label].active_deadline_seconds == want.timeout_s, label


def test_every_idempotent_task_retries_and_plan_and_promote_never_do():
    """plan charges the budget once; promote's gate failure is deterministic (a Kubeflow
    retry registered the same candidate three times)."""
    spec, _ = _parsed()
    tasks = _tasks(spec)
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert {n for n, t in tasks.items()
            if spec.components[t.component_ref.name].executor_label in executors} >= \
        {s.name.replace("_", "-") for s in STEPS}
    for name, task in tasks.items():
        if spec.components[task.component_ref.name].executor_label not in executors:
            continue  # a DAG (the loop, the condition)
        if name in ("plan", "promote"):
            assert not task.HasField("retry_policy"), name
        else:
            assert task.retry_policy.max_retry_count == 2, name
            assert task.retry_policy.backoff_duration.seconds == 60, name


def test_plan_is_never_cached_even_when_the_client_enables_caching():
    """Caching is off on every task, and plan takes the run's id: a client that turns
    caching on for the whole run (create_run_from_pipeline_package(enable_caching=True))
    still finds no cache entry for plan, so the budget is charged on every run."""
    spec, _ = _parsed()
    for name, task in _tasks(spec).items():
        assert not task.caching_options.enable_cache, name
    plan = _body(spec)["plan"]
    run_id = plan.inputs.parameters["kfp_run_id"]
    assert run_id.runtime_value.constant.string_value == dsl.PIPELINE_JOB_ID_PLACEHOLDER


def test_fan_out_condition_and_plan_first():
    spec, _ = _parsed()
    root = _body(spec)
    # Each loop, by the one task in its body.
    loops = {next(iter(spec.components[t.component_ref.name].dag.tasks)): t
             for t in root.values() if t.HasField("parameter_iterator")}
    loop_keys = {id(t): key for key, t in root.items()}
    assert set(loops) == {"encode", "synthesize"}
    assert loops["encode"].parameter_iterator.items.raw == "[0, 1, 2, 3]"  # 4 encode parts
    # synthesize in 4 parts, at most 4 at once, joined by one task that reads them all
    synth = loops["synthesize"]
    assert synth.parameter_iterator.items.raw == "[0, 1, 2, 3]"
    assert synth.iterator_policy.parallelism_limit == 4
    join = root["join-synthetic"]
    assert join.inputs.artifacts["parts"].task_output_artifact.producer_task == \
        loop_keys[id(synth)]
    conditions = sorted(t.trigger_policy.condition for t in root.values()
                        if t.trigger_policy.condition)
    assert len(conditions) == 2  # decode and promote
    assert "decode" in conditions[0] and "promote" in conditions[1]
    # Nothing reads private data before the plan (budget check) finished: every encode
    # task takes the config artifact that only the plan task produces.
    for _, dag in _dags(spec):
        for name, task in dag.tasks.items():
            if task.component_ref.name.startswith("comp-encode"):
                config = task.inputs.artifacts["config"]
                source = (config.task_output_artifact.producer_task
                          or config.component_input_artifact)
                assert source in ("plan", "pipelinechannel--plan-config"), name
    params = spec.root.input_definitions.parameters
    for name in ("dataset", "encoder", "epsilon", "delta", "components_per_class",
                 "n_samples", "decode", "mlflow_uri", "train_dir"):
        assert name in params
    assert not any(t.caching_options.enable_cache for _, d in _dags(spec)
                   for t in d.tasks.values())


def test_the_run_form_shows_one_described_parameter_per_table_row():
    spec, _ = _parsed()
    params = spec.root.input_definitions.parameters
    assert sorted(params) == sorted(p.name for p in PARAMETERS)
    for p in PARAMETERS:
        assert params[p.name].description == p.description, p.name
    # The parameters go straight into plan: no task exists only to join override strings.
    root_components = {t.component_ref.name for t in spec.root.dag.tasks.values()}
    assert "comp-parameters" not in root_components
    plan_inputs = _body(spec)["plan"].inputs.parameters
    assert {name: i.component_input_parameter.removeprefix("pipelinechannel--")
            for name, i in plan_inputs.items()
            if name not in ("kfp_run_id", "declared_releases")} == \
        {p.name: p.name for p in PLAN_PARAMETERS}
    # What replacement components declare is a constant of the compiled pipeline.
    assert plan_inputs["declared_releases"].runtime_value.constant.string_value == "[]"


def test_the_pipeline_has_one_task_per_step_of_the_graph():
    spec, k8s = _parsed()
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    names = {key for _, dag in _dags(spec) for key in dag.tasks}
    assert {n.replace("_", "-") for n in STEP_NAMES} <= names
    cuda = {s.name.replace("_", "-") for s in STEPS if s.device == "cuda"}
    for label, executor in executors.items():
        step = label.removeprefix("exec-").rstrip("-0123456789")
        assert executor["container"]["image"].endswith("-cuda" if step in cuda else "-cpu")
    secret = {f"exec-{s.name.replace('_', '-')}" for s in STEPS if s.tracking}
    secret.add("exec-finalize")  # the exit handler marks the MLflow run
    secret.add("exec-promote")  # the registry is MLflow's
    assert {label for label, cfg in k8s.items() if cfg.secret_as_env} == secret


def test_component_replacement_must_name_a_step():
    with pytest.raises(ValueError, match="unknown steps"):
        build_pipeline(components={"encoder": object()})


@dsl.component(base_image="registry.example.org/theirs/synth:1")
def fixed_synthesize(mixture: Input[Model], config: Input[Artifact],
                     synthetic: Output[Dataset]):
    """A replacement that takes and writes what the built-in does."""
    from dpsynth import steps

    steps.synthesize(mixture.path, synthetic.path, n=100)


@dsl.component(base_image="registry.example.org/theirs/synth:1")
def misfit_synthesize(mixture: Input[Model], seed: int, samples: Output[Dataset]):
    """Does not take config, needs a seed the pipeline does not pass, writes no synthetic."""


def _executor_images(path) -> dict[str, str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {label: e["container"]["image"]
            for label, e in spec["deploymentSpec"]["executors"].items()}


def test_replacing_one_spec_file_swaps_the_component(tmp_path, default_images):
    """A copy of components/ with synthesize/component.yaml replaced by a spec built
    outside the package: the pipeline is assembled with it, its image kept."""
    folder = tmp_path / "components"
    shutil.copytree(COMPONENTS_DIR, folder)
    compiler.Compiler().compile(fixed_synthesize, str(folder / "synthesize" / "component.yaml"))
    package = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(components_dir=folder), str(package))
    images = _executor_images(package)
    assert images["exec-synthesize"] == "registry.example.org/theirs/synth:1"
    assert images["exec-fit-gmm"] == "ghcr.io/dpsynth/dpsynth:0.1.0-cpu"
    assert "n=100" in package.read_text()
    # The same through the compile option, leaving the folder as it is.
    spec = tmp_path / "theirs.yaml"
    compiler.Compiler().compile(fixed_synthesize, str(spec))
    by_option = compile_pipeline(tmp_path / "q.yaml", components={"synthesize": spec})
    assert by_option.read_text() == package.read_text()


def test_a_replacement_that_does_not_fit_is_refused_naming_the_contract(tmp_path):
    spec = tmp_path / "misfit.yaml"
    compiler.Compiler().compile(misfit_synthesize, str(spec))
    with pytest.raises(ValueError, match="synthesize") as info:
        build_pipeline(components={"synthesize": spec})
    message = str(info.value)
    assert "does not take the inputs ['config']" in message
    assert "requires inputs the pipeline does not pass: ['seed']" in message
    assert "does not write the outputs ['synthetic']" in message


def _data_mounts(path: Path) -> dict[str, dict]:
    """Executor label -> its /data mount."""
    platform = _docs(path)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {label: m for label, cfg in platform.items() for m in cfg.get("pvcMount", [])
            if m["mountPath"] == "/data"}


def test_the_data_pvc_is_a_run_parameter_mounted_on_plan_and_encode_only(
        tmp_path, default_images):
    """The claim holding the private data is picked in the run form (parameter
    ``data_pvc``), not compiled in; only the steps that read the data mount it."""
    from dpsynth_kfp.pipeline import ClusterSettings

    path = compile_pipeline(tmp_path / "p.yaml", settings=ClusterSettings(
        plan_checks_encoder=False))
    mounts = _data_mounts(path)
    assert set(mounts) == {"exec-plan", "exec-encode", "exec-encode-2"}
    for mount in mounts.values():
        assert mount["pvcNameParameter"] == {
            "componentInputParameter": "pipelinechannel--data_pvc"}
    spec = _docs(path)[0]
    assert spec["root"]["inputDefinitions"]["parameters"]["data_pvc"]["defaultValue"] == \
        "dpsynth-data"
    env = spec["deploymentSpec"]["executors"]["exec-plan"]["container"]["env"]
    assert {"name": "DPSYNTH_PLAN_CHECK_ENCODER", "value": "0"} in env
    # The committed pipeline mounts the parameter's claim too, and checks the encoder in
    # plan; a pipeline compiled without a data volume mounts nothing at /data.
    assert set(_data_mounts(COMMITTED)) == set(mounts)
    assert "DPSYNTH_PLAN_CHECK_ENCODER" not in str(_docs(COMMITTED)[0])
    bare = compile_pipeline(tmp_path / "bare.yaml", settings=ClusterSettings(
        mount_data=False))
    assert _data_mounts(bare) == {}


def test_the_exit_handler_wraps_every_step_and_takes_no_task_output():
    """dsl.ExitHandler: one exit task (finalize) at the root, run after the handler's DAG
    (every step, plan included) whatever its state, with the DAG's final status; kfp lets
    it depend on no task, so it takes pipeline parameters and the run id only."""
    spec, _ = _parsed()
    root = spec.root.dag.tasks
    assert set(root) == {"exit-handler-1", "finalize"}
    exit_task = root["finalize"]
    assert exit_task.trigger_policy.strategy == \
        pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED
    assert list(exit_task.dependent_tasks) == ["exit-handler-1"]
    status = exit_task.inputs.parameters["status"].task_final_status
    assert status.producer_task == "exit-handler-1"
    assert exit_task.inputs.parameters["kfp_run_id"].runtime_value.constant.string_value == \
        dsl.PIPELINE_JOB_ID_PLACEHOLDER
    assert not exit_task.inputs.artifacts
    inside = {n for name, d in _dags(spec) if name != "root" for n in d.tasks}
    assert {s.name.replace("_", "-") for s in STEPS} <= inside


def test_exit_task_finds_the_failed_step_and_deletes_only_embeddings(tmp_path):
    from dpsynth_kfp import exit_task

    run = tmp_path / "dpsynth-2026"
    for rel in ("plan/config", "for-loop-2/iteration-0/encode/embeddings/shard-0.npz",
                "encode-2/embeddings/shard-0.npz", "dp-cluster/clusters/arrays.npz",
                "fit-gmm/other", "finalize/cleanup"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("x")
    own = str(run / "finalize" / "cleanup")
    assert exit_task.run_root(own) == str(run)
    assert exit_task.run_root("s3://b/v2/artifacts/dpsynth/abc-123/finalize/9/cleanup",
                              "abc-123") == "s3://b/v2/artifacts/dpsynth/abc-123"
    paths = list(exit_task._walk(str(run)))
    assert exit_task.failed_step(paths, decode_enabled=True) == "fit_gmm"
    deleted = exit_task.delete_private(str(run))
    assert sorted(deleted) == ["encode-2/embeddings",
                               "for-loop-2/iteration-0/encode/embeddings"]
    assert not list(run.rglob("embeddings"))
    assert (run / "dp-cluster" / "clusters" / "arrays.npz").is_file()


def test_the_exit_task_gets_the_pipeline_roots_credentials_and_endpoint():
    """The exit handler deletes from KFP's MinIO pipeline root: it reads KFP's own
    MinIO secret (optional, as AWS keys) and the MinIO endpoint; no other task does."""
    spec, k8s = _parsed()
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    with_root_secret = {label for label, cfg in k8s.items()
                        if any(s.secret_name == "mlpipeline-minio-artifact"
                               for s in cfg.secret_as_env)}
    assert with_root_secret == {"exec-finalize"}
    (secret,) = [s for s in k8s["exec-finalize"].secret_as_env
                 if s.secret_name == "mlpipeline-minio-artifact"]
    assert {m.secret_key: m.env_var for m in secret.key_to_env} == {
        "accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}
    assert secret.optional
    env = {e["name"]: e["value"] for e in executors["exec-finalize"]["container"]["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio-service.kubeflow:9000"


def test_exit_task_deletes_the_embeddings_from_a_minio_pipeline_root(monkeypatch):
    """KFP's default pipeline root is minio://bucket/...: the exit handler lists and
    deletes there through S3's protocol (a loopback S3 server stands in for MinIO)."""
    import boto3
    from mlflow_server import free_port
    from moto.server import ThreadedMotoServer

    from dpsynth_kfp import exit_task

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for var, value in (("MLFLOW_S3_ENDPOINT_URL", endpoint),
                           ("AWS_ACCESS_KEY_ID", "minio"), ("AWS_SECRET_ACCESS_KEY", "minio123"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(var, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="mlpipeline")
        run = "v2/artifacts/dpsynth/run-7"
        keys = [f"{run}/encode/11/embeddings/shard-00000.npz",
                f"{run}/encode/11/embeddings/manifest.json",
                f"{run}/encode-2/12/embeddings/shard-00000.npz",
                f"{run}/dp-cluster/13/clusters/arrays.npz",
                f"{run}/plan/10/config",
                "v2/artifacts/dpsynth/run-8/encode/1/embeddings/shard-00000.npz"]
        for key in keys:
            s3.put_object(Bucket="mlpipeline", Key=key, Body=b"x")
        root = exit_task.run_root(f"minio://mlpipeline/{run}/finalize/14/cleanup", "run-7")
        assert root == f"minio://mlpipeline/{run}"
        deleted = exit_task.delete_private(root)
        assert sorted(deleted) == ["encode-2/12/embeddings", "encode/11/embeddings"]
        left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="mlpipeline")["Contents"])
        # The run's other outputs and another run's embeddings stay.
        assert left == sorted([keys[3], keys[4], keys[5]])
    finally:
        server.stop()


def test_promote_runs_after_evaluate_only_when_its_parameter_is_true():
    """promote: inside the exit handler, in a condition on the ``promote`` run parameter
    (false by default), reading evaluate's output (so after it), with the gates and the
    tracking URI from the run parameters; retried, not cached, with the MLflow secret."""
    spec, k8s = _parsed()
    params = spec.root.input_definitions.parameters
    assert params["promote"].default_value.bool_value is False
    (condition,) = [t for t in _body(spec).values() if "promote" in t.trigger_policy.condition]
    assert condition.trigger_policy.condition == \
        "inputs.parameter_values['pipelinechannel--promote'] == true"
    dag = spec.components[condition.component_ref.name].dag
    task = dag.tasks["promote"]
    assert "evaluate" in condition.dependent_tasks
    artifacts = task.inputs.artifacts
    assert set(artifacts) == set(PROMOTE_INPUTS) - {"run_id"}  # a parameter: plan's
    assert artifacts["evaluation"].component_input_artifact == \
        "pipelinechannel--evaluate-evaluation"
    inputs = task.inputs.parameters
    for p in PROMOTE_PARAMETERS:
        if p.name != "promote":
            assert inputs[p.name].component_input_parameter == \
                f"pipelinechannel--{p.name}"
    assert inputs["tracking_uri"].component_input_parameter == "pipelinechannel--mlflow_uri"
    assert inputs["run_id"].component_input_parameter == "pipelinechannel--plan-Output"
    assert not task.caching_options.enable_cache
    assert not task.HasField("retry_policy")  # deterministic gates: never retried
    assert k8s["exec-promote"].secret_as_env


def test_the_resample_pipeline_is_committed_and_one_secret_task(tmp_path, default_images):
    """pipelines/dpsynth_resample.yaml: a fresh compile; one task, resample, with the
    run parameters, the MLflow secret, requests/limits/timeout, no retry (it registers a
    version) and no cache."""
    fresh = compile_resample_pipeline(tmp_path / "r.yaml")
    assert fresh.read_text() == RESAMPLE_COMMITTED.read_text(), (
        "pipelines/dpsynth_resample.yaml is stale: run `dpsynth pipeline compile`")
    spec_doc, platform_doc = _docs(RESAMPLE_COMMITTED)
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())  # strict
    assert set(spec.root.dag.tasks) == {"resample"}
    task = spec.root.dag.tasks["resample"]
    assert not task.caching_options.enable_cache
    assert not task.HasField("retry_policy")
    params = spec.root.input_definitions.parameters
    assert set(params) == {"dataset_id", "n_samples", "mlflow_uri", "alias", "promote"}
    assert all(params[name].description for name in params)
    assert params["promote"].default_value.bool_value is False
    executor = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-resample"]
    assert executor["secretAsEnv"]
    assert int(executor["activeDeadlineSeconds"]) == DEFAULT_RESOURCES["resample"].timeout_s
    assert spec_doc["deploymentSpec"]["executors"]["exec-resample"]["container"][
        "image"].endswith("-cpu")


def test_the_kubeflow_ui_shows_readable_names_for_every_task_and_loop():
    """Display names instead of kfp's encode-2, for-loop-3, condition-6."""
    spec, _ = _parsed()
    for dag_name, dag in _dags(spec):
        for key, task in dag.tasks.items():
            shown = task.task_info.name
            assert not re.fullmatch(r"(for-loop|condition|exit-handler)-\d+", shown), \
                (dag_name, key)
            assert not re.fullmatch(r"[a-z-]+-\d+", shown), (dag_name, key, shown)
    shown = {t.task_info.name for _, dag in _dags(spec) for t in dag.tasks.values()}
    assert {"Encode train split (one part)", "Encode test split", "DP clustering",
            "encode-train-parts", "synthesize-parts", "promote-enabled"} <= shown


def test_private_boundary_pods_are_labelled_and_every_task_runs_as_non_root():
    """The label the namespace's default-deny egress policy selects
    (manifests/base/networkpolicy.yaml), on exactly the steps inside the private
    boundary; every task pod runs as the images' non-root user (Pod Security
    "restricted")."""
    from dpsynth_kfp.pipeline import IMAGE_UID, PRIVATE_BOUNDARY_LABEL, PRIVATE_STEPS

    _, k8s = _parsed()
    key, value = PRIVATE_BOUNDARY_LABEL
    for label, config in k8s.items():
        step = label.removeprefix("exec-").rstrip("-0123456789").replace("-", "_")
        labels = dict(config.pod_metadata.labels)
        assert (labels.get(key) == value) == (step in PRIVATE_STEPS), label
        assert config.security_context.run_as_non_root, label
        assert config.security_context.run_as_user == IMAGE_UID, label
    assert {"plan", "encode", "dp_cluster", "fit_gmm", "evaluate"} == PRIVATE_STEPS
    manifests = Path(__file__).resolve().parents[1] / "manifests"
    policy = (manifests / "base" / "networkpolicy.yaml").read_text()
    assert f"{key}: \"{value}\"" in policy
