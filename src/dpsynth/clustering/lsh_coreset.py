"""Private initialisation: an LSH prefix tree whose noisy leaves form a weighted coreset.

Random hyperplanes (data-independent, from ``random_state``) through a public centre hash
each record to an L-bit code. Level l of the tree groups records by the first l bits. A
node whose noisy count is large enough splits; a child is kept only if its noisy count
clears a threshold. Nodes that stop splitting are leaves and get a noisy sum; noisy sum /
noisy count is a coreset point weighted by its noisy count.

Sensitivity: at any level a record lies in exactly one node, so the level's counts change
by 1 in one coordinate when a record is added or removed (L2 sensitivity 1; one
repetition per level). A record lies in at most one leaf, so the leaf sums have L2
sensitivity R (records are bounded by R). Which nodes exist is decided from released noisy
counts only, which is post-processing. Exact counts of nodes that are never released are
computed (one pass collects every level) but never leave this module.

This module owns the releases ``lsh_level_counts`` and ``lsh_leaf_sums``
(:func:`release_specs`; noise added in :func:`release_coreset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec
from dpsynth.privacy.plan import count_threshold, mechanism_of

#: Release names: the noisy counts of a level's kept nodes, the noisy sums of the leaves.
LSH_LEVEL_COUNTS = "lsh_level_counts"
LSH_LEAF_SUMS = "lsh_leaf_sums"

#: Default budget weights (relative noise multipliers): counts need less precision.
DEFAULT_WEIGHTS: dict[str, float] = {LSH_LEVEL_COUNTS: 4.0, LSH_LEAF_SUMS: 1.0}


def release_specs(radius: float, weights: dict[str, float], *,
                  depth: int) -> list[ReleaseSpec]:
    """The releases of :func:`release_coreset`: level counts (sensitivity 1, one
    repetition per level) and leaf sums (sensitivity R)."""
    mechanism = mechanism_of(release_coreset)
    return [
        ReleaseSpec(LSH_LEVEL_COUNTS, 1.0, weights[LSH_LEVEL_COUNTS], repetitions=depth,
                    description="LSH tree: counts of the kept nodes, one release a level",
                    mechanism=mechanism),
        ReleaseSpec(LSH_LEAF_SUMS, radius, weights[LSH_LEAF_SUMS],
                    description="LSH tree: sums of subspace coordinates per leaf",
                    mechanism=mechanism),
    ]


class PrefixTreeStats:
    """Exact counts and sums of every prefix node of every class, mergeable across shards."""

    def __init__(self, n_classes: int, depth: int, dim: int) -> None:
        self.depth = depth
        self.counts = [np.zeros((n_classes, 2**level)) for level in range(depth + 1)]
        self.sums = [np.zeros((n_classes, 2**level, dim)) for level in range(depth + 1)]

    def add(self, Z: np.ndarray, classes: np.ndarray, hyperplanes: np.ndarray,
            centres: np.ndarray) -> None:
        """Accumulate rows ``Z`` of class ids ``classes``; hyperplanes pass through centres."""
        bits = (np.einsum("ij,lj->il", Z - centres[classes], hyperplanes) > 0).astype(np.int64)
        prefix = np.zeros(len(Z), dtype=np.int64)
        for level in range(self.depth + 1):
            if level > 0:
                prefix = prefix * 2 + bits[:, level - 1]
            flat = classes * 2**level + prefix
            n_nodes = self.counts[level].size
            self.counts[level] += np.bincount(flat, minlength=n_nodes).reshape(
                self.counts[level].shape)
            sums = self.sums[level].reshape(n_nodes, -1)
            np.add.at(sums, flat, Z)

    def __iadd__(self, other: PrefixTreeStats) -> PrefixTreeStats:
        for level in range(self.depth + 1):
            self.counts[level] += other.counts[level]
            self.sums[level] += other.sums[level]
        return self


@dataclass(frozen=True)
class TreeThresholds:
    """Public thresholds on noisy counts, derived from the plan's noise (never from data)."""

    keep: float
    split: float

    @classmethod
    def from_plan(cls, plan: PrivacyPlan, dim: int, radius: float) -> TreeThresholds:
        count_sigma = plan.release(LSH_LEVEL_COUNTS).sigma
        sum_sigma = plan.release(LSH_LEAF_SUMS).sigma
        # Keep a node when its count passes the plan's count threshold (3 sigma, at least
        # 2); split when both halves could still give leaf means whose noise
        # (sum_sigma * sqrt(dim) / count) is under R / 4.
        keep = count_threshold(count_sigma)
        leaf = max(keep, 4.0 * sum_sigma * np.sqrt(dim) / radius)
        return cls(keep=keep, split=2.0 * leaf)


def release_coreset(
    stats: PrefixTreeStats,
    class_index: int,
    plan: PrivacyPlan,
    noise: NoiseSource,
    thresholds: TreeThresholds,
    root_count: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow one class's tree from noisy counts; return coreset ``(points, weights)``.

    Releases ``lsh_level_counts`` (one release per level, L2 sensitivity 1: a record is
    in one node of a level) and ``lsh_leaf_sums`` (L2 sensitivity R: a record is in at
    most one leaf). ``root_count`` is the class's already-released noisy count (no new
    release).
    """
    count_release = plan.release(LSH_LEVEL_COUNTS)
    sum_release = plan.release(LSH_LEAF_SUMS)
    leaves: list[tuple[int, int, float]] = []  # (level, node, noisy count)
    frontier = [(0, root_count)]
    for level in range(1, stats.depth + 1):
        splitting = [(node, c) for node, c in frontier if c >= thresholds.split]
        leaves += [(level - 1, node, c) for node, c in frontier if c < thresholds.split]
        children = np.array([2 * node + b for node, _ in splitting for b in (0, 1)], dtype=int)
        # The level's count release is drawn for every class and level, even when nothing
        # splits, so the number of noise draws never depends on the data.
        noisy = stats.counts[level][class_index][children] + noise.gaussian(
            count_release, len(children))
        frontier = [(int(n), float(c)) for n, c in zip(children, noisy, strict=True)
                    if c >= thresholds.keep]
    leaves += [(stats.depth, node, c) for node, c in frontier]
    if not leaves:
        return np.zeros((0, stats.sums[0].shape[-1])), np.zeros(0)
    dim = stats.sums[0].shape[-1]
    sums = np.stack([stats.sums[level][class_index][node] for level, node, _ in leaves])
    noisy_sums = sums + noise.gaussian(sum_release, (len(leaves), dim))
    weights = np.array([c for _, _, c in leaves])
    return noisy_sums / weights[:, None], weights
