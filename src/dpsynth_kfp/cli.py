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


@app.command("compile")
def compile_(
    output: Annotated[Path, typer.Option("--output", "-o")] = DEFAULT_PACKAGE,
    encode_parts: Annotated[int, typer.Option(help="Encode fan-out width.")] = 4,
    component: ComponentOpt = None,
) -> None:
    """Compile the pipeline to YAML (the committed file is pipelines/dpsynth_pipeline.yaml),
    assembled from the component specs components/<step>/component.yaml.

    Images: $DPSYNTH_IMAGE_REGISTRY and $DPSYNTH_IMAGE_TAG (default ghcr.io/dpsynth, 0.1.0).
    """
    from dpsynth_kfp.compile import compile_pipeline

    try:
        compile_pipeline(output, encode_parts=encode_parts, components=_components(component))
    except ValueError as exc:  # a replacement that does not fit, an unknown step
        _fail(str(exc))
    typer.echo(f"wrote {output}")


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
        if not config.is_file():
            _fail(f"config file {config} does not exist")
        out["config_yaml"] = config.read_text()
    return out


def _client(host: str):
    import warnings

    import kfp

    try:
        with warnings.catch_warnings():
            # Documented in docs/pipeline.md: KFP 2.x servers only.
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow")
            return kfp.Client(host=host)
    except Exception as exc:  # noqa: BLE001 - any connection failure
        _fail(f"cannot reach the Kubeflow Pipelines API at {host}: {exc}")


def _check_package(package: Path, params: dict[str, object]) -> None:
    if not package.is_file():
        _fail(f"pipeline package {package} does not exist; run `dpsynth pipeline compile`")
    import yaml

    spec = next(yaml.safe_load_all(package.read_text()))
    known = set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        _fail(f"unknown pipeline parameters {unknown}; the pipeline takes {sorted(known)}")


def _api_error(action: str, host: str, exc: Exception) -> None:
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None) or str(exc)
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        body = json.loads(body).get("message", body)
    _fail(f"{action} failed at {host}" + (f" (HTTP {status})" if status else "") + f": {body}")


@app.command()
def submit(
    host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. http://ml-pipeline:8888.")],
    experiment: Annotated[str, typer.Option(help="KFP experiment name.")] = "dpsynth",
    run_name: Annotated[str | None, typer.Option(help="Run name.")] = None,
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = DEFAULT_PACKAGE,
    config: ConfigOpt = None,
    param: ParamOpt = None,
) -> None:
    """Start one run of the compiled pipeline on a Kubeflow cluster."""
    params = _parse_params(param, config)
    _check_package(package, params)
    client = _client(host)
    try:
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=run_name, experiment_name=experiment)
    except Exception as exc:  # noqa: BLE001 - ApiException and connection errors
        _api_error("submitting the run", host, exc)
    typer.echo(f"submitted run {result.run_id} in experiment {experiment!r}")


@app.command()
def schedule(
    host: Annotated[str, typer.Option(help="KFP API endpoint.")],
    cron: Annotated[str, typer.Option(help=CRON_HELP)],
    name: Annotated[str, typer.Option(help="Recurring run name.")] = "dpsynth-refresh",
    experiment: Annotated[str, typer.Option(help="KFP experiment name.")] = "dpsynth",
    max_concurrency: Annotated[int, typer.Option(help="Runs allowed at once.")] = 1,
    package: Annotated[Path, typer.Option(help="Compiled pipeline YAML.")] = DEFAULT_PACKAGE,
    config: ConfigOpt = None,
    param: ParamOpt = None,
) -> None:
    """Create a recurring run (e.g. a nightly production refresh). Every run is charged
    against the dataset's privacy budget; once it is spent, runs fail at the plan step."""
    fields = cron.split()
    if len(fields) != 6:
        _fail(f"--cron needs 6 fields (seconds first), got {len(fields)} in {cron!r}. "
              + CRON_HELP)
    params = _parse_params(param, config)
    _check_package(package, params)
    client = _client(host)
    try:
        exp = client.create_experiment(experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=max_concurrency, params=params,
            pipeline_package_path=str(package))
    except Exception as exc:  # noqa: BLE001
        _api_error("creating the recurring run", host, exc)
    typer.echo(f"scheduled {name!r} ({job.recurring_run_id}) with cron {cron!r}")
