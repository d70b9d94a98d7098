"""Clusterers by name: the DP clustering that places mixture components inside a class.

A clusterer is a class with

- ``release_specs(radius, weights, **options) -> list[ReleaseSpec]`` (classmethod): every
  noisy release it makes, so that the privacy plan accounts for it before any data is
  read. Each spec should name its ``mechanism`` (``mechanism_of(f)`` of the function that
  draws its noise), so the plan leads to the noise in one hop. ``weights`` holds the
  built-in releases' default weights and the clusterer's ``default_weights``, with the
  user's ``budget_weights`` over them;
- ``default_weights`` (class attribute, optional): ``{release name: weight}`` for its
  releases; these names are then accepted as ``budget_weights`` keys;
- ``__init__(n_clusters, plan, noise, *, radius, random_state, **options)``; it must draw
  all noise through ``noise`` with the sigma of the plan entry that names it;
- ``fit(source, class_centres, class_counts)``, which sets ``centres_``, a list over
  classes of ``(k_c, dim)`` arrays.

``dp-kmeans`` (LSH coreset + DP Lloyd) is built in. Other packages add clusterers through
the ``dpsynth.clusterers`` entry point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

from dpsynth.registry import Registry

CLUSTERERS = Registry("clusterer", "dpsynth.clusterers")
register_clusterer = CLUSTERERS.register
available_clusterers = CLUSTERERS.names
get_clusterer = CLUSTERERS.get
