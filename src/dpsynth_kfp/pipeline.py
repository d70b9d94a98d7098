"""The dpsynth pipeline: plan -> encode (fanned out) -> dp_cluster -> fit_gmm ->
synthesize -> decode (optional) -> evaluate.

``build_pipeline`` is a factory. Any built-in component can be replaced by another that
honours the same artifact contract (docs/formats.md), for example an encoder component of
your own. The compile-time settings (fan-out width, GPU, node selector, PVC, secret) are
arguments of the factory; the run parameters are the pipeline's parameters.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes

from dpsynth_kfp.components import define_components

PIPELINE_NAME = "dpsynth"
#: Steps that read images or run a decoder: these get the GPU settings and retries.
GPU_STEPS = ("encode", "decode")


@dataclass(frozen=True)
class ClusterSettings:
    """How the GPU steps are scheduled and what every pod mounts (compile time)."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    node_selector: tuple[str, str] | None = ("nvidia.com/gpu.present", "true")
    toleration_key: str | None = "nvidia.com/gpu"
    model_cache_pvc: str | None = "dpsynth-model-cache"
    model_cache_mount: str = "/cache"
    mlflow_secret: str | None = "dpsynth-mlflow"
    #: secret key -> environment variable, all optional in the secret.
    mlflow_secret_keys: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN": "MLFLOW_TRACKING_TOKEN",
        # The privacy budget ledger (PostgreSQL, as its INSERT/SELECT-only role).
        "DPSYNTH_LEDGER_URI": "DPSYNTH_LEDGER_URI"})
    gpu_retries: int = 2


#: The committed pipeline's settings.
CLUSTER = ClusterSettings()
#: For local runs: no cluster objects at all (the local runner has no Kubernetes).
LOCAL = ClusterSettings(accelerator_type="", node_selector=None, toleration_key=None,
                        model_cache_pvc=None, mlflow_secret=None, gpu_retries=0)


def _on_cluster(task, step: str, settings: ClusterSettings):
    if settings.mlflow_secret and step in ("plan", "evaluate"):
        kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_secret,
                                     secret_key_to_env=settings.mlflow_secret_keys,
                                     optional=True)
    if settings.model_cache_pvc and step in GPU_STEPS:
        kubernetes.mount_pvc(task, pvc_name=settings.model_cache_pvc,
                             mount_path=settings.model_cache_mount)
        for var, sub in (("DPSYNTH_CACHE_DIR", "embeddings"), ("DPSYNTH_MODEL_CACHE", "models"),
                         ("HF_HOME", "huggingface"), ("TORCH_HOME", "torch")):
            task.set_env_variable(var, f"{settings.model_cache_mount}/{sub}")
    if step in GPU_STEPS:
        if settings.accelerator_type:
            task.set_accelerator_type(settings.accelerator_type)
            task.set_accelerator_limit(settings.accelerator_limit)
        if settings.node_selector:
            kubernetes.add_node_selector(task, *settings.node_selector)
        if settings.toleration_key:
            kubernetes.add_toleration(task, key=settings.toleration_key, operator="Exists",
                                      effect="NoSchedule")
        if settings.gpu_retries:
            task.set_retry(num_retries=settings.gpu_retries, backoff_duration="60s",
                           backoff_factor=2.0)
    return task


def build_pipeline(*, encode_parts: int = 4, settings: ClusterSettings = CLUSTER,
                   components: dict[str, object] | None = None):
    """The pipeline function, ready for ``kfp.compiler`` or a local run.

    encode_parts: the training set's encode fans out over this many tasks (public and
        fixed at compile time: a width derived from the data would leak its size).
    settings: GPU, node selector, toleration, PVC and secret (``LOCAL`` for none).
    components: replacements by step name ("encode", "evaluate", ...) for the built-ins;
        a replacement must take and produce the same inputs and outputs.
    """
    if encode_parts < 1:
        raise ValueError(f"encode_parts must be >= 1, got {encode_parts}")
    ops = define_components()
    unknown = set(components or {}) - set(ops) - {"parameters"}
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; steps are {sorted(ops)}")
    ops.update(components or {})

    def bind(step: str, **kwargs):
        task = ops[step](**kwargs)
        task.set_caching_options(False)  # a DP release must never be served from a cache
        return _on_cluster(task, step, settings)

    @dsl.pipeline(name=PIPELINE_NAME, description=(
        "Differentially private synthetic embeddings: plan and budget check, encode, DP "
        "clustering, DP Gaussian mixture, synthesis, optional decoding, evaluation."))
    def dpsynth_pipeline(
        config_yaml: str = "",
        dataset: str = "fashion-mnist",
        train_dir: str = "",
        test_dir: str = "",
        image_size: int = 0,
        encoder: str = "efficientnet-lite0",
        epsilon: float = 1.0,
        delta: float = 1e-5,
        components_per_class: int = 1,
        n_samples: int = 60000,
        decode: bool = False,
        mlflow_uri: str = "",
        dataset_id: str = "",
        noise_seed: int = -1,
        extra_overrides: list = [],  # noqa: B006 - kfp parameters need literal defaults
    ):
        overrides = ops["parameters"](
            dataset=dataset, train_dir=train_dir, test_dir=test_dir, image_size=image_size,
            encoder=encoder, epsilon=epsilon, delta=delta,
            components_per_class=components_per_class, n_samples=n_samples, decode=decode,
            mlflow_uri=mlflow_uri, dataset_id=dataset_id, noise_seed=noise_seed,
            extra_overrides=extra_overrides)
        overrides.set_caching_options(False)
        planned = bind("plan", config_yaml=config_yaml, overrides=overrides.output)
        config, privacy_plan = planned.outputs["config"], planned.outputs["privacy_plan"]
        with dsl.ParallelFor(list(range(encode_parts))) as part:
            train = bind("encode", config=config, split="train", part=part,
                         parts=encode_parts)

        def train_parts():
            # One Collected per consumer: kfp 2.17 cannot compile a shared one.
            return dsl.Collected(train.outputs["embeddings"])

        test = bind("encode", config=config, split="test", part=0, parts=1)
        clusters = bind("dp_cluster", embeddings=train_parts(), privacy_plan=privacy_plan)
        mixture = bind("fit_gmm", embeddings=train_parts(), clusters=clusters.outputs["clusters"],
                       privacy_plan=privacy_plan)
        synthetic = bind("synthesize", mixture=mixture.outputs["mixture"], config=config)
        with dsl.If(decode == True, name="decode-enabled"):  # noqa: E712 - kfp condition
            bind("decode", synthetic=synthetic.outputs["synthetic"], config=config)
        bind("evaluate", synthetic=synthetic.outputs["synthetic"],
             test=test.outputs["embeddings"], train=train_parts(),
             privacy_plan=privacy_plan, config=config, run_id=planned.outputs["Output"])

    return dpsynth_pipeline
