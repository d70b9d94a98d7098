"""A small, kubectl-free kustomize renderer: just the features manifests/ uses.

Supported in a ``Kustomization`` (and a ``Component``): ``resources`` (files and
directories holding a kustomization), ``components``, ``patches`` (a ``path`` or an inline
``patch``; a YAML list is a JSON6902 patch and needs a ``target``, a mapping is a
strategic-merge patch, matched by its own kind and name or by ``target``), ``namespace``,
``labels`` (``pairs``; ``includeSelectors``/``includeTemplates`` must be false) and
``images`` (``newName``, ``newTag``, ``digest``). Anything else is refused, so a
kustomization that uses a feature this renderer lacks fails the test instead of rendering
differently from ``kubectl kustomize``.

Order, as kustomize's: resources, then components, then this level's patches, namespace,
labels and images.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "components", "patches", "namespace",
             "labels", "images"}
#: Lists merged by this key in strategic-merge patches (the rest are replaced), as in
#: the Kubernetes types' patchMergeKey.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "name", "ports": "containerPort",
              "imagePullSecrets": "name"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}


class KustomizeError(ValueError):
    pass


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder} has no kustomization.yaml")


def _load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def render(folder: str | Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` prints, in order."""
    return _build(Path(folder).resolve(), component=False)


def _build(folder: Path, *, component: bool, objects: list[dict] | None = None) -> list[dict]:
    spec = yaml.safe_load(_kustomization_file(folder).read_text()) or {}
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{folder}: fields this renderer does not implement: "
                             f"{sorted(unknown)}")
    want = "Component" if component else "Kustomization"
    if spec.get("kind", "Kustomization") != want:
        raise KustomizeError(f"{folder}: expected kind {want}, got {spec.get('kind')}")
    objects = [] if objects is None else objects
    for res in spec.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            objects.extend(_build(path, component=False))
        else:
            objects.extend(_load_docs(path))
    for comp in spec.get("components", []):
        objects = _build((folder / comp).resolve(), component=True, objects=objects)
    for patch in spec.get("patches", []):
        _apply_patch(folder, patch, objects)
    if "namespace" in spec:
        _set_namespace(objects, spec["namespace"])
    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError("labels with includeSelectors/includeTemplates: not "
                                 "implemented")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for container in _containers(objects):
            container["image"] = _retag(container["image"], image)
    _check_unique(objects)
    return objects


def _check_unique(objects: list[dict]) -> None:
    seen = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"),
               obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"duplicate object {key}")
        seen.add(key)


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    checks = {"group": group, "version": version, "kind": obj["kind"],
              "name": obj["metadata"]["name"],
              "namespace": obj["metadata"].get("namespace", "")}
    for key, value in target.items():
        if key in ("labelSelector", "annotationSelector"):
            raise KustomizeError(f"patch target {key}: not implemented")
        if not re.fullmatch(str(value), checks[key]):
            return False
    return True


def _apply_patch(folder: Path, entry: dict, objects: list[dict]) -> None:
    if set(entry) - {"path", "patch", "target"}:
        raise KustomizeError(f"patch options not implemented: {sorted(entry)}")
    text = (folder / entry["path"]).read_text() if "path" in entry else entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    target = entry.get("target")
    if len(docs) == 1 and isinstance(docs[0], list):  # JSON6902
        if not target:
            raise KustomizeError("a JSON6902 patch needs a target")
        hits = [o for o in objects if _matches(o, target)]
        if not hits:
            raise KustomizeError(f"patch target {target} matches nothing")
        for obj in hits:
            for op in docs[0]:
                _json6902(obj, op)
        return
    for doc in docs:
        sel = target or {"kind": doc["kind"], "name": re.escape(doc["metadata"]["name"])}
        hits = [o for o in objects if _matches(o, sel)]
        if not hits:
            raise KustomizeError(f"patch for {sel} matches nothing")
        for obj in hits:
            merged = _smp(obj, {k: v for k, v in doc.items()
                                if k not in ("apiVersion", "kind")})
            obj.clear()
            obj.update(merged)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json6902(obj: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[index] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del node[index]
        else:
            raise KustomizeError(f"JSON6902 op {kind!r} not implemented")
        return
    if kind == "add":
        node[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        if last not in node:
            raise KustomizeError(f"replace: {op['path']} does not exist")
        node[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del node[last]
    else:
        raise KustomizeError(f"JSON6902 op {kind!r} not implemented")


def _smp(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            else:
                out[k] = _smp(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out)
                          if b.get(merge_key) == item.get(merge_key)), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _smp(out[match], item)
        return out
    return copy.deepcopy(patch)


def _set_namespace(objects: list[dict], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for subject in obj.get("subjects", []):
                if (subject.get("kind") == "ServiceAccount"
                        and subject.get("namespace") in (None, "default")):
                    subject["namespace"] = namespace


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a workload object, or None."""
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        return spec
    if obj["kind"] == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return spec.get("template", {}).get("spec")


def _containers(objects: list[dict]):
    for obj in objects:
        pod = pod_spec(obj)
        if pod:
            yield from pod.get("initContainers", [])
            yield from pod.get("containers", [])


def _split_image(ref: str) -> tuple[str, str | None, str | None]:
    name, _, digest = ref.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


def _retag(ref: str, image: dict) -> str:
    name, tag, digest = _split_image(ref)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    out = f"{name}:{tag}" if tag else name
    return f"{out}@{digest}" if digest and "newTag" not in image else out
