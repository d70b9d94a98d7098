"""Clusterers by name: the DP clustering that places mixture components inside a class.

A clusterer is a class with

- ``release_specs(radius, weights, **options) -> list[ReleaseSpec]`` (classmethod): every
  noisy release it makes, so that the privacy plan accounts for it before any data is
  read;
- ``__init__(n_clusters, plan, noise, *, radius, random_state, **options)``; it must draw
  all noise through ``noise`` with the sigma of the plan entry that names it;
- ``fit(source, class_centres, class_counts)``, which sets ``centres_``, a list over
  classes of ``(k_c, dim)`` arrays.

``dp-kmeans`` (LSH coreset + DP Lloyd) is built in. Other packages add clusterers through
the ``dpsynth.clusterers`` entry point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Any] = {}


def register_clusterer(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="dpsynth.clusterers"):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available_clusterers() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_clusterer(name: str) -> Any:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown clusterer {name!r}; available: "
                       f"{', '.join(available_clusterers())}")
    return _REGISTRY[name]
