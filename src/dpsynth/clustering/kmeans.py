"""DP k-means per class: LSH-coreset initialisation, then DP Lloyd rounds.

All classes are clustered in the same passes over the data; each class uses only its own
records, so the per-class releases compose in parallel (see :mod:`dpsynth.privacy.plan`).

Lloyd round sensitivity: every record is assigned to exactly one centre of its class,
so the vector of per-centre counts has L2 sensitivity 1 and the per-centre sums have L2
sensitivity R. The assignment uses only already-released centres (post-processing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from sklearn.cluster import KMeans

from dpsynth.clustering.lsh_coreset import PrefixTreeStats, TreeThresholds, release_coreset
from dpsynth.clustering.registry import register_clusterer
from dpsynth.clustering.stats import GroupSums, nearest_centre, project_to_ball
from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec

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
    plan: the privacy plan; reads ``lsh_level_counts``, ``lsh_leaf_sums``,
        ``lloyd_counts`` and ``lloyd_sums``.
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

    @classmethod
    def release_specs(cls, radius: float, weights: dict[str, float], *, depth: int = 8,
                      rounds: int = 3) -> list[ReleaseSpec]:
        """LSH level counts (one per level: each record is in one node a level), leaf
        sums (sensitivity R), then per Lloyd round the counts and sums per centre."""
        specs = [
            ReleaseSpec("lsh_level_counts", 1.0, weights["lsh_level_counts"], repetitions=depth,
                        description="LSH tree: counts of the kept nodes, one release a level"),
            ReleaseSpec("lsh_leaf_sums", radius, weights["lsh_leaf_sums"],
                        description="LSH tree: sums of subspace coordinates per leaf"),
        ]
        if rounds > 0:
            specs += [
                ReleaseSpec("lloyd_counts", 1.0, weights["lloyd_counts"], repetitions=rounds,
                            description="DP Lloyd: records per centre, one release a round"),
                ReleaseSpec("lloyd_sums", radius, weights["lloyd_sums"], repetitions=rounds,
                            description="DP Lloyd: sum of subspace coordinates per centre"),
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
        counts_release = self.plan.release("lloyd_counts")
        sums_release = self.plan.release("lloyd_sums")
        new = []
        for c, old in enumerate(centres):
            sl = slice(offsets[c], offsets[c + 1])
            noisy_counts = stats.counts[sl] + self.noise.gaussian(counts_release, len(old))
            noisy_sums = stats.sums[sl] + self.noise.gaussian(sums_release, old.shape)
            ok = noisy_counts >= min_count
            updated = old.copy()
            updated[ok] = noisy_sums[ok] / noisy_counts[ok, None]
            new.append(project_to_ball(updated, self.radius))
        return new


def assign_components(Z: np.ndarray, cls: np.ndarray, centres: list[np.ndarray],
                      offsets: np.ndarray) -> np.ndarray:
    """Global component id (class offset + nearest centre of the record's class)."""
    out = np.empty(len(Z), dtype=np.int64)
    for c in np.unique(cls):
        rows = cls == c
        out[rows] = offsets[c] + nearest_centre(Z[rows], centres[c])
    return out
