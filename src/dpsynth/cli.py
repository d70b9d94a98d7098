"""The ``dpsynth`` command line."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from dpsynth.config import DEFAULT_CLASS_BALANCE, field_facts
from dpsynth.privacy import PrivacyParameterError
from dpsynth.promote import Gates

#: The promote gates' defaults: dpsynth.promote.Gates's, written once there.
_GATES = Gates()

DEFAULT_OUT = Path("dpsynth-out")


def _config_help(key: str) -> str:
    """An option's help, from the run configuration's schema (the option sets ``key``):
    its description and default, written once, in :mod:`dpsynth.config`."""
    _, default, description = field_facts(key)
    return f"{description.replace('``', '')} ({key}; default {default})"

app = typer.Typer(help="dpsynth: differentially private synthetic embeddings.",
                  no_args_is_help=True)


@app.callback()
def main() -> None:
    """dpsynth command line."""


@app.command()
def plan(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Plan what `dpsynth run --config` would run: the run "
        "configuration's privacy and model settings at its encoder's dimension.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config key (with --config or alone; repeatable).")] = None,
    epsilon: Annotated[float | None, typer.Option(
        help=_config_help("privacy.epsilon"))] = None,
    delta: Annotated[float | None, typer.Option(help=_config_help("privacy.delta"))] = None,
    dim: Annotated[int | None, typer.Option(
        help="Embedding dimension (default: the default encoder's, "
        "encoder.name).", min=1)] = None,
    components_per_class: Annotated[int | None, typer.Option(
        help=_config_help("model.components_per_class"))] = None,
    covariance: Annotated[str | None, typer.Option(
        help=_config_help("model.covariance"))] = None,
    subspace_dim: Annotated[int | None, typer.Option(
        help=_config_help("model.subspace_dim"))] = None,
) -> None:
    """Print the privacy plan (every release, its sensitivity and noise) as JSON, with the
    smallest class it can release (``smallest_releasable_class``; also one line on stderr).

    Needs no data: the plan depends only on public configuration. With --config (and
    --set), it is the plan `dpsynth run` makes for that configuration; otherwise the
    options below describe it.
    """
    from dpsynth import DPSynthesizer
    from dpsynth.privacy.plan import release_threshold

    quick = {"--epsilon": epsilon, "--delta": delta, "--dim": dim,
             "--components-per-class": components_per_class, "--covariance": covariance,
             "--subspace-dim": subspace_dim}
    try:
        if config is not None or set_:
            if given := [k for k, v in quick.items() if v is not None]:
                raise ValueError(f"{', '.join(given)} with --config/--set: set the "
                                 "configuration's keys instead (e.g. --set "
                                 "privacy.epsilon=2)")
            from dpsynth import steps
            from dpsynth.config import ConfigError, load_config

            try:
                cfg = load_config(config, set_ or [])
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            made = steps.make_plan(cfg)
        else:
            from dpsynth.config import RunConfig

            defaults = RunConfig().privacy  # the run's defaults, not a second copy
            model = {k: v for k, v in (("components_per_class", components_per_class),
                                       ("covariance", covariance),
                                       ("subspace_dim", subspace_dim)) if v is not None}
            synth = DPSynthesizer(defaults.epsilon if epsilon is None else epsilon,
                                  defaults.delta if delta is None else delta, **model)
            if dim is None:
                from dpsynth import steps

                dim = steps.encoder_facts(RunConfig()).dim  # declared: no network built
            made = synth.make_plan(dim)
        threshold = release_threshold(made)
    except (PrivacyParameterError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from dpsynth.gmm.noise_dominance import plan_bound

    bound = plan_bound(made)
    result = {**made.to_dict(), "smallest_releasable_class": {
        **threshold.to_dict(), "note": threshold.describe()},
        "noise_dominated_below": bound}
    typer.echo(json.dumps(result, indent=2))
    typer.echo(threshold.describe(), err=True)
    if bound is not None:
        typer.echo(bound["note"], err=True)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Run configuration YAML (default: Fashion-MNIST, "
        "EfficientNet-Lite0, eps=1).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config key, e.g. --set privacy.epsilon=2 (repeatable; the "
        "value is YAML).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = DEFAULT_OUT,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Write into a non-empty --out that is not a dpsynth output "
        "directory (files dpsynth did not write are still never removed).")] = False,
) -> None:
    """Run every step in-process: plan, encode, DP cluster, DP mixture, synthesize,
    decode (when the encoder has a decoder), evaluate; track it all in MLflow."""
    from dpsynth.config import ConfigError, load_config
    from dpsynth.data.datasets import DatasetNotFoundError
    from dpsynth.data.sources import DataSourceError
    from dpsynth.data.store import EmbeddingSetError
    from dpsynth.outputs import OutputDirError
    from dpsynth.preflight import PreflightError
    from dpsynth.privacy.ledger import BudgetExceededError
    from dpsynth.runner import RunFailedError, summary
    from dpsynth.runner import run as run_all
    from dpsynth.steps import StepInputError
    from dpsynth.tracking import TrackingUnavailableError

    try:
        cfg = load_config(config, set_ or [])
        with _warnings_as_lines():
            result = run_all(cfg, out, progress=progress, echo=typer.echo,
                             overwrite=overwrite)
    except RunFailedError as exc:
        # After the charge: the run says what it kept and what is missing. Bad input found
        # only then (an image damaged past its header) is still exit code 2.
        typer.echo(f"error: {exc}", err=True)
        bad_input = isinstance(exc.__cause__, DataSourceError | EmbeddingSetError
                               | StepInputError | OutputDirError)
        raise typer.Exit(2 if bad_input else 1) from None
    except (ConfigError, PreflightError, OutputDirError, PrivacyParameterError,
            BudgetExceededError, TrackingUnavailableError, DatasetNotFoundError,
            DataSourceError, EmbeddingSetError, StepInputError, FileNotFoundError,
            FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(summary(result))


TrackingUriOption = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, "
    "else the store `dpsynth run` logs to: $DPSYNTH_HOME/mlflow.db).")]
DatasetIdOption = Annotated[str, typer.Option(
    "--dataset-id", help="Dataset id; the registered model is dpsynth-<dataset-id>.")]


def _gates(require_private: bool, max_epsilon: float, max_delta: float, min_accuracy: float,
           accuracy_tolerance: float, frechet_tolerance: float):
    from dpsynth.promote import Gates

    return Gates(require_private=require_private, max_epsilon=max_epsilon,
                 max_delta=max_delta, min_accuracy=min_accuracy,
                 accuracy_tolerance=accuracy_tolerance, frechet_tolerance=frechet_tolerance)



def _release_call(fn, *args, **kwargs):
    """Run a release function; a failed gate or a release problem is exit code 2."""
    from mlflow.exceptions import MlflowException

    from dpsynth.data.store import EmbeddingSetError
    from dpsynth.outputs import OutputDirError
    from dpsynth.promote import ReleaseError
    from dpsynth.synthesizer import ModelFileError

    try:
        with _warnings_as_lines():
            return fn(*args, **kwargs)
    except (ReleaseError, EmbeddingSetError, OutputDirError, ModelFileError,
            FileNotFoundError, MlflowException) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _echo_release(release, action: str) -> None:
    typer.echo(f"{action}: {release.model_name} version {release.version}"
               + (f" (previous production: {release.previous_production})"
                  if release.previous_production else ""))
    typer.echo(json.dumps(release.to_dict(), indent=2))



@app.command()
def promote(
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output directory of a finished `dpsynth run` (or `dpsynth "
        "resample`) to register and promote.")] = None,
    dataset_id: Annotated[str | None, typer.Option(
        "--dataset-id", help="With --version: promote an already registered version.")] = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="Registered version to promote (with --dataset-id).")] = None,
    tracking_uri: TrackingUriOption = None,
    require_private: Annotated[bool, typer.Option(
        help="Gate: the release is DP and its noise is not seeded.")] = _GATES.require_private,
    max_epsilon: Annotated[float, typer.Option(
        help="Gate: epsilon ceiling.")] = _GATES.max_epsilon,
    max_delta: Annotated[float, typer.Option(help="Gate: delta ceiling.")] = _GATES.max_delta,
    min_accuracy: Annotated[float, typer.Option(
        help="Gate: accuracy floor.")] = _GATES.min_accuracy,
    accuracy_tolerance: Annotated[float, typer.Option(
        help="Gate: accuracy may be this much below production's.")] = (
        _GATES.accuracy_tolerance),
    frechet_tolerance: Annotated[float, typer.Option(
        help="Gate: Fréchet distance may be this much above production's.")] = (
        _GATES.frechet_tolerance),
) -> None:
    """Register a run's synthetic data and synthesizer as a new version of the MLflow model
    dpsynth-<dataset_id> and, if every gate passes, move the alias 'production' to it.

    A failed gate exits with code 2 naming the gate; the version stays registered (tag
    dpsynth.gate) and no alias moves. Reads no private data (post-processing only).
    """
    from dpsynth import promote as release_mod

    gates = _gates(require_private, max_epsilon, max_delta, min_accuracy,
                   accuracy_tolerance, frechet_tolerance)
    if (out is None) == (version is None) or (version is not None and not dataset_id):
        typer.echo("error: give either --out DIR or --dataset-id ID --version V", err=True)
        raise typer.Exit(2)
    if out is not None:
        release = _release_call(release_mod.promote, out, gates=gates,
                                tracking_uri=tracking_uri)
    else:
        release = _release_call(release_mod.promote_version, dataset_id, version,
                                gates=gates, tracking_uri=tracking_uri)
    _echo_release(release, "promoted")


@app.command()
def rollback(
    dataset_id: DatasetIdOption,
    to_version: Annotated[str | None, typer.Option(
        "--to-version", help="Version to move 'production' to (default: the one the "
        "current production version replaced).")] = None,
    tracking_uri: TrackingUriOption = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Allow a version that did not pass the promotion gates (needs "
        "--reason, recorded on the version).")] = False,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why a gate-failed version is forced to production (with "
        "--force; kept in the version's tag dpsynth.forced_production).")] = None,
) -> None:
    """Move the alias 'production' back to the version it replaced.

    Only to a version that passed the promotion gates; --force --reason TEXT overrides
    that, and the reason is recorded on the version."""
    from dpsynth import promote as release_mod

    if force != (reason is not None):
        typer.echo("error: --force and --reason go together: --force --reason 'why'",
                   err=True)
        raise typer.Exit(2)
    release = _release_call(release_mod.rollback, dataset_id, to_version=to_version,
                            tracking_uri=tracking_uri, force_reason=reason)
    _echo_release(release, "rolled back to")


@app.command()
def fetch(
    dataset_id: DatasetIdOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to download to.")],
    alias: Annotated[str, typer.Option(help="Registry alias to fetch.")] = "production",
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Download the synthetic EmbeddingSet of dpsynth-<dataset_id>@<alias> to OUT/synthetic
    with its metadata (metrics.json, privacy_plan.json, release.json)."""
    from dpsynth import promote as release_mod

    release = _release_call(release_mod.fetch, dataset_id, out, alias=alias,
                            tracking_uri=tracking_uri)
    typer.echo(f"fetched {release.model_name}@{alias} (version {release.version}) to "
               f"{out / 'synthetic'}")


@app.command()
def resample(
    dataset_id: DatasetIdOption,
    n: Annotated[int, typer.Option("--n", help="Number of records to sample.", min=1)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    alias: Annotated[str, typer.Option(help="Version (alias) to resample.")] = "production",
    class_balance: Annotated[str, typer.Option(
        help="proportional | balanced")] = DEFAULT_CLASS_BALANCE,
    random_state: Annotated[int | None, typer.Option(
        help="Sampling seed (default: fresh).")] = None,
    register: Annotated[bool, typer.Option(
        help="Register the resample as a new version.")] = True,
    promote_: Annotated[bool, typer.Option(
        "--promote/--no-promote", help="Promote the new version through the gates "
        "(gate options as for `dpsynth promote`, defaults).")] = False,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """Resample-only refresh: new records from the promoted mixture, written as an
    EmbeddingSet and registered as a new version tagged dpsynth.resample_of.

    Post-processing of a DP release: no private data is read and no budget is spent.
    """
    from dpsynth import promote as release_mod

    gates = release_mod.Gates() if promote_ else None
    release = _release_call(release_mod.resample, dataset_id, n, out, alias=alias,
                            class_balance=class_balance, random_state=random_state,
                            tracking_uri=tracking_uri, register_version=register,
                            promote_gates=gates)
    typer.echo(f"resampled {n} records into {out / 'synthetic'}")
    if release is not None:
        _echo_release(release, "promoted" if promote_ else "registered")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Warnings (a discarded cache entry, a skipped image, a class below the noise
    threshold) as one ``warning:`` line each on stderr, not Python's file:line format."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.echo(f"warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


budget_app = typer.Typer(
    help="The privacy budget ledger's owner actions: a dataset's recorded lifetime budget, "
    "its non-private marking, and repairing a lost ledger from its MLflow mirror.",
    no_args_is_help=True)
app.add_typer(budget_app, name="budget")

LedgerDatasetOption = Annotated[str, typer.Option(
    "--dataset-id", help="The ledger's key of the dataset (data.dataset_id, or the id a run "
    "printed in its budget line).")]
LedgerUriOption = Annotated[str | None, typer.Option(
    "--ledger-uri", help="The ledger (default: $DPSYNTH_LEDGER_URI, else the per-user "
    "ledger.sqlite that `dpsynth run` uses).")]


def _ledger_call(fn):
    """Run an owner action on the ledger; its refusals are exit code 2, one line."""
    from dpsynth.privacy.ledger_store import LedgerOwnerError
    from dpsynth.tracking import TrackingUnavailableError

    try:
        return fn()
    except (LedgerOwnerError, TrackingUnavailableError, PrivacyParameterError,
            ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _describe_budget(history) -> str:
    from dpsynth.privacy.ledger import composed_epsilon

    if history.nonprivate is not None:
        return (f"dataset {history.dataset_id!r} is marked non-private (since "
                f"{history.nonprivate.since()}): no lifetime budget applies; "
                f"{len(history.charges)} charge(s)")
    if history.limit is None:
        return (f"dataset {history.dataset_id!r}: no lifetime budget recorded yet (its first "
                f"charge records the run's privacy.budget); {len(history.charges)} charge(s)")
    spent = composed_epsilon(history.charges, history.limit.delta)
    return (f"dataset {history.dataset_id!r}: lifetime budget {history.limit.describe()}; "
            f"eps {spent:.3g} spent over {len(history.charges)} charge(s)")


@budget_app.command("show")
def budget_show(dataset_id: LedgerDatasetOption, ledger_uri: LedgerUriOption = None) -> None:
    """Print a dataset's recorded lifetime budget, marking and spend. Reads only."""
    from dpsynth.privacy.ledger_store import open_ledger

    def show() -> str:
        with open_ledger(ledger_uri) as ledger:
            return _describe_budget(ledger.history(dataset_id))

    typer.echo(_ledger_call(show))


@budget_app.command("set")
def budget_set(
    dataset_id: LedgerDatasetOption,
    epsilon: Annotated[float | None, typer.Option(
        help="The dataset's lifetime epsilon, across all runs.")] = None,
    delta: Annotated[float | None, typer.Option(
        help="The dataset's lifetime delta (the delta its runs are composed at).")] = None,
    non_private: Annotated[bool, typer.Option(
        "--non-private", help="Mark the dataset non-private for good (public data, a "
        "test): no lifetime budget applies to it from now on, and non-private runs "
        "(privacy.epsilon=inf) are allowed. Cannot be taken back.")] = False,
    ledger_uri: LedgerUriOption = None,
) -> None:
    """The data owner sets a dataset's lifetime budget (or marks it non-private).

    Appended to the ledger as an entry of its own; from then on a run whose
    privacy.budget disagrees with it is refused. A run's configuration never changes
    the recorded budget: only this command does."""
    from dpsynth.privacy.ledger_store import open_ledger

    if non_private and epsilon is not None:
        typer.echo("error: give --epsilon and --delta, or --non-private, not both", err=True)
        raise typer.Exit(2)

    def record():
        with open_ledger(ledger_uri) as ledger:
            return ledger.uri, ledger.set_limit(dataset_id, epsilon, delta,
                                                nonprivate=non_private)

    uri, history = _ledger_call(record)
    typer.echo(f"recorded in the privacy budget ledger at {uri}: "
               + _describe_budget(history))


@budget_app.command("restore")
def budget_restore(
    dataset_id: LedgerDatasetOption,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="The MLflow store whose runs mirror the ledger (default: "
        "$MLFLOW_TRACKING_URI, else the store `dpsynth run` logs to).")] = None,
    epsilon: Annotated[float | None, typer.Option(
        help="The dataset's lifetime epsilon, recorded with the restored charges when the "
        "ledger holds none (the mirror does not keep it).")] = None,
    delta: Annotated[float | None, typer.Option(
        help="The dataset's lifetime delta (with --epsilon).")] = None,
    ledger_uri: LedgerUriOption = None,
) -> None:
    """Repair a lost ledger from its MLflow mirror: append every charge on the dataset
    that the mirror holds and the ledger lacks (a restored backup is better: the mirror
    holds only the charges of runs that were tracked there). Only adds charges. A ledger
    with no recorded lifetime budget for the dataset needs --epsilon and --delta, so that
    the next run's configuration does not set it."""
    from dpsynth.privacy.ledger_store import open_ledger
    from dpsynth.tracking import Tracker, resolve_tracking_uri

    def restore():
        tracker = Tracker(resolve_tracking_uri(tracking_uri), "dpsynth").open()
        mirror = tracker.ledger_entries(dataset_id)
        with open_ledger(ledger_uri) as ledger:
            history = ledger.history(dataset_id)
            unset = history.limit is None and history.nonprivate is None
            if unset and (epsilon is None or delta is None):
                raise ValueError(
                    f"the ledger at {ledger.uri} records no lifetime budget for dataset "
                    f"{dataset_id!r} and the MLflow mirror does not keep one: give the "
                    "dataset's --epsilon and --delta to record with the restored charges")
            added = ledger.restore_charges(dataset_id, mirror, tracker.uri)
            if unset:
                ledger.set_limit(dataset_id, epsilon, delta)
            return ledger.uri, added, ledger.history(dataset_id)

    uri, added, history = _ledger_call(restore)
    typer.echo(f"restored {len(added)} charge(s) from the MLflow mirror into the privacy "
               f"budget ledger at {uri}: " + _describe_budget(history))


def _add_plugin_commands() -> None:
    """Command groups that other packages declare in the ``dpsynth.cli`` entry point
    group (``dpsynth pipeline`` comes from ``dpsynth_kfp`` this way)."""
    import sys
    from importlib.metadata import entry_points

    for ep in entry_points(group="dpsynth.cli"):
        try:
            app.add_typer(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            print(f"warning: dpsynth command plugin {ep.name!r} ({ep.value}) failed to "
                  f"load: {exc}", file=sys.stderr)


_add_plugin_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
