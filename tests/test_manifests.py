"""manifests/: every overlay renders without kubectl (tests/kustomize_lite.py), every object
validates strictly against a pinned Kubernetes version, and the policy checks hold. Each
policy check is also run on a deliberately broken object, so a check that stopped
checking fails here."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kustomize_lite import KustomizeError, pod_spec, render

from dpsynth_kfp.pipeline import CLUSTER

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
#: The Kubernetes version the objects are validated against (kubernetes-validate's schemas).
K8S_VERSION = "1.33.0"

#: (kind, name, container) -> why that container cannot have a read-only root filesystem.
#: Empty: every container writes only to volumes (an emptyDir at /tmp, the data volumes).
READ_ONLY_ROOT_EXCEPTIONS: dict[tuple[str, str, str], str] = {}

SECRETISH_NAME = re.compile(r"PASSW(OR)?D|TOKEN|SECRET|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|"
                            r"API_KEY", re.IGNORECASE)
#: scheme://user:password@host, or a password/token assignment.
SECRETISH_VALUE = re.compile(r"://[^/\s:@]+:[^/\s@]+@|"
                             r"(password|passwd|token|secret)\s*[=:]\s*\S", re.IGNORECASE)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(MANIFESTS / "overlays" / request.param)


def _workload_containers(obj: dict):
    pod = pod_spec(obj)
    if not pod:
        return
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        yield pod, container


def _image_problem(image: str) -> str | None:
    name, _, digest = image.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else "a malformed digest"
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon <= slash:
        return "no tag"
    if name[colon + 1:] == "latest":
        return "the tag latest"
    return None


def policy_problems(objects: list[dict],
                    read_only_exceptions=READ_ONLY_ROOT_EXCEPTIONS) -> list[str]:
    """Every broken policy, one line each; empty when all hold."""
    problems = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Secret" and ("data" in obj or "stringData" in obj):
            problems.append(f"{where}: a Secret with values in a manifest (reference it by "
                            "name and list its keys in manifests/README.md)")
        if obj["kind"] == "ConfigMap":
            for key, value in (obj.get("data") or {}).items():
                if SECRETISH_VALUE.search(str(value)):
                    problems.append(f"{where}: data[{key}] looks like a credential")
        for pod, c in _workload_containers(obj):
            cwhere = f"{where} container {c['name']}"
            ctx = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
            if ctx.get("runAsUser") == 0 or ctx.get("runAsNonRoot") is False or not (
                    ctx.get("runAsNonRoot") or (ctx.get("runAsUser") or 0) > 0):
                problems.append(f"{cwhere}: may run as root (set runAsNonRoot: true and a "
                                "non-zero runAsUser)")
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True \
                    and (obj["kind"], obj["metadata"]["name"], c["name"]) \
                    not in read_only_exceptions:
                problems.append(f"{cwhere}: root filesystem not read-only (and no listed "
                                "exception)")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(part) or {})
                if missing:
                    problems.append(f"{cwhere}: no {part} for {', '.join(sorted(missing))}")
            image_problem = _image_problem(c.get("image", ""))
            if image_problem:
                problems.append(f"{cwhere}: image {c.get('image')!r} has {image_problem}")
            for env in c.get("env") or []:
                value = env.get("value")
                if value and (SECRETISH_NAME.search(env["name"])
                              or SECRETISH_VALUE.search(str(value))):
                    problems.append(f"{cwhere}: env {env['name']} holds a plaintext secret "
                                    "(use valueFrom.secretKeyRef)")
            for arg in (c.get("command") or []) + (c.get("args") or []):
                if SECRETISH_VALUE.search(str(arg)):
                    problems.append(f"{cwhere}: a command argument holds a credential")
    return problems


# --- the overlays ------------------------------------------------------------------


def test_there_are_dev_and_prod_overlays():
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_every_object_validates_strictly(overlay):
    name, objects = overlay
    failures = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: "
                            f"{'.'.join(map(str, exc.path))}: {exc.message}")
    assert not failures, f"overlay {name}:\n" + "\n".join(failures)


def test_policies_hold(overlay):
    name, objects = overlay
    problems = policy_problems(objects)
    assert not problems, f"overlay {name}:\n" + "\n".join(problems)


def test_the_objects_the_issue_asks_for(overlay):
    name, objects = overlay
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    namespace = next(iter(by_kind["Namespace"]))
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
            "StatefulSet", "NetworkPolicy", "PersistentVolumeClaim", "Job",
            "ConfigMap"} <= set(by_kind)
    assert "Secret" not in by_kind
    binding = by_kind["RoleBinding"]["dpsynth-pipeline-runner"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dpsynth-pipeline-runner",
                                    "namespace": namespace}]
    # Least privilege: no wildcards, no writes to core objects, secrets only by name.
    for rule in by_kind["Role"]["dpsynth-pipeline-runner"]["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
            assert rule["verbs"] == ["get"] and rule["resourceNames"]
        if rule["apiGroups"] == [""]:
            assert not {"create", "update", "patch", "delete"} & set(rule["verbs"])
    # MLflow: proxied artifacts to MinIO, the basic-auth app, probes.
    mlflow = by_kind["Deployment"]["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    args = mlflow["args"]
    assert "--serve-artifacts" in args and "--app-name=basic-auth" in args
    assert "--artifacts-destination=s3://mlflow-artifacts" in args
    assert mlflow["livenessProbe"] and mlflow["readinessProbe"]
    assert {"mlflow", "minio", "postgres"} <= set(by_kind["Service"])
    # Only pipeline pods and the ingress reach MLflow.
    policy = by_kind["NetworkPolicy"]["mlflow-ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"pipelines.kubeflow.org/v2_component": "true"} in [
        p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
    assert any("namespaceSelector" in p for p in peers)
    # The volumes the pipeline mounts, ReadWriteMany with the overlay's storage class.
    for claim in (CLUSTER.model_cache_pvc, "dpsynth-data"):
        spec = by_kind["PersistentVolumeClaim"][claim]["spec"]
        assert spec["accessModes"] == ["ReadWriteMany"] and spec.get("storageClassName"), claim
    # The seeding Job fills the paths the GPU steps read, on the GPU node pool.
    seed = by_kind["Job"]["dpsynth-seed-model-cache"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in seed["containers"][0]["env"]}
    mount = CLUSTER.model_cache_mount
    assert env["DPSYNTH_MODEL_CACHE"] == f"{mount}/models"
    assert env["HF_HOME"] == f"{mount}/huggingface" and env["TORCH_HOME"] == f"{mount}/torch"
    assert seed["volumes"][0]["persistentVolumeClaim"]["claimName"] == CLUSTER.model_cache_pvc
    assert seed["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]
    assert set(seed["nodeSelector"]) & {"nvidia.com/gpu.present",
                                        "cloud.google.com/gke-accelerator"}
    assert "dpsynth-ledger-setup" in by_kind["Job"]


def test_overlays_pick_the_gpu_label_variants():
    selectors = {name: next(o for o in render(MANIFESTS / "overlays" / name)
                            if o["metadata"]["name"] == "dpsynth-seed-model-cache")
                 ["spec"]["template"]["spec"]["nodeSelector"] for name in ("dev", "prod")}
    assert selectors["dev"] == {"nvidia.com/gpu.present": "true"}
    assert list(selectors["prod"]) == ["cloud.google.com/gke-accelerator"]


def test_overlays_pin_every_logical_image():
    """The base names images logically; each overlay's images: must pin each of them
    (an entry whose name matches nothing is silently ignored by kustomize)."""
    logical = {c["image"] for o in render(MANIFESTS / "base") for _, c in
               _workload_containers(o)}
    assert all(":" not in name and "/" not in name for name in logical), logical
    for name in OVERLAYS:
        spec = yaml.safe_load((MANIFESTS / "overlays" / name / "kustomization.yaml")
                              .read_text())
        assert {image["name"] for image in spec["images"]} == logical, name


def test_readme_lists_every_secret_key_the_objects_reference(overlay):
    readme = (MANIFESTS / "README.md").read_text()
    refs = set()
    for obj in overlay[1]:
        pod = pod_spec(obj)
        for _, c in _workload_containers(obj):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
        for volume in (pod or {}).get("volumes", []):
            for item in (volume.get("secret") or {}).get("items", []):
                refs.add((volume["secret"]["secretName"], item["key"]))
    # The pipeline's own secret: the keys ClusterSettings maps to environment variables.
    refs |= {(CLUSTER.mlflow_secret, key) for key in CLUSTER.mlflow_secret_keys}
    missing = [f"{name}/{key}" for name, key in sorted(refs)
               if f"`{name}`" not in readme or f"`{key}`" not in readme]
    assert not missing, f"manifests/README.md does not list: {missing}"


def test_read_only_exceptions_are_not_stale():
    containers = {(o["kind"], o["metadata"]["name"], c["name"])
                  for name in OVERLAYS for o in render(MANIFESTS / "overlays" / name)
                  for _, c in _workload_containers(o)}
    assert set(READ_ONLY_ROOT_EXCEPTIONS) <= containers
    assert all(reason.strip() for reason in READ_ONLY_ROOT_EXCEPTIONS.values())


# --- the checks catch what they are for -------------------------------------------


def _good_deployment() -> dict:
    return yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: probe}
spec:
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 1000}
      containers:
        - name: main
          image: registry.example.org/probe:1.2.3
          env: [{name: MODE, value: fast}]
          resources:
            requests: {cpu: 100m, memory: 64Mi}
            limits: {cpu: 200m, memory: 128Mi}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
""")


def _container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _break(mutate):
    obj = _good_deployment()
    mutate(obj)
    return obj


BROKEN = {
    "root user": lambda o: _container(o).setdefault("securityContext", {}).update(
        runAsUser=0),
    "no non-root setting": lambda o: o["spec"]["template"]["spec"].pop("securityContext"),
    "runAsNonRoot false": lambda o: _container(o)["securityContext"].update(
        runAsNonRoot=False),
    "writable root": lambda o: _container(o)["securityContext"].pop(
        "readOnlyRootFilesystem"),
    "no limits": lambda o: _container(o)["resources"].pop("limits"),
    "no memory request": lambda o: _container(o)["resources"]["requests"].pop("memory"),
    "latest tag": lambda o: _container(o).update(image="registry.example.org/probe:latest"),
    "untagged": lambda o: _container(o).update(image="registry.example.org:5000/probe"),
    "password env": lambda o: _container(o)["env"].append(
        {"name": "DB_PASSWORD", "value": "hunter2"}),
    "token env": lambda o: _container(o)["env"].append(
        {"name": "MLFLOW_TRACKING_TOKEN", "value": "abc"}),
    "URI with password": lambda o: _container(o)["env"].append(
        {"name": "DB_URI", "value": "postgresql://app:hunter2@db:5432/app"}),
    "password argument": lambda o: _container(o).update(
        args=["--admin-uri=postgresql://postgres:hunter2@db/ledger"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_policy_check_fails_a_broken_object(case):
    assert policy_problems([_good_deployment()]) == []
    problems = policy_problems([_break(BROKEN[case])])
    assert len(problems) == 1, problems


@pytest.mark.parametrize("secret", [
    {"stringData": {"PASSWORD": "hunter2"}},
    {"data": {"PASSWORD": "aHVudGVyMg=="}},
    {"stringData": {"PASSWORD": ""}},  # keys listed but empty: still a value in the repo
])
def test_a_secret_with_values_fails(secret):
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, **secret}
    assert policy_problems([obj])


def test_a_configmap_with_a_password_fails():
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
           "data": {"app.ini": "[db]\npassword = hunter2\n"}}
    assert policy_problems([obj])


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_check_fails_the_rendered_overlay_broken_the_same_way(case):
    """The same breakages applied to the real MLflow Deployment of the dev overlay."""
    objects = copy.deepcopy(render(MANIFESTS / "overlays" / "dev"))
    mlflow = next(o for o in objects if o["kind"] == "Deployment"
                  and o["metadata"]["name"] == "mlflow")
    BROKEN[case](mlflow)
    assert policy_problems(objects), case


def test_a_listed_exception_allows_a_writable_root():
    broken = _break(BROKEN["writable root"])
    assert policy_problems([broken], {("Deployment", "probe", "main"): "writes its cache"}) \
        == []


def test_strict_validation_fails_an_unknown_field():
    obj = _good_deployment()
    _container(obj)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- the renderer ------------------------------------------------------------------


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_renderer_patches_namespaces_and_images(tmp_path):
    _write(tmp_path, {
        "base/kustomization.yaml": "resources: [app.yaml]\n",
        "base/app.yaml": yaml.safe_dump(_good_deployment()) + "---\n" + yaml.safe_dump(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "rb"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                         "name": "r"},
             "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
        "comp/kustomization.yaml": (
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\npatches:\n"
            "  - target: {kind: Deployment, name: probe}\n    patch: |-\n"
            "      - op: add\n        path: /spec/replicas\n        value: 3\n"),
        "overlay/kustomization.yaml": (
            "namespace: ns\nresources: [../base]\ncomponents: [../comp]\n"
            "images:\n  - {name: registry.example.org/probe, newTag: 2.0.0}\n"
            "patches:\n  - path: patch.yaml\n"),
        "overlay/patch.yaml": (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: probe}\nspec:\n"
            "  template:\n    spec:\n      containers:\n        - name: main\n"
            "          env: [{name: EXTRA, value: x}]\n"),
    })
    deployment, binding = render(tmp_path / "overlay")
    assert deployment["metadata"]["namespace"] == "ns" and deployment["spec"]["replicas"] == 3
    container = _container(deployment)
    assert container["image"] == "registry.example.org/probe:2.0.0"
    assert [e["name"] for e in container["env"]] == ["MODE", "EXTRA"]
    assert container["resources"]["limits"]  # merged, not replaced
    assert binding["subjects"][0]["namespace"] == "ns"


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    _write(tmp_path, {"kustomization.yaml": "namePrefix: x-\nresources: []\n"})
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(tmp_path)
    _write(tmp_path, {"kustomization.yaml": (
        "resources: []\npatches:\n  - target: {kind: Job, name: nope}\n"
        "    patch: '[{op: add, path: /x, value: 1}]'\n")})
    with pytest.raises(KustomizeError, match="matches nothing"):
        render(tmp_path)
