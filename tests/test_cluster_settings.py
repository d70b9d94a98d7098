"""Cluster settings per overlay (issue 23, defect 1): each overlay's
``cluster-settings.yaml`` compiles to a pipeline whose GPU steps select the nodes that
overlay's manifests select, rendered by the real ``kubectl kustomize``."""

from pathlib import Path

import pytest
import yaml
from kubectl_kustomize import find_kubectl, render
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth_kfp.cluster_settings import ClusterSettingsError, load_cluster_settings
from dpsynth_kfp.compile import compile_pipeline, compile_resample_pipeline

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(p.parent.name for p in (ROOT / "manifests" / "overlays").glob(
    "*/kustomization.yaml"))
DIGEST = "sha256:" + "ab" * 32
IMAGES = {"cpu": f"registry.example.org/dpsynth@{DIGEST}",
          "cuda": f"registry.example.org/dpsynth@{'sha256:' + 'cd' * 32}"}
#: The Job of the manifests that runs on the overlay's GPU nodes (it seeds the model cache).
GPU_JOB = "dpsynth-seed-model-cache"

needs_kubectl = pytest.mark.skipif(find_kubectl() is None,
                                   reason="kubectl is not installed (scripts/setup.sh "
                                   "installs it where a registry offers it)")


def settings_file(overlay: str) -> Path:
    return ROOT / "manifests" / "overlays" / overlay / "cluster-settings.yaml"


def rendered(overlay: str) -> list[dict]:
    return render(ROOT / "manifests" / "overlays" / overlay)


def executors(package: Path) -> tuple[dict, dict]:
    """(container executors, their Kubernetes platform config) of a compiled package."""
    spec, platform = list(yaml.safe_load_all(package.read_text()))
    return (spec["deploymentSpec"]["executors"],
            platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"])


def gpu_executors(package: Path) -> dict[str, dict]:
    containers, k8s = executors(package)
    gpu = {label: k8s.get(label, {}) for label, ex in containers.items()
           if ex.get("container", {}).get("resources", {}).get("accelerator")}
    assert gpu, "the pipeline has GPU steps"
    return gpu


def test_every_overlay_has_cluster_settings():
    assert OVERLAYS == ["dev", "prod"]
    for overlay in OVERLAYS:
        assert settings_file(overlay).is_file(), overlay


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_compiles_to_a_pipeline_that_selects_its_own_gpu_nodes(overlay,
                                                                            tmp_path):
    """The GPU steps' node selector is the one the overlay's GPU Job uses (the labels of
    its node pool), and they tolerate every taint the Job tolerates."""
    objects = rendered(overlay)
    (job,) = [o for o in objects if o["kind"] == "Job" and o["metadata"]["name"] == GPU_JOB]
    pod = job["spec"]["template"]["spec"]
    settings = load_cluster_settings(settings_file(overlay), IMAGES)
    package = compile_pipeline(tmp_path / "p.yaml", settings=settings)
    for label, k8s in gpu_executors(package).items():
        assert k8s["nodeSelector"]["labels"] == pod["nodeSelector"], (overlay, label)
        for toleration in pod["tolerations"]:
            assert toleration in k8s["tolerations"], (overlay, label)
    # The volumes it mounts are claims the overlay creates.
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert settings.model_cache_pvc in claims


@needs_kubectl
def test_the_prod_pipeline_does_not_select_the_gpu_operator_label(tmp_path):
    """The defect: the pipeline pinned GPU steps to nvidia.com/gpu.present=true, a label
    GKE's accelerator pools do not carry; encode stayed Pending after plan's charge."""
    (job,) = [o for o in rendered("prod") if o["metadata"]["name"] == GPU_JOB]
    assert "nvidia.com/gpu.present" not in job["spec"]["template"]["spec"]["nodeSelector"]
    settings = load_cluster_settings(settings_file("prod"), IMAGES)
    for k8s in gpu_executors(compile_pipeline(tmp_path / "p.yaml",
                                              settings=settings)).values():
        assert "nvidia.com/gpu.present" not in k8s["nodeSelector"]["labels"]


def test_prod_requires_images_by_digest_and_uses_them(tmp_path):
    with pytest.raises(ClusterSettingsError, match="by digest"):
        load_cluster_settings(settings_file("prod"))
    with pytest.raises(ClusterSettingsError, match="not <repository>@sha256"):
        load_cluster_settings(settings_file("prod"), {**IMAGES, "cpu": "ghcr.io/x/d:1.0"})
    settings = load_cluster_settings(settings_file("prod"), IMAGES)
    containers, _ = executors(compile_pipeline(tmp_path / "p.yaml", settings=settings))
    gpu = set(gpu_executors(tmp_path / "p.yaml"))
    for label, ex in containers.items():
        assert ex["container"]["image"] == IMAGES["cuda" if label in gpu else "cpu"], label
    resample, _ = executors(compile_resample_pipeline(tmp_path / "r.yaml", settings=settings))
    assert [e["container"]["image"] for e in resample.values()] == [IMAGES["cpu"]]


def test_the_cli_compiles_with_an_overlays_settings(tmp_path):
    out = tmp_path / "prod.yaml"
    runner = CliRunner()
    refused = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--cluster-settings",
                                  str(settings_file("prod"))])
    assert refused.exit_code == 2 and "by digest" in refused.output
    assert not out.exists()
    result = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--cluster-settings",
                                 str(settings_file("prod")), "--image",
                                 f"cpu={IMAGES['cpu']}", "--image", f"cuda={IMAGES['cuda']}"])
    assert result.exit_code == 0, result.output
    for k8s in gpu_executors(out).values():
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator":
                                                 "nvidia-l4"}
    bad = runner.invoke(app, ["pipeline", "compile", "-o", str(out), "--cluster-settings",
                              str(settings_file("dev")), "--image", "gpu=x"])
    assert bad.exit_code == 2 and "unknown image families ['gpu']" in bad.output


@pytest.mark.parametrize("text, message", [
    ("gpu: {node_selector: {}, tolerations: []}", "needs a node_selector or tolerations"),
    ("gpu: {node_selector: {a: b}}\nretires: 2", "retires: Extra inputs"),
    ("gpu: {node_selector: {'bad key!': b}}", "not a Kubernetes label selector"),
    ("gpu: {node_selector: {a: b}}\nretries: -1", "retries: Input should be greater"),
    ("gpu: {node_selector: {a: b}}\nretry_backoff: 1m", "retry_backoff: String should match"),
    ("gpu: {tolerations: [{key: k, operator: Exists, value: v}]}", "takes no value"),
    ("- a list", "must be a mapping"),
    ("gpu: [", "not valid YAML"),
])
def test_a_bad_settings_file_is_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "cluster-settings.yaml"
    path.write_text(text)
    with pytest.raises(ClusterSettingsError, match=message):
        load_cluster_settings(path)


def test_a_missing_settings_file_is_one_line(tmp_path):
    with pytest.raises(ClusterSettingsError, match="cannot read cluster settings"):
        load_cluster_settings(tmp_path / "nope.yaml")


def test_retries_and_tolerations_come_from_the_file(tmp_path):
    path = tmp_path / "cluster-settings.yaml"
    path.write_text("gpu:\n  node_selector: {pool: gpu}\n  tolerations:\n"
                    "    - {key: dedicated, operator: Equal, value: ml, effect: NoExecute}\n"
                    "retries: 5\nretry_backoff: 30s\n")
    package = compile_pipeline(tmp_path / "p.yaml", settings=load_cluster_settings(path))
    for k8s in gpu_executors(package).values():
        assert k8s["tolerations"] == [{"key": "dedicated", "operator": "Equal",
                                       "value": "ml", "effect": "NoExecute"}]
    spec = next(yaml.safe_load_all(package.read_text()))
    encode = spec["root"]["dag"]["tasks"]["exit-handler-1"]
    assert encode  # the handler's DAG holds the steps
    retried = [t["retryPolicy"] for c in spec["components"].values()
               for t in c.get("dag", {}).get("tasks", {}).values() if "retryPolicy" in t]
    assert retried and all(r["maxRetryCount"] == 5 and r["backoffDuration"] == "30s"
                           for r in retried)
