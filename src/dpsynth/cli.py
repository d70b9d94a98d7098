"""The ``dpsynth`` command line."""

from __future__ import annotations

import json

import typer

from dpsynth.privacy import PrivacyParameterError

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


if __name__ == "__main__":  # pragma: no cover
    app()
