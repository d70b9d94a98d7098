"""Cluster settings as a file that lives with each overlay.

``manifests/overlays/<name>/cluster-settings.yaml`` says how that overlay's cluster
schedules the pipeline: the GPU steps' node selector and tolerations (the labels and
taints of the overlay's GPU node pool), retries, the volumes, and the images (by digest
where the overlay requires it). ``dpsynth pipeline compile --cluster-settings FILE`` reads
it, so one overlay always compiles to a pipeline its own nodes can run; the tests compile
each overlay's file and check its GPU steps select the nodes the overlay's manifests select.

The file is validated before anything is compiled: unknown keys, an empty selector with no
toleration, a tag where a digest is required are errors naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dpsynth_kfp.components import FAMILIES
from dpsynth_kfp.pipeline import CLUSTER, ClusterSettings, Toleration
from dpsynth_kfp.yaml_file import read_yaml_model

#: ``<repository>@sha256:<64 hex>``: an image named by its content, not a movable tag.
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._:/-]*@sha256:[0-9a-f]{64}$")
#: A Kubernetes label key (optional DNS prefix, then a name) and value.
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                       r"[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class ClusterSettingsError(ValueError):
    """A cluster-settings file that cannot be compiled against."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TolerationSpec(_Strict):
    """One toleration of the GPU steps (Kubernetes' fields)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"

    @field_validator("value")
    @classmethod
    def _value_only_with_equal(cls, value, info):
        if value is not None and info.data.get("operator") == "Exists":
            raise ValueError("a toleration with operator Exists takes no value")
        return value


class GpuSettings(_Strict):
    """Where the GPU steps (encode, decode) run."""

    resource: str = "nvidia.com/gpu"
    count: int = Field(1, ge=1)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationSpec] = Field(default_factory=list)

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(str(value)):
                raise ValueError(f"{key}: {value!r} is not a Kubernetes label selector")
        return labels


class StorageSettings(_Strict):
    """The volumes the tasks mount."""

    model_cache_pvc: str | None = CLUSTER.model_cache_pvc
    model_cache_mount: str = CLUSTER.model_cache_mount
    mount_data: bool = CLUSTER.mount_data
    data_mount: str = CLUSTER.data_mount


class ImageSettings(_Strict):
    """The images by family; unset: the default tag (``DPSYNTH_IMAGE_*`` variables)."""

    cpu: str | None = None
    cuda: str | None = None
    #: Refuse to compile unless every family is named by digest.
    require_digests: bool = False


class ClusterSettingsFile(_Strict):
    """The schema of ``cluster-settings.yaml``."""

    gpu: GpuSettings = Field(default_factory=GpuSettings)
    retries: int = Field(CLUSTER.retries, ge=0, le=10)
    retry_backoff: str = Field(CLUSTER.retry_backoff, pattern=r"^[1-9][0-9]*s$")
    parts_parallelism: int = Field(CLUSTER.parts_parallelism, ge=1)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    mlflow_secret: str | None = CLUSTER.mlflow_secret
    pipeline_root_secret: str | None = CLUSTER.pipeline_root_secret
    pipeline_root_endpoint: str | None = CLUSTER.pipeline_root_endpoint
    plan_checks_encoder: bool = CLUSTER.plan_checks_encoder


def _images(spec: ImageSettings, overrides: dict[str, str], source: str) -> dict[str, str]:
    images = {kind: ref for kind in FAMILIES
              if (ref := overrides.get(kind) or getattr(spec, kind))}
    if unknown := sorted(set(overrides) - set(FAMILIES)):
        raise ClusterSettingsError(f"unknown image families {unknown}; families are "
                                   f"{list(FAMILIES)}")
    if spec.require_digests:
        missing = [kind for kind in FAMILIES if kind not in images]
        tagged = [f"{kind}={ref}" for kind, ref in images.items() if not DIGEST_REF.match(ref)]
        if missing or tagged:
            raise ClusterSettingsError(
                f"{source} requires every image by digest (images.require_digests): "
                + "; ".join(filter(None, [
                    f"no image for {missing}" if missing else "",
                    f"not <repository>@sha256:<64 hex>: {tagged}" if tagged else ""]))
                + ". Give them in the file or with --image cpu=REPO@sha256:... "
                "--image cuda=REPO@sha256:... (the digests `scripts/build-images.sh` or "
                "the registry push printed).")
    return images


def load_cluster_settings(path: str | Path,
                          images: dict[str, str] | None = None) -> ClusterSettings:
    """The :class:`ClusterSettings` a cluster-settings file describes; ``images``
    (family -> image reference) override the file's."""
    path = Path(path)
    spec = read_yaml_model(path, ClusterSettingsFile, ClusterSettingsError,
                           "cluster settings")
    gpu = spec.gpu
    if not gpu.node_selector and not gpu.tolerations:
        # A GPU pool is tainted so other pods stay off it: without a selector or a
        # toleration the GPU steps would stay Pending after plan charged the budget.
        raise ClusterSettingsError(f"{path}: gpu needs a node_selector or tolerations "
                                   "(the labels and taints of the overlay's GPU nodes)")
    return ClusterSettings(
        accelerator_type=gpu.resource, accelerator_limit=gpu.count,
        node_selector=dict(gpu.node_selector),
        tolerations=tuple(Toleration(t.key, t.operator, t.value, t.effect)
                          for t in gpu.tolerations),
        model_cache_pvc=spec.storage.model_cache_pvc,
        model_cache_mount=spec.storage.model_cache_mount,
        mount_data=spec.storage.mount_data, data_mount=spec.storage.data_mount,
        mlflow_secret=spec.mlflow_secret, pipeline_root_secret=spec.pipeline_root_secret,
        pipeline_root_endpoint=spec.pipeline_root_endpoint,
        plan_checks_encoder=spec.plan_checks_encoder,
        parts_parallelism=spec.parts_parallelism, retries=spec.retries,
        retry_backoff=spec.retry_backoff,
        images=_images(spec.images, images or {}, str(path)))
