"""The ``dpsynth`` command line."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from dpsynth.privacy import PrivacyParameterError

DEFAULT_OUT = Path("dpsynth-out")

app = typer.Typer(help="dpsynth: differentially private synthetic embeddings.",
                  no_args_is_help=True)


@app.callback()
def main() -> None:
    """dpsynth command line."""


@app.command()
def plan(
    epsilon: float = typer.Option(1.0, help="Target epsilon ('inf' for non-private)."),
    delta: float = typer.Option(1e-5, help="Target delta (< 1e-3)."),
    dim: int = typer.Option(1280, help="Embedding dimension."),
    components_per_class: int = typer.Option(1, help="Mixture components per class."),
    covariance: str = typer.Option("lowrank", help="spherical | diagonal | lowrank"),
    subspace_dim: int = typer.Option(64, help="Shared DP subspace dimension."),
) -> None:
    """Print the privacy plan (every release, its sensitivity and noise) as JSON.

    Needs no data: the plan depends only on public configuration.
    """
    from dpsynth import DPSynthesizer

    try:
        synth = DPSynthesizer(epsilon, delta, components_per_class=components_per_class,
                              covariance=covariance, subspace_dim=subspace_dim)
        result = synth.make_plan(dim).to_dict()
    except (PrivacyParameterError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result, indent=2))


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


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Warnings (a discarded cache entry, a skipped image, a class below the noise
    threshold) as one ``warning:`` line each on stderr, not Python's file:line format."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        typer.echo(f"warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


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
