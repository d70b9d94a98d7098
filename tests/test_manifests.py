"""manifests/: every overlay renders with the real ``kubectl kustomize``
(tests/kubectl_kustomize.py), every object validates strictly against a pinned Kubernetes
version, and the policy checks hold: Pod Security "restricted" for every pod, no secrets in
the manifests, MLflow's exact allowed hosts, default-deny egress for the private boundary.
Each check is also run on a deliberately broken object, so a check that stopped checking
fails here."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubectl_kustomize import pod_spec, render

import dpsynth_kfp.pipeline
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


#: Pod Security Standards, "restricted" profile (Kubernetes 1.33): the volume types a pod
#: may use, the one capability it may add, the sysctls considered safe.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
RESTRICTED_ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def pod_security_problems(where: str, pod: dict) -> list[str]:
    """What the "restricted" Pod Security Standard refuses in one pod spec."""
    problems = []
    pod_ctx = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field) is True:
            problems.append(f"{where}: {field}: true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"{where}: volume {volume['name']} of type "
                            f"{', '.join(sorted(kinds))} (restricted allows only "
                            f"{', '.join(sorted(RESTRICTED_VOLUME_TYPES))})")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"{where}: unsafe sysctl {sysctl['name']}")
    containers = [c for key in ("initContainers", "containers", "ephemeralContainers")
                  for c in pod.get(key) or []]
    for c in containers:
        cwhere = f"{where} container {c['name']}"
        ctx = c.get("securityContext") or {}
        merged = {**pod_ctx, **ctx}
        if merged.get("runAsNonRoot") is not True:
            problems.append(f"{cwhere}: runAsNonRoot is not true (pod or container)")
        if merged.get("runAsUser") == 0:
            problems.append(f"{cwhere}: runAsUser 0")
        if ctx.get("privileged") is True:
            problems.append(f"{cwhere}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cwhere}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{cwhere}: capabilities do not drop ALL")
        added = set(caps.get("add") or []) - RESTRICTED_ADDABLE_CAPABILITIES
        if added:
            problems.append(f"{cwhere}: adds capabilities {', '.join(sorted(added))}")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {})
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cwhere}: seccompProfile is not RuntimeDefault or Localhost "
                            f"({seccomp.get('type')})")
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f"{cwhere}: procMount {ctx['procMount']}")
        apparmor = (ctx.get("appArmorProfile") or pod_ctx.get("appArmorProfile") or {})
        if apparmor.get("type", "RuntimeDefault") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{cwhere}: appArmorProfile {apparmor['type']}")
        selinux = merged.get("seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role") or selinux.get("type", "") not in (
                "", "container_t", "container_init_t", "container_kvm_t",
                "container_engine_t"):
            problems.append(f"{cwhere}: seLinuxOptions {selinux}")
        if any(port.get("hostPort") for port in c.get("ports") or []):
            problems.append(f"{cwhere}: a hostPort")
    return problems


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
        pod = pod_spec(obj)
        if pod:
            problems += pod_security_problems(where, pod)
        for _, c in _workload_containers(obj):
            cwhere = f"{where} container {c['name']}"
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


#: The label of the pods inside the private boundary (plan, encode, dp_cluster, fit_gmm):
#: the compiled pipeline sets it on their pods, the egress policy selects on it.
PRIVATE_BOUNDARY = ("dpsynth.io/private-boundary", "true")
EGRESS_POLICY = "private-boundary-egress"


def namespace_problems(objects: list[dict]) -> list[str]:
    """Every Namespace enforces the restricted Pod Security Standard."""
    namespaces = [o for o in objects if o["kind"] == "Namespace"]
    problems = [] if namespaces else ["no Namespace"]
    for ns in namespaces:
        labels = ns["metadata"].get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            problems.append(f"Namespace/{ns['metadata']['name']}: label "
                            "pod-security.kubernetes.io/enforce is not restricted")
    return problems


def _by(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name),
                None)


def mlflow_problems(objects: list[dict]) -> list[str]:
    """The MLflow server: exact Host names (its Service's, short and namespace-qualified,
    with and without the port), job execution off, a readiness probe that reaches the
    backend store (tests/test_mlflow_manifest.py runs it against a real server)."""
    deployment, service = _by(objects, "Deployment", "mlflow"), _by(objects, "Service",
                                                                    "mlflow")
    if not deployment or not service:
        return ["no Deployment/mlflow and Service/mlflow"]
    namespace = deployment["metadata"]["namespace"]
    c = next(c for c in pod_spec(deployment)["containers"] if c["name"] == "mlflow")
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    problems = []
    hosts = [h.strip() for h in (env.get("MLFLOW_SERVER_ALLOWED_HOSTS") or "").split(",")]
    patterns = [h for h in hosts if set(h) & set("*?[]")]
    if patterns:
        problems.append(f"MLFLOW_SERVER_ALLOWED_HOSTS has patterns (MLflow matches them with "
                        f"fnmatch: mlflow.* admits mlflow.evil.com): {patterns}")
    names = ["mlflow", f"mlflow.{namespace}", f"mlflow.{namespace}.svc",
             f"mlflow.{namespace}.svc.cluster.local"]
    ports = [p["port"] for p in service["spec"]["ports"]]
    missing = [n for name in names for n in (name, *(f"{name}:{p}" for p in ports))
               if n not in hosts]
    if missing:
        problems.append(f"MLFLOW_SERVER_ALLOWED_HOSTS lacks the Service's names {missing}")
    if env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") != "false":
        problems.append("MLFLOW_SERVER_ENABLE_JOB_EXECUTION is not false (the job runner "
                        "idles at ~1.7 GiB more)")
    probe = c.get("readinessProbe") or {}
    if "MLFLOW_BACKEND_STORE_URI" not in " ".join((probe.get("exec") or {}).get("command",
                                                                                  [])):
        problems.append("the readiness probe does not query the backend store (/health "
                        "answers OK with the database down)")
    return problems


class Dest:
    """A destination of a connection: a pod (namespace and labels) or a bare address."""

    def __init__(self, ip: str, port: int, protocol: str = "TCP", namespace: str | None = None,
                 labels: dict[str, str] | None = None) -> None:
        self.ip, self.port, self.protocol = ipaddress.ip_address(ip), port, protocol
        self.namespace, self.labels = namespace, labels

    def __repr__(self) -> str:
        where = f"{self.namespace}/{self.labels}" if self.labels is not None else self.ip
        return f"{where} {self.port}/{self.protocol}"


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    unknown = set(selector) - {"matchLabels"}
    assert not unknown, f"selector fields this check does not model: {unknown}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admits(peer: dict, policy_ns: str, dest: Dest) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return dest.ip in ipaddress.ip_network(block["cidr"]) and not any(
            dest.ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if dest.labels is None:
        return False
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"],
                        {"kubernetes.io/metadata.name": dest.namespace}):
            return False
    elif dest.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector") or {}, dest.labels)


def _port_admits(port: dict, dest: Dest) -> bool:
    assert isinstance(port.get("port", 0), int), f"named ports are not modelled: {port}"
    if port.get("protocol", "TCP") != dest.protocol:
        return False
    if "port" not in port:
        return True
    return port["port"] <= dest.port <= port.get("endPort", port["port"])


def egress_allowed(objects: list[dict], namespace: str, labels: dict[str, str],
                   dest: Dest) -> bool:
    """NetworkPolicy semantics for a new connection from a pod: not isolated for egress
    unless a policy with policyType Egress selects it; then allowed iff a rule of one of
    those policies admits both the peer and the port."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"
                and o["metadata"]["namespace"] == namespace
                and "Egress" in o["spec"].get("policyTypes", [])
                and _selects(o["spec"]["podSelector"], labels)]
    if not policies:
        return True
    return any(
        (not rule.get("to") or any(_peer_admits(p, namespace, dest) for p in rule["to"]))
        and (not rule.get("ports") or any(_port_admits(p, dest) for p in rule["ports"]))
        for policy in policies for rule in policy["spec"].get("egress") or [])


def private_pod_labels() -> dict[str, str]:
    """An encode task pod as KFP v2 and the compiled pipeline label it."""
    return {"pipelines.kubeflow.org/v2_component": "true", "dpsynth.io/step": "encode",
            PRIVATE_BOUNDARY[0]: PRIVATE_BOUNDARY[1]}


def egress_problems(objects: list[dict]) -> list[str]:
    """A private-boundary pod reaches DNS, MLflow, PostgreSQL, KFP's object store, ML
    Metadata and API server, and the Kubernetes API server, and nothing else tried here."""
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    policy = _by(objects, "NetworkPolicy", EGRESS_POLICY)
    blocks = [peer["ipBlock"] for rule in (policy or {}).get("spec", {}).get("egress") or []
              for peer in rule.get("to") or [] if "ipBlock" in peer]
    problems = [f"ipBlock {b['cidr']} is wider than one address (the API server's)"
                for b in blocks if ipaddress.ip_network(b["cidr"]).num_addresses != 1]
    if not blocks:
        problems.append("no ipBlock for the Kubernetes API server (the KFP launcher and "
                        "Argo's executor in every task pod need it)")
    api = [Dest(str(ipaddress.ip_network(b["cidr"])[0]), 443) for b in blocks]
    kubeflow = "kubeflow"
    allowed = [
        Dest("10.0.0.10", 53, "UDP", "kube-system", {"k8s-app": "kube-dns"}),
        Dest("10.0.0.10", 53, "TCP", "kube-system", {"k8s-app": "kube-dns"}),
        Dest("10.1.0.5", 5000, "TCP", namespace, {"app.kubernetes.io/name": "mlflow"}),
        Dest("10.1.0.6", 5432, "TCP", namespace, {"app.kubernetes.io/name": "postgres"}),
        Dest("10.2.0.7", 9000, "TCP", kubeflow, {"app": "minio"}),
        Dest("10.2.0.8", 8080, "TCP", kubeflow, {"component": "metadata-grpc-server"}),
        Dest("10.2.0.9", 8887, "TCP", kubeflow, {"app": "ml-pipeline"}),
        *api,
    ]
    denied = [
        Dest("8.8.8.8", 443), Dest("8.8.8.8", 53, "UDP"), Dest("10.0.0.1", 443),
        Dest("10.1.0.7", 9000, "TCP", namespace, {"app.kubernetes.io/name": "minio"}),
        Dest("10.1.0.5", 22, "TCP", namespace, {"app.kubernetes.io/name": "mlflow"}),
        Dest("10.1.0.5", 5000, "UDP", namespace, {"app.kubernetes.io/name": "mlflow"}),
        Dest("10.3.0.6", 5432, "TCP", "other", {"app.kubernetes.io/name": "postgres"}),
        Dest("10.3.0.7", 53, "UDP", "other", {"k8s-app": "kube-dns"}),
        Dest("10.2.0.10", 9000, "TCP", kubeflow, {"app": "something-else"}),
        Dest("10.2.0.9", 8888, "TCP", kubeflow, {"app": "ml-pipeline"}),
        Dest("10.1.0.9", 8080, "TCP", namespace, {"pipelines.kubeflow.org/v2_component":
                                                  "true"}),
    ]
    pod = private_pod_labels()
    problems += [f"a private-boundary pod cannot reach {d}" for d in allowed
                 if not egress_allowed(objects, namespace, pod, d)]
    problems += [f"a private-boundary pod can reach {d}" for d in denied
                 if egress_allowed(objects, namespace, pod, d)]
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


def test_the_namespace_enforces_pod_security_restricted(overlay):
    name, objects = overlay
    assert not namespace_problems(objects), name


def test_mlflow_hosts_jobs_and_readiness(overlay):
    name, objects = overlay
    problems = mlflow_problems(objects)
    assert not problems, f"overlay {name}:\n" + "\n".join(problems)


def test_prod_mlflow_answers_its_ingress_host():
    objects = render(MANIFESTS / "overlays" / "prod")
    c = pod_spec(_by(objects, "Deployment", "mlflow"))["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert "mlflow.example.org" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_private_boundary_egress_is_default_deny(overlay):
    name, objects = overlay
    problems = egress_problems(objects)
    assert not problems, f"overlay {name}:\n" + "\n".join(problems)
    policy = _by(objects, "NetworkPolicy", EGRESS_POLICY)
    assert policy["spec"]["podSelector"] == {"matchLabels": dict([PRIVATE_BOUNDARY])}
    # A task pod outside the boundary (synthesize, evaluate...) is not selected.
    namespace = policy["metadata"]["namespace"]
    assert egress_allowed(objects, namespace, {"pipelines.kubeflow.org/v2_component": "true"},
                          Dest("8.8.8.8", 443))


def test_the_pipeline_labels_its_private_pods_as_the_policy_selects():
    """The compiled pipeline's label for the private steps (dpsynth_kfp.pipeline), where it
    defines one, is the one the egress policy selects on."""
    label = getattr(dpsynth_kfp.pipeline, "PRIVATE_BOUNDARY_LABEL", None)
    if label is None:
        pytest.skip("dpsynth_kfp.pipeline defines no PRIVATE_BOUNDARY_LABEL yet")
    assert tuple(label) == PRIVATE_BOUNDARY


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
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
            seccompProfile: {type: RuntimeDefault}
""")


def _container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _no_seccomp(obj: dict) -> None:
    for ctx in (_pod(obj).get("securityContext") or {},
                _container(obj)["securityContext"]):
        ctx.pop("seccompProfile", None)


def _root_init_container(obj: dict) -> None:
    init = copy.deepcopy(_container(obj))
    init["name"] = "init"
    init["securityContext"]["runAsUser"] = 0
    _pod(obj)["initContainers"] = [init]


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
    # Pod Security "restricted".
    "privileged": lambda o: _container(o)["securityContext"].update(privileged=True),
    "privilege escalation allowed": lambda o: _container(o)["securityContext"].pop(
        "allowPrivilegeEscalation"),
    "capabilities not dropped": lambda o: _container(o)["securityContext"].pop(
        "capabilities"),
    "capability added": lambda o: _container(o)["securityContext"]["capabilities"].update(
        add=["NET_ADMIN"]),
    "no seccomp profile": _no_seccomp,
    "unconfined seccomp": lambda o: _container(o)["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
    "host network": lambda o: _pod(o).update(hostNetwork=True),
    "hostPath volume": lambda o: _pod(o).setdefault("volumes", []).append(
        {"name": "host", "hostPath": {"path": "/"}}),
    "host port": lambda o: _container(o).setdefault("ports", []).append(
        {"containerPort": 8080, "hostPort": 8080}),
    "unsafe sysctl": lambda o: _pod(o).setdefault("securityContext", {}).update(
        sysctls=[{"name": "kernel.msgmax", "value": "65536"}]),
    "root init container": _root_init_container,
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


def _dev() -> list[dict]:
    return copy.deepcopy(render(MANIFESTS / "overlays" / "dev"))


@pytest.mark.parametrize("labels", [
    {},
    {"pod-security.kubernetes.io/enforce": "baseline"},
    {"pod-security.kubernetes.io/warn": "restricted"},
])
def test_a_namespace_without_restricted_enforcement_fails(labels):
    objects = _dev()
    assert namespace_problems(objects) == []
    _by(objects, "Namespace", "dpsynth-dev")["metadata"]["labels"] = labels
    assert namespace_problems(objects)


def _mlflow_env(objects: list[dict]) -> list[dict]:
    return pod_spec(_by(objects, "Deployment", "mlflow"))["containers"][0]["env"]


def _set_env(objects: list[dict], name: str, value: str | None) -> None:
    env = _mlflow_env(objects)
    env[:] = [e for e in env if e["name"] != name]
    if value is not None:
        env.append({"name": name, "value": value})


def _hosts(objects: list[dict]) -> str:
    return next(e["value"] for e in _mlflow_env(objects)
                if e["name"] == "MLFLOW_SERVER_ALLOWED_HOSTS")


#: The allowed hosts before issue 23: mlflow.* admitted mlflow.evil.com, 10.* any pod IP.
OLD_ALLOWED_HOSTS = "mlflow,mlflow:*,mlflow.*,localhost,localhost:*,10.*,172.*,192.168.*"

MLFLOW_BROKEN = {
    "the old wildcard hosts": lambda o: _set_env(o, "MLFLOW_SERVER_ALLOWED_HOSTS",
                                                 OLD_ALLOWED_HOSTS),
    "any host": lambda o: _set_env(o, "MLFLOW_SERVER_ALLOWED_HOSTS", "*"),
    "one pattern added": lambda o: _set_env(o, "MLFLOW_SERVER_ALLOWED_HOSTS",
                                            _hosts(o) + ",mlflow.*"),
    "no namespace-qualified name": lambda o: _set_env(o, "MLFLOW_SERVER_ALLOWED_HOSTS",
                                                      "mlflow,mlflow:5000"),
    "hosts unset": lambda o: _set_env(o, "MLFLOW_SERVER_ALLOWED_HOSTS", None),
    "job execution on": lambda o: _set_env(o, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true"),
    "job execution default": lambda o: _set_env(o, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
                                                None),
    "readiness on /health": lambda o: pod_spec(_by(o, "Deployment", "mlflow"))[
        "containers"][0].update(readinessProbe={"httpGet": {"path": "/health",
                                                            "port": "http"}}),
}


@pytest.mark.parametrize("case", sorted(MLFLOW_BROKEN))
def test_each_mlflow_check_fails_a_broken_deployment(case):
    objects = _dev()
    assert mlflow_problems(objects) == []
    MLFLOW_BROKEN[case](objects)
    assert mlflow_problems(objects), case


def test_mlflow_itself_admits_foreign_hosts_through_a_pattern():
    """Why patterns are refused: MLflow's own host check (fnmatch) with the old list."""
    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(OLD_ALLOWED_HOSTS.split(","), "mlflow.evil.com")
    hosts = _hosts(_dev()).split(",")
    assert not is_allowed_host_header(hosts, "mlflow.evil.com")
    assert is_allowed_host_header(hosts, "mlflow.dpsynth-dev.svc.cluster.local:5000")


def _egress(objects: list[dict]) -> dict:
    return _by(objects, "NetworkPolicy", EGRESS_POLICY)["spec"]


def _rule_to(objects: list[dict], label: tuple[str, str]) -> dict:
    return next(rule for rule in _egress(objects)["egress"] for peer in rule["to"]
                if dict([label]).items() <= (peer.get("podSelector") or {}).get(
                    "matchLabels", {}).items())


EGRESS_BROKEN = {
    "no policy": lambda o: o.remove(_by(o, "NetworkPolicy", EGRESS_POLICY)),
    "an allow-all rule": lambda o: _egress(o)["egress"].append({}),
    "ingress only": lambda o: _egress(o).update(policyTypes=["Ingress"]),
    "selects other pods": lambda o: _egress(o).update(
        podSelector={"matchLabels": {"dpsynth.io/step": "evaluate"}}),
    "any address on 443": lambda o: _egress(o)["egress"][-1]["to"][0]["ipBlock"].update(
        cidr="0.0.0.0/0"),
    "no API server": lambda o: _egress(o)["egress"].pop(),
    "every port of MLflow": lambda o: _rule_to(
        o, ("app.kubernetes.io/name", "mlflow")).pop("ports"),
    "DNS in any namespace": lambda o: _rule_to(o, ("k8s-app", "kube-dns"))["to"][0].update(
        namespaceSelector={}),
    "DNS not reachable": lambda o: _rule_to(o, ("k8s-app", "kube-dns"))["to"][0].pop(
        "namespaceSelector"),
    "the namespace's MinIO": lambda o: _egress(o)["egress"].append(
        {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "minio"}}}],
         "ports": [{"port": 9000, "protocol": "TCP"}]}),
}


@pytest.mark.parametrize("case", sorted(EGRESS_BROKEN))
def test_each_egress_check_fails_a_broken_policy(case):
    objects = _dev()
    assert egress_problems(objects) == []
    EGRESS_BROKEN[case](objects)
    assert egress_problems(objects), case


def test_the_readme_patch_sets_the_api_server_address(tmp_path):
    """The overlay patch manifests/README.md shows for the API server's address, applied
    on top of the dev overlay: the address changes and the egress checks still hold."""
    readme = (MANIFESTS / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S)
                 if EGRESS_POLICY in b)
    patch = yaml.safe_load(block)
    dev = Path(os.path.relpath(MANIFESTS / "overlays" / "dev", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": [str(dev)], "patches": patch}))
    objects = render(tmp_path)
    blocks = [peer["ipBlock"]["cidr"] for rule in _egress(objects)["egress"]
              for peer in rule["to"] if "ipBlock" in peer]
    assert blocks == [yaml.safe_load(patch[0]["patch"])[0]["value"]] != ["192.0.2.1/32"]
    assert egress_problems(objects) == []
