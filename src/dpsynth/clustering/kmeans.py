"""DP k-means per class: LSH-coreset initialisation, then DP Lloyd rounds.

All classes are clustered in the same passes over the data; each class uses only its own
records, so the per-class releases compose in parallel (see :mod:`dpsynth.privacy.plan`).

This module owns the releases ``lloyd_counts`` and ``lloyd_sums`` (noise added in
:func:`release_lloyd_centres`); :class:`DPKMeans` declares them with the LSH coreset's
(:mod:`dpsynth.clustering.lsh_coreset`) through ``release_specs`` and ``default_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sklearn.cluster import KMeans

from dpsynth.clustering import lsh_coreset
from dpsynth.clustering.lsh_coreset import PrefixTreeStats, TreeThresholds, release_coreset
from dpsynth.clustering.registry import register_clusterer
from dpsynth.clustering.stats import GroupSums, nearest_centre, project_to_ball
from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec
from dpsynth.privacy.plan import mechanism_of

#: Release names: records and sum of records per centre, one release per Lloyd round.
LLOYD_COUNTS = "lloyd_counts"
LLOYD_SUMS = "lloyd_sums"

#: Default budget weights (relative noise multipliers): counts need less precision.
DEFAULT_WEIGHTS: dict[str, float] = {LLOYD_COUNTS: 4.0, LLOYD_SUMS: 1.0}

#: A data source yields chunks of (Z, class ids); it can be iterated once per call.
DataSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def weighted_kmeans_pp(points: np.ndarray, weights: np.ndarray, k: int,
                       random_state: int | None) -> np.ndarray:
    """k centres from a weighted coreset (post-processing of released values)."""
    weights = np.maximum(weights, 0.0)
    k = min(k, len(points))
    if k == len(points):
        return points.copy()
    km = KMeans(n_clusters=k, init="k-means++", n_init=5, random_state=random_state)
    km.fit(points, sample_weight=weights)
    return km.cluster_centers_


@register_clusterer("dp-kmeans")
class DPKMeans:
    """DP k-means on every class at once.

    Parameters
    ----------
    n_clusters: centres per class (a class whose coreset is smaller gets fewer).
    plan: the privacy plan; draws the noise of ``lsh_level_counts``, ``lsh_leaf_sums``
        (:func:`~dpsynth.clustering.lsh_coreset.release_coreset`), ``lloyd_counts`` and
        ``lloyd_sums`` (:func:`release_lloyd_centres`) with its sigmas.
    radius: the public norm bound R of the (projected) records.
    depth: maximum depth of the LSH tree; rounds: DP Lloyd rounds (``lloyd_*`` repetitions).

    Attributes
    ----------
    centres_: list over classes of ``(k_c, dim)`` arrays.
    coreset_sizes_: number of coreset points per class.
    """

    def __init__(self, n_clusters: int, plan: PrivacyPlan, noise: NoiseSource, *,
                 radius: float = 1.0, depth: int = 8, rounds: int = 3,
                 random_state: int | None = None) -> None:
        self.n_clusters = n_clusters
        self.plan = plan
        self.noise = noise
        self.radius = radius
        self.depth = depth
        self.rounds = rounds
        self.random_state = random_state

    #: Budget weights of the releases below, by name (``budget_weights`` may override them).
    default_weights: dict[str, float] = {**lsh_coreset.DEFAULT_WEIGHTS, **DEFAULT_WEIGHTS}

    @classmethod
    def release_specs(cls, radius: float, weights: dict[str, float], *, depth: int = 8,
                      rounds: int = 3) -> list[ReleaseSpec]:
        """The LSH coreset's releases (:func:`lsh_coreset.release_specs`), then per Lloyd
        round the counts (sensitivity 1) and sums (R) per centre."""
        specs = lsh_coreset.release_specs(radius, weights, depth=depth)
        if rounds > 0:
            mechanism = mechanism_of(release_lloyd_centres)
            specs += [
                ReleaseSpec(LLOYD_COUNTS, 1.0, weights[LLOYD_COUNTS], repetitions=rounds,
                            description="DP Lloyd: records per centre, one release a round",
                            mechanism=mechanism),
                ReleaseSpec(LLOYD_SUMS, radius, weights[LLOYD_SUMS], repetitions=rounds,
                            description="DP Lloyd: sum of subspace coordinates per centre",
                            mechanism=mechanism),
            ]
        return specs

    def fit(self, source: DataSource, class_centres: np.ndarray,
            class_counts: np.ndarray) -> DPKMeans:
        """Cluster. ``class_centres``/``class_counts`` are released values (public)."""
        n_classes, dim = class_centres.shape
        rng = np.random.default_rng(self.random_state)
        hyperplanes = rng.standard_normal((self.depth, dim))
        tree = PrefixTreeStats(n_classes, self.depth, dim)
        for Z, cls in source():
            tree.add(Z, cls, hyperplanes, class_centres)
        thresholds = TreeThresholds.from_plan(self.plan, dim, self.radius)
        centres = []
        self.coreset_sizes_ = []
        for c in range(n_classes):
            points, weights = release_coreset(tree, c, self.plan, self.noise, thresholds,
                                              float(class_counts[c]))
            self.coreset_sizes_.append(len(points))
            if len(points) == 0:
                points, weights = class_centres[c : c + 1], np.ones(1)
            seed = None if self.random_state is None else self.random_state + c
            centres.append(project_to_ball(
                weighted_kmeans_pp(points, weights, self.n_clusters, seed), self.radius))
        for _ in range(self.rounds):
            centres = self._lloyd_round(source, centres, thresholds.keep)
        self.centres_ = centres
        return self

    def _lloyd_round(self, source: DataSource, centres: list[np.ndarray],
                     min_count: float) -> list[np.ndarray]:
        offsets = np.cumsum([0] + [len(c) for c in centres])
        stats = GroupSums.zeros(int(offsets[-1]), centres[0].shape[1])
        for Z, cls in source():
            stats.add(Z, assign_components(Z, cls, centres, offsets))
        return release_lloyd_centres(stats, centres, self.plan, self.noise,
                                     min_count=min_count, radius=self.radius)


def release_lloyd_centres(stats: GroupSums, centres: list[np.ndarray], plan: PrivacyPlan,
                          noise: NoiseSource, *, min_count: float,
                          radius: float) -> list[np.ndarray]:
    """One DP Lloyd update: new centres from the exact per-centre ``stats`` of a round.

    Releases ``lloyd_counts`` and ``lloyd_sums`` (one repetition each per round). Every
    record is assigned to exactly one centre of its class, so the per-centre counts have
    L2 sensitivity 1 and the per-centre sums L2 sensitivity R. The assignment uses only
    already-released centres (post-processing). ``stats`` rows are the centres of every
    class in order; a centre whose noisy count is under ``min_count`` stays where it was.
    """
    offsets = np.cumsum([0] + [len(c) for c in centres])
    counts_release = plan.release(LLOYD_COUNTS)
    sums_release = plan.release(LLOYD_SUMS)
    new = []
    for c, old in enumerate(centres):
        sl = slice(offsets[c], offsets[c + 1])
        noisy_counts = stats.counts[sl] + noise.gaussian(counts_release, len(old))
        noisy_sums = stats.sums[sl] + noise.gaussian(sums_release, old.shape)
        ok = noisy_counts >= min_count
        updated = old.copy()
        updated[ok] = noisy_sums[ok] / noisy_counts[ok, None]
        new.append(project_to_ball(updated, radius))
    return new


def assign_components(Z: np.ndarray, cls: np.ndarray, centres: list[np.ndarray],
                      offsets: np.ndarray) -> np.ndarray:
    """Global component id (class offset + nearest centre of the record's class)."""
    out = np.empty(len(Z), dtype=np.int64)
    for c in np.unique(cls):
        rows = cls == c
        out[rows] = offsets[c] + nearest_centre(Z[rows], centres[c])
    return out
