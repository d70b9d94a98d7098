"""``dpsynth pipeline ...``: compile, run locally, submit and schedule the Kubeflow pipeline.

Registered with the ``dpsynth`` command through the ``dpsynth.cli`` entry point group.
"""

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The Kubeflow pipeline: compile, run locally, submit, schedule.",
                  no_args_is_help=True)

DEFAULT_PACKAGE = Path("pipelines/dpsynth_pipeline.yaml")
#: The widest fan-out compiled: each part is a pod (a width in the thousands is a typo).
MAX_PARTS = 64
CRON_HELP = (
    "KFP cron: SIX space-separated fields, seconds first: "
    "'second minute hour day-of-month month day-of-week'. "
    "'0 0 3 * * *' runs daily at 03:00:00; '0 30 2 * * 1' Mondays at 02:30. "
    "A 5-field Unix cron is refused, because KFP would read its first field as seconds.")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run configuration "
                                                "YAML, sent as the config_yaml parameter.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key "
                                                  "(key=value, repeatable).")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter "
                                                    "name=value (repeatable; value is YAML).")]
ComponentOpt = Annotated[list[str] | None, typer.Option(
    "--component", help="Replace a step's component: step=path/to/component.yaml "
    "(repeatable). The spec must take the step's inputs and write its outputs "
    "(components/README.md).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _components(specs: list[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for text in specs or []:
        step, sep, path = text.partition("=")
        if not sep or not step or not path:
            _fail(f"--component expects step=path/to/component.yaml, got {text!r}")
        if not Path(path).is_file():
            _fail(f"--component {text!r}: {path} does not exist")
        out[step] = Path(path)
    return out


ClusterSettingsOpt = Annotated[Path | None, typer.Option(
    "--cluster-settings", help="The overlay's cluster settings, e.g. "
    "manifests/overlays/prod/cluster-settings.yaml: GPU node selector and tolerations, "
    "retries, volumes, images. Default: the NVIDIA GPU operator's labels "
    "(manifests/overlays/dev).")]
ImageOpt = Annotated[list[str] | None, typer.Option(
    "--image", help="Image of a component family: cpu=REPO@sha256:... or "
    "cuda=REPO@sha256:... (repeatable; overrides the cluster settings' images).")]


def _images(specs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in specs or []:
        family, sep, ref = text.partition("=")
        if not sep or not family or not ref:
            _fail(f"--image expects family=reference (cpu=REPO@sha256:...), got {text!r}")
        out[family] = ref
    return out


def _settings(cluster_settings: Path | None, images: dict[str, str]):
    """The ClusterSettings to compile with (the overlay's file, else the defaults)."""
    from dpsynth_kfp.cluster_settings import ClusterSettingsError, load_cluster_settings
    from dpsynth_kfp.pipeline import CLUSTER

    if cluster_settings is None:
        if images:
            _fail("--image needs --cluster-settings (or $DPSYNTH_IMAGE_DIGEST_CPU/_CUDA)")
        return CLUSTER
    try:
        return load_cluster_settings(cluster_settings, images)
    except ClusterSettingsError as exc:
        _fail(str(exc))


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option("--output", "-o")] = DEFAULT_PACKAGE,
    encode_parts: Annotated[int, typer.Option(help="Encode fan-out width.", min=1,
                                              max=MAX_PARTS)] = 4,
    synthesize_parts: Annotated[int, typer.Option(
        help="Synthesize fan-out width (tasks writing ranges of the set's shards, then a "
        "join).", min=1, max=MAX_PARTS)] = 4,
    component: ComponentOpt = None,
    cluster_settings: ClusterSettingsOpt = None,
    image: ImageOpt = None,
    resample_output: Annotated[Path | None, typer.Option(
        help="Where to write the resample-only pipeline (default: "
        "pipelines/dpsynth_resample.yaml when --output is the default package; "
        "otherwise not written).")] = None,
) -> None:
    """Compile the pipeline to YAML (the committed file is pipelines/dpsynth_pipeline.yaml),
    assembled from the component specs components/<step>/component.yaml, and the
    resample-only pipeline (pipelines/dpsynth_resample.yaml).

    Cluster: --cluster-settings manifests/overlays/<name>/cluster-settings.yaml, so the
    GPU steps select that overlay's GPU nodes. Images: the file's, --image, else
    $DPSYNTH_IMAGE_REGISTRY and $DPSYNTH_IMAGE_TAG (default ghcr.io/dpsynth, 0.1.0).
    """
    from dpsynth_kfp.compile import (
        RESAMPLE_COMMITTED,
        compile_pipeline,
        compile_resample_pipeline,
    )

    settings = _settings(cluster_settings, _images(image))
    try:
        compile_pipeline(output, encode_parts=encode_parts, synthesize_parts=synthesize_parts,
                         components=_components(component), settings=settings)
    except ValueError as exc:  # a replacement that does not fit, an unknown step
        _fail(str(exc))
    except typer.Exit:
        raise
    except OSError as exc:  # an output folder that cannot be written
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - kfp's loader on a spec that is not one
        _fail(f"cannot compile the pipeline: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''}")
    typer.echo(f"wrote {output}")
    if resample_output is None and output == DEFAULT_PACKAGE:
        resample_output = RESAMPLE_COMMITTED
    if resample_output is not None:
        compile_resample_pipeline(resample_output, settings=settings)
        typer.echo(f"wrote {resample_output}")


@app.command("compile-components")
def compile_components_(
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for <step>/component.yaml (default: the "
        "repository's components/; then the tables in components/README.md and "
        "docs/pipeline.md are refreshed too).")] = None,
) -> None:
    """Compile each built-in component to its own spec, <folder>/<step>/component.yaml."""
    from dpsynth_kfp.compile import COMPONENTS_DIR, write_components

    if output is None:
        written = write_components(COMPONENTS_DIR)
    else:
        written = write_components(output, docs=False)
    typer.echo("wrote " + ", ".join(str(p) for p in written))


@app.command("run-local")
def run_local(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    pipeline_root: Annotated[Path, typer.Option(help="Where the local runner keeps every "
                                                "task's outputs.")] = Path("kfp-local"),
    encode_parts: Annotated[int, typer.Option(help="Encode fan-out width.")] = 2,
    synthesize_parts: Annotated[int, typer.Option(help="Synthesize fan-out width.")] = 2,
    component: ComponentOpt = None,
) -> None:
    """Run the whole pipeline on this machine with kfp's SubprocessRunner (no cluster)."""
    from dpsynth.config import ConfigError, load_config
    from dpsynth_kfp.local import run_pipeline_locally

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        _fail(str(exc))
    replacements = _components(component)
    try:
        result = run_pipeline_locally(cfg, pipeline_root, encode_parts=encode_parts,
                                      synthesize_parts=synthesize_parts,
                                      components=replacements)
    except ValueError as exc:  # a replacement that does not fit, an unknown step
        _fail(str(exc))
    except RuntimeError as exc:  # kfp.local: a task failed; its log is printed above
        _fail(f"{exc} (each task's log is above; outputs under {pipeline_root})")
    typer.echo(json.dumps({k: result["metrics"][k] for k in
                           ("accuracy", "nonprivate_accuracy", "epsilon", "delta")}, indent=2))
    typer.echo(f"outputs under {result['run_dir']}")


def _parse_params(params: list[str] | None, config: Path | None) -> dict[str, object]:
    import yaml

    out: dict[str, object] = {}
    for text in params or []:
        name, sep, raw = text.partition("=")
        if not sep or not name:
            _fail(f"--param expects name=value, got {text!r}")
        out[name] = yaml.safe_load(raw) if raw else ""
    if config is not None:
        from dpsynth.config import ConfigError, load_config
        from dpsynth_kfp.parameters import arguments

        if not config.is_file():
            _fail(f"config file {config} does not exist")
        try:
            resolved = load_config(config)
        except ConfigError as exc:
            _fail(str(exc))
        out["config_yaml"] = config.read_text()
        # The plan task applies the parameters over config_yaml, so a parameter left at
        # the package's default (dataset=fashion-mnist, epsilon=1, ...) would replace the
        # config's own value: each one not given with --param carries the config's value.
        for name, value in arguments(resolved).items():
            out.setdefault(name, value)
    return out


HostOpt = Annotated[str, typer.Option(
    help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888 or "
    "https://kubeflow.example.org/pipeline.")]
NamespaceOpt = Annotated[str | None, typer.Option(
    help="Namespace (Kubeflow profile) of a multi-user KFP: experiments, pipelines and "
    "recurring runs are looked up and created there. Leave out on a single-user KFP.")]
TokenOpt = Annotated[str | None, typer.Option(
    envvar="KFP_TOKEN", show_default=False,
    help="Bearer token sent as the Authorization header. Prefer the environment variable "
    "(a command line is visible to other users).")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    help="File holding the bearer token, re-read on every request (e.g. a projected "
    "ServiceAccount token, /var/run/secrets/kubeflow/pipelines/token).")]
CaBundleOpt = Annotated[Path | None, typer.Option(
    "--ca-bundle", help="PEM file of the CA(s) that signed the API's TLS certificate "
    "(a private CA).")]


def _client(host: str, *, namespace: str | None = None, token: str | None = None,
            token_file: Path | None = None, ca_bundle: Path | None = None):
    import warnings

    import kfp

    if token and token_file:
        _fail("give a token (--token or $KFP_TOKEN) or --token-file, not both")
    for option, path in (("--token-file", token_file), ("--ca-bundle", ca_bundle)):
        if path is not None and not path.is_file():
            _fail(f"{option} {path} does not exist")
    kwargs: dict[str, object] = {"host": host}
    if namespace:
        kwargs["namespace"] = namespace
    if token:
        kwargs["existing_token"] = token
    if token_file is not None:
        from kfp.client import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(str(token_file))
    if ca_bundle is not None:
        kwargs["ssl_ca_cert"] = str(ca_bundle)
    try:
        with warnings.catch_warnings():
            # Documented in docs/pipeline.md: KFP 2.x servers only.
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow")
            return kfp.Client(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any connection failure
        _fail(f"cannot reach the Kubeflow Pipelines API at {host}: {exc}")


def _check_package(package: Path, params: dict[str, object]) -> dict[str, dict]:
    """The package's parameter definitions; unknown ``params`` are refused."""
    if not package.is_file():
        _fail(f"pipeline package {package} does not exist; run `dpsynth pipeline compile`")
    import yaml

    spec = next(yaml.safe_load_all(package.read_text()))
    known = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(known))
    if unknown:
        _fail(f"unknown pipeline parameters {unknown}; the pipeline takes {sorted(known)}")
    return known


#: The package's parameter types and the Python values that fit them.
_PARAMETER_TYPES = {"NUMBER_DOUBLE": ((int, float), "a number"),
                    "NUMBER_INTEGER": ((int,), "an integer"),
                    "BOOLEAN": ((bool,), "true or false"), "STRING": ((str,), "text"),
                    "LIST": ((list,), "a list"), "STRUCT": ((dict,), "a mapping")}


def _validate_run(definitions: dict[str, dict], params: dict[str, object]):
    """Refuse, before any request, what the run's plan step would refuse: a parameter of
    the wrong type for the package, or a configuration that does not validate (epsilon out
    of range, an unknown data source...), as `dpsynth run` checks it."""
    from dpsynth.config import ConfigError

    for name, value in params.items():
        kind = definitions.get(name, {}).get("parameterType")
        types, what = _PARAMETER_TYPES.get(kind, ((object,), ""))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            _fail(f"--param {name}={value!r}: the pipeline takes {what} for {name}")
    try:
        return _run_config(definitions, params)
    except ConfigError as exc:
        _fail(f"{exc}\nNothing was sent to Kubeflow.")


def _check_cron(cron: str) -> None:
    """KFP's six fields (seconds first), each a number in its range, ``*``, a list,
    range or step of them (``0,30``, ``1-5``, ``*/15``): a schedule that can never fire,
    or fires at a field's impossible value, is refused here, not by the cluster."""
    import re

    fields = cron.split()
    if len(fields) != 6:
        _fail(f"--cron needs 6 fields (seconds first), got {len(fields)} in {cron!r}. "
              + CRON_HELP)
    names = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
    ranges = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
    for field_, name, (low, high) in zip(fields, names, ranges, strict=True):
        for part in field_.split(","):
            m = re.fullmatch(r"(\*|\?|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            numbers = [int(g) for g in (m.group(2), m.group(3)) if g] if m else []
            if not m or any(not low <= n <= high for n in numbers) or \
                    (m.group(4) is not None and int(m.group(4)) < 1) or \
                    (len(numbers) == 2 and numbers[0] > numbers[1]):
                _fail(f"--cron {cron!r}: {name} field {field_!r} is not a value in "
                      f"{low}-{high}, '*', a list, range or step of them. " + CRON_HELP)


def _api_error(action: str, host: str, exc: Exception) -> None:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None) or str(exc)
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        body = json.loads(body).get("message", body)
    _fail(f"{action} failed at {host}" + (f" (HTTP {status})" if status else "") + f": {body}")


@app.command()
def submit(
    host: HostOpt,
    experiment: Annotated[str, typer.Option(help="KFP experiment name.")] = "dpsynth",
    run_name: Annotated[str | None, typer.Option(help="Run name.")] = None,
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = DEFAULT_PACKAGE,
    config: ConfigOpt = None,
    param: ParamOpt = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Start one run of the compiled pipeline on a Kubeflow cluster."""
    namespace = namespace or None  # an empty --namespace (an unset CI variable): none
    params = _parse_params(param, config)
    definitions = _check_package(package, params)
    _validate_run(definitions, params)
    client = _client(host, namespace=namespace, token=token, token_file=token_file,
                     ca_bundle=ca_bundle)
    try:
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=run_name, experiment_name=experiment,
            namespace=namespace)
    except Exception as exc:  # noqa: BLE001 - ApiException and connection errors
        _api_error("submitting the run", host, exc)
    typer.echo(f"submitted run {result.run_id} in experiment {experiment!r}")


def _by_name(name: str) -> str:
    """A v2beta1 list filter: display_name equals ``name``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name",
                                       "stringValue": name}]})


def _recurring_runs(client, experiment_id: str, name: str) -> list:
    """Every recurring run named ``name`` in the experiment (all pages)."""
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100,
                                          experiment_id=experiment_id, filter=_by_name(name))
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def _upload_version(client, package: Path, pipeline_name: str, version_name: str,
                    namespace: str | None) -> tuple[str, str]:
    """(pipeline id, version id) of ``version_name`` of the pipeline ``pipeline_name``:
    the pipeline is created when missing, the package uploaded as that version unless a
    version of that name exists (then it is reused: the default name is the package's
    digest, so the same package maps to the same version)."""
    import kfp_server_api

    found = client.list_pipelines(filter=_by_name(pipeline_name), namespace=namespace,
                                  page_size=100).pipelines or []
    found = [p for p in found if p.display_name == pipeline_name]
    if len(found) > 1:
        _fail(f"{len(found)} pipelines are named {pipeline_name!r}; name one with "
              "--pipeline-name")
    if found:
        pipeline_id = found[0].pipeline_id
    else:
        created = client.pipelines.pipeline_service_create_pipeline(
            pipeline=kfp_server_api.V2beta1Pipeline(
                display_name=pipeline_name, namespace=namespace,
                description="dpsynth: differentially private synthetic data"))
        pipeline_id = created.pipeline_id
        typer.echo(f"created pipeline {pipeline_name!r} ({pipeline_id})")
    versions = client.list_pipeline_versions(pipeline_id, page_size=100,
                                             filter=_by_name(version_name))
    same = [v for v in versions.pipeline_versions or [] if v.display_name == version_name]
    if same:
        typer.echo(f"pipeline version {version_name!r} exists ({same[0].pipeline_version_id}); "
                   "reusing it")
        return pipeline_id, same[0].pipeline_version_id
    with contextlib.redirect_stdout(None):  # kfp prints a UI link; ours is below
        version = client.upload_pipeline_version(str(package), version_name,
                                                 pipeline_id=pipeline_id)
    typer.echo(f"uploaded {package} as version {version_name!r} "
               f"({version.pipeline_version_id}) of pipeline {pipeline_name!r}")
    return pipeline_id, version.pipeline_version_id


def _run_config(definitions: dict[str, dict], params: dict[str, object]):
    """The configuration a run of the package with ``params`` resolves at its plan step:
    the package's defaults, then ``params``, as the plan task resolves them
    (:func:`dpsynth_kfp.parameters.resolve`)."""
    from dpsynth_kfp.parameters import PARAMETERS, resolve

    values = {}
    for p in PARAMETERS:
        default = definitions.get(p.name, {}).get("defaultValue", p.default)
        values[p.name] = params.get(p.name, default)
    return resolve(values)


def declared_in_package(spec: dict) -> tuple:
    """The releases a compiled package's replacement components declared: the plan task's
    ``declared_releases`` constant (:mod:`dpsynth_kfp.declarations`)."""
    from dpsynth_kfp.declarations import from_json

    def tasks(dag: dict):
        for task in (dag or {}).get("tasks", {}).values():
            yield task
            component = spec.get("components", {}).get(
                task.get("componentRef", {}).get("name", ""), {})
            yield from tasks(component.get("dag"))

    for task in tasks(spec.get("root", {}).get("dag")):
        if task.get("componentRef", {}).get("name") == "comp-plan":
            value = task.get("inputs", {}).get("parameters", {}).get("declared_releases", {})
            return from_json(value.get("runtimeValue", {}).get("constant", ""))
    return ()


def _runway_or_refuse(config, ledger_uri: str | None, cron: str, package: Path) -> None:
    """Print the budget runway of ``config`` (the run's resolved configuration), or refuse
    a schedule that cannot run once."""
    import os

    from dpsynth.privacy.ledger_store import LEDGER_URI_ENV, LedgerUnavailableError
    from dpsynth.privacy.runway import budget_runway

    if not (ledger_uri or config.privacy.ledger_uri or os.environ.get(LEDGER_URI_ENV)):
        _fail("no privacy budget ledger to count the runway in: pass --ledger-uri (the "
              f"cluster's shared ledger; a read-only role is enough) or set {LEDGER_URI_ENV}, "
              "or --no-budget-check")
    import yaml

    from dpsynth_kfp.declarations import DeclarationError

    try:
        declared = declared_in_package(next(yaml.safe_load_all(package.read_text())))
    except DeclarationError as exc:
        _fail(f"{package}: {exc}")
    uri = ledger_uri or config.privacy.ledger_uri or os.environ.get(LEDGER_URI_ENV) or ""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # Opening it would create an empty ledger and print a runway for nothing.
        _fail(f"no privacy budget ledger at {uri.removeprefix('sqlite:///')}: check the path "
              "(a runway read from an empty ledger would be a fresh budget's). A dataset's "
              "first ledger is made by its first run, or by `dpsynth budget set`")
    try:
        runs, text = budget_runway(config, ledger_uri, declared)
    except LedgerUnavailableError as exc:
        _fail(f"{exc} (or pass --no-budget-check)")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        _fail(f"cannot plan the scheduled run: {type(exc).__name__}: {exc}")
    if runs is None:
        typer.echo(f"budget runway: no limit: {text}")
    elif runs == 0:
        _fail(f"{text}\nRefusing to schedule: not one run of this schedule fits in the "
              "budget. Nothing was sent to Kubeflow.")
    else:
        typer.echo(f"budget runway: {text}. On cron {cron!r}, the plan step refuses every run "
                   "after those (nothing is read or released then).")


LedgerUriOpt = Annotated[str | None, typer.Option(
    help="Privacy budget ledger to count the budget runway in (default: the config's "
    "privacy.ledger_uri, else $DPSYNTH_LEDGER_URI). Only read.")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment name.")]
NameOpt = Annotated[str, typer.Option(help="Recurring run name (unique in the experiment).")]


@app.command()
def schedule(
    host: HostOpt,
    cron: Annotated[str, typer.Option(help=CRON_HELP)],
    name: NameOpt = "dpsynth-refresh",
    experiment: ExperimentOpt = "dpsynth",
    max_concurrency: Annotated[int, typer.Option(help="Runs allowed at once.", min=1,
                                                 max=10)] = 1,
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = DEFAULT_PACKAGE,
    config: ConfigOpt = None,
    param: ParamOpt = None,
    pipeline_name: Annotated[str, typer.Option(
        help="Upload the package as a new version of this pipeline (created when "
        "missing) and schedule that version.")] = "dpsynth",
    version_name: Annotated[str | None, typer.Option(
        help="Name of the uploaded version (e.g. the git commit); default: the package's "
        "SHA-256 digest. An existing version of that name is reused.")] = None,
    embed_spec: Annotated[bool, typer.Option(
        "--embed-spec", help="Embed the package in the recurring run instead of "
        "uploading a pipeline version.")] = False,
    ledger_uri: LedgerUriOpt = None,
    budget_check: Annotated[bool, typer.Option(
        "--budget-check/--no-budget-check", help="Count the budget runway in the ledger "
        "and refuse a schedule that cannot run once. Every run is still checked and "
        "charged at its plan step.")] = True,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Create or replace the recurring run NAME (e.g. a nightly production refresh).

    Idempotent: a recurring run of the same name in the experiment is replaced (KFP has
    no update: the new one is created, then the old deleted; a paused one stays paused).
    Runs never catch up on missed intervals (no_catchup): each run spends privacy budget.
    Prints the budget runway, how many runs still fit in the dataset's lifetime budget,
    and refuses a schedule that cannot run once.
    """
    import hashlib

    namespace = namespace or None  # an empty --namespace (an unset CI variable): none
    _check_cron(cron)
    params = _parse_params(param, config)
    definitions = _check_package(package, params)
    run_config = _validate_run(definitions, params)
    if budget_check:
        _runway_or_refuse(run_config, ledger_uri, cron, package)
    else:
        typer.echo("budget runway: not checked (--no-budget-check); every run is still "
                   "checked and charged at its plan step")
    client = _client(host, namespace=namespace, token=token, token_file=token_file,
                     ca_bundle=ca_bundle)
    source: dict[str, str] = {"pipeline_package_path": str(package)}
    try:
        exp = client.create_experiment(experiment, namespace=namespace)
        if not embed_spec:
            digest = hashlib.sha256(package.read_bytes()).hexdigest()
            pipeline_id, version_id = _upload_version(
                client, package, pipeline_name, version_name or f"sha256-{digest[:16]}",
                namespace)
            source = {"pipeline_id": pipeline_id, "version_id": version_id}
        old = _recurring_runs(client, exp.experiment_id, name)
        paused = any(str(r.status).upper() == "DISABLED" for r in old)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=max_concurrency, no_catchup=True, params=params,
            enabled=not paused, **source)
        for r in old:
            client.delete_recurring_run(r.recurring_run_id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _api_error("creating the recurring run", host, exc)
    what = "replaced" if old else "scheduled"
    typer.echo(f"{what} {name!r} ({job.recurring_run_id}) with cron {cron!r}, no catch-up"
               + (" (paused, as the one it replaced; `dpsynth pipeline resume`)"
                  if paused else ""))


def _set_enabled(enabled: bool, host: str, name: str, experiment: str,
                 namespace: str | None, token: str | None, token_file: Path | None,
                 ca_bundle: Path | None) -> None:
    namespace = namespace or None
    client = _client(host, namespace=namespace, token=token, token_file=token_file,
                     ca_bundle=ca_bundle)
    action = "resuming" if enabled else "pausing"
    try:
        exp = client.get_experiment(experiment_name=experiment, namespace=namespace)
        found = _recurring_runs(client, exp.experiment_id, name)
        if not found:
            _fail(f"no recurring run named {name!r} in experiment {experiment!r} at {host}")
        for r in found:
            if enabled:
                client.enable_recurring_run(r.recurring_run_id)
            else:
                client.disable_recurring_run(r.recurring_run_id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _api_error(f"{action} the recurring run", host, exc)
    ids = ", ".join(r.recurring_run_id for r in found)
    typer.echo(f"{'resumed' if enabled else 'paused'} {name!r} ({ids})")


@app.command()
def pause(
    host: HostOpt,
    name: NameOpt = "dpsynth-refresh",
    experiment: ExperimentOpt = "dpsynth",
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Pause the recurring run NAME: no runs start until `resume`."""
    _set_enabled(False, host, name, experiment, namespace, token, token_file, ca_bundle)


@app.command()
def resume(
    host: HostOpt,
    name: NameOpt = "dpsynth-refresh",
    experiment: ExperimentOpt = "dpsynth",
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    ca_bundle: CaBundleOpt = None,
) -> None:
    """Resume a paused recurring run NAME. No catch-up: missed intervals are not run."""
    _set_enabled(True, host, name, experiment, namespace, token, token_file, ca_bundle)
