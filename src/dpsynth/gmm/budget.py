"""The releases of one fit, assembled from the modules that own them.

Nothing is defined here: each release's spec (name, sensitivity, default weight) sits in
the module whose function adds its noise (:mod:`dpsynth.gmm.subspace`,
:mod:`dpsynth.gmm.mixture`, and the clusterer's, e.g. :mod:`dpsynth.clustering.lsh_coreset`
and :mod:`dpsynth.clustering.kmeans` for ``dp-kmeans``). This module only puts them in the
order a fit makes them and applies the user's ``budget_weights``.

A weight is a release's noise multiplier relative to the others (the plan's one scale
multiplies all of them).
"""

from __future__ import annotations

from collections.abc import Mapping

from dpsynth.clustering.kmeans import DPKMeans
from dpsynth.gmm import mixture, subspace
from dpsynth.privacy import ReleaseSpec

#: The default weights of the built-in releases, by name (the built-in clusterer's too),
#: as their modules define them.
DEFAULT_WEIGHTS: dict[str, float] = {**subspace.DEFAULT_WEIGHTS, **mixture.DEFAULT_WEIGHTS,
                                     **DPKMeans.default_weights}


def default_weights(clusterer: type | None = None) -> dict[str, float]:
    """The weights of the subspace and mixture releases, and those ``clusterer`` declares
    (its ``default_weights``; ``None`` when there is no clusterer)."""
    core = {**subspace.DEFAULT_WEIGHTS, **mixture.DEFAULT_WEIGHTS}
    own: Mapping[str, float] = getattr(clusterer, "default_weights", None) or {}
    clash = sorted(set(core) & set(own))
    if clash:
        raise ValueError(f"clusterer {clusterer.__name__} declares default weights for "
                         f"{clash}, releases the mixture owns")
    return {**core, **own}


def resolve_weights(weights: Mapping[str, float] | None,
                    clusterer: type | None = None) -> dict[str, float]:
    """:func:`default_weights` with the overrides; unknown names are refused."""
    defaults = default_weights(clusterer)
    unknown = set(weights or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown budget_weights keys {sorted(unknown)}; "
                         f"known: {sorted(defaults)}")
    return {**defaults, **(weights or {})}


def release_specs(
    *,
    covariance: str,
    uses_subspace: bool,
    components_per_class: int,
    radius: float,
    weights: Mapping[str, float] | None = None,
    second_moment_clip: float | None = None,
    clusterer: type | None = None,
    clusterer_options: Mapping[str, object] | None = None,
) -> list[ReleaseSpec]:
    """The releases of one fit, in the order they are made. ``clusterer``: the clusterer
    class (its ``release_specs(radius, weights, **clusterer_options)`` are made when
    components_per_class > 1, and its ``default_weights`` keys are accepted)."""
    w = resolve_weights(weights, clusterer)
    R = radius
    specs: list[ReleaseSpec] = []
    if uses_subspace:
        specs += subspace.release_specs(R, w)
    specs += mixture.class_release_specs(R, w)
    if components_per_class > 1:
        if clusterer is None:
            raise ValueError("more than one component per class needs a clusterer")
        specs += list(clusterer.release_specs(R, w, **dict(clusterer_options or {})))
        specs += mixture.component_release_specs(R, w)
    specs += mixture.second_moment_specs(covariance, R, w, second_moment_clip)
    return specs
