"""The compiled Kubeflow pipeline: up to date, strictly valid, wired as documented."""

from __future__ import annotations

import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from dpsynth_kfp.compile import COMMITTED, compile_pipeline
from dpsynth_kfp.pipeline import build_pipeline


def _docs(path):
    return list(yaml.safe_load_all(path.read_text()))


def test_committed_pipeline_is_what_the_code_compiles(tmp_path, monkeypatch):
    monkeypatch.delenv("DPSYNTH_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("DPSYNTH_IMAGE_TAG", raising=False)
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert fresh.read_text() == COMMITTED.read_text(), (
        "pipelines/dpsynth_pipeline.yaml is stale: run `dpsynth pipeline compile`")


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
        assert k8s[label].pvc_mount[0].mount_path == "/cache"
    for label in ("exec-plan", "exec-evaluate"):
        assert k8s[label].secret_as_env[0].secret_name == "dpsynth-mlflow"
        assert executors[label]["container"]["image"].endswith("-cpu")
    tasks = {}
    for _, dag in _dags(spec):
        tasks.update(dag.tasks)
    assert tasks["encode"].retry_policy.max_retry_count == 2
    assert tasks["decode"].retry_policy.max_retry_count == 2
    assert not tasks["dp-cluster"].HasField("retry_policy")


def test_fan_out_condition_and_plan_first():
    spec, _ = _parsed()
    root = spec.root.dag.tasks
    loops = [t for t in root.values() if t.HasField("parameter_iterator")]
    assert len(loops) == 1
    assert loops[0].parameter_iterator.items.raw == "[0, 1, 2, 3]"  # 4 encode parts
    conditions = [t for t in root.values() if t.trigger_policy.condition]
    assert len(conditions) == 1 and "decode" in conditions[0].trigger_policy.condition
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


def test_component_replacement_must_name_a_step():
    import pytest

    with pytest.raises(ValueError, match="unknown steps"):
        build_pipeline(components={"encoder": object()})
