"""Which releases a configuration makes, with their sensitivities and budget weights.

A weight is a release's noise multiplier relative to the others (the plan's one scale
multiplies all of them). Defaults follow DESIGN.md's measured hints: counts need far less
precision than sums and second moments (weight 4), and the shared subspace pays back a
larger share (weight 0.5).
"""

from __future__ import annotations

from dpsynth.privacy import ReleaseSpec

DEFAULT_WEIGHTS: dict[str, float] = {
    "subspace_second_moment": 0.5,
    "class_counts": 4.0,
    "class_sums": 1.0,
    "lsh_level_counts": 4.0,
    "lsh_leaf_sums": 1.0,
    "lloyd_counts": 4.0,
    "lloyd_sums": 1.0,
    "component_counts": 4.0,
    "component_sums": 1.0,
    "second_moments": 1.0,
}


def resolve_weights(weights: dict[str, float] | None) -> dict[str, float]:
    """DEFAULT_WEIGHTS with the overrides; unknown names are refused."""
    unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown budget_weights keys {sorted(unknown)}; "
                         f"known: {sorted(DEFAULT_WEIGHTS)}")
    return {**DEFAULT_WEIGHTS, **(weights or {})}


def release_specs(
    *,
    covariance: str,
    uses_subspace: bool,
    components_per_class: int,
    radius: float,
    clustering: list[ReleaseSpec] | None = None,
    weights: dict[str, float] | None = None,
    second_moment_clip: float | None = None,
) -> list[ReleaseSpec]:
    """The releases of one fit, in the order they are made. ``clustering``: the releases
    of the clusterer (used when components_per_class > 1)."""
    w = resolve_weights(weights)
    R, R2 = radius, radius**2
    specs: list[ReleaseSpec] = []
    if uses_subspace:
        specs.append(ReleaseSpec("subspace_second_moment", R2, w["subspace_second_moment"],
                                 scope="global",
                                 description="sum of x x^T over all records (upper triangle)"))
    specs += [
        ReleaseSpec("class_counts", 1.0, w["class_counts"], description="records per class"),
        ReleaseSpec("class_sums", R, w["class_sums"], description="sum of records per class"),
    ]
    if components_per_class > 1:
        specs += list(clustering or [])
        specs += [
            ReleaseSpec("component_counts", 1.0, w["component_counts"],
                        description="records per mixture component"),
            ReleaseSpec("component_sums", R, w["component_sums"],
                        description="sum of records per mixture component"),
        ]
    if covariance == "tied":
        return specs  # the shared covariance is post-processing of the subspace release
    centred = second_moment_clip is not None
    specs.append(ReleaseSpec(
        "second_moments", second_moment_clip**2 if centred else R2, w["second_moments"],
        description=f"per-component second-order statistic ({covariance})"
                    + (f", centred at the released class mean, clipped to {second_moment_clip}"
                       if centred else "")))
    return specs
