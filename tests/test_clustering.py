"""Mergeable statistics, the LSH prefix tree and DP k-means."""

from __future__ import annotations

import numpy as np
import pytest

from dpsynth import DPSynthesizer
from dpsynth.clustering import (
    DPKMeans,
    GroupSums,
    PrefixTreeStats,
    TreeThresholds,
    assign_components,
    nearest_centre,
    project_to_ball,
)
from dpsynth.clustering.registry import CLUSTERERS, register_clusterer
from dpsynth.gmm import budget
from dpsynth.preprocessing import bound_norms
from dpsynth.privacy import NoiseSource, ReleaseSpec
from dpsynth.privacy.plan import mechanism_of

DELTA = 1e-5


# ------------------------------------------------------------------------- GroupSums
def test_group_sums_equal_a_direct_computation():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(200, 5))
    groups = rng.integers(-1, 4, 200)  # -1: the row belongs to no group
    stats = GroupSums.zeros(4, 5)
    stats.add(Z, groups)
    for g in range(4):
        assert stats.counts[g] == (groups == g).sum()
        np.testing.assert_allclose(stats.sums[g], Z[groups == g].sum(0), rtol=1e-12, atol=1e-12)
    assert stats.counts.sum() == (groups >= 0).sum()


def test_group_sums_of_two_halves_add_up_to_the_whole():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(301, 3))
    groups = rng.integers(0, 6, 301)
    whole, first, second = GroupSums.zeros(6, 3), GroupSums.zeros(6, 3), GroupSums.zeros(6, 3)
    whole.add(Z, groups)
    first.add(Z[:150], groups[:150])
    second.add(Z[150:], groups[150:])
    first += second
    np.testing.assert_array_equal(first.counts, whole.counts)
    np.testing.assert_allclose(first.sums, whole.sums, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------- PrefixTreeStats
def _tree_inputs(seed=2, n=400, dim=4, n_classes=2, depth=4):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, dim))
    classes = rng.integers(0, n_classes, n)
    hyperplanes = rng.normal(size=(depth, dim))
    centres = rng.normal(size=(n_classes, dim)) * 0.1
    return Z, classes, hyperplanes, centres


def test_prefix_tree_of_two_halves_merged_equals_the_whole():
    Z, classes, hyperplanes, centres = _tree_inputs()
    whole, first, second = (PrefixTreeStats(2, 4, 4) for _ in range(3))
    whole.add(Z, classes, hyperplanes, centres)
    first.add(Z[:170], classes[:170], hyperplanes, centres)
    second.add(Z[170:], classes[170:], hyperplanes, centres)
    first += second
    for level in range(5):
        np.testing.assert_array_equal(first.counts[level], whole.counts[level])
        np.testing.assert_allclose(first.sums[level], whole.sums[level], rtol=1e-12,
                                   atol=1e-12)


def test_prefix_tree_levels_partition_each_class():
    Z, classes, hyperplanes, centres = _tree_inputs()
    tree = PrefixTreeStats(2, 4, 4)
    tree.add(Z, classes, hyperplanes, centres)
    for c in range(2):
        rows = classes == c
        for level in range(5):
            # Every level is a partition of the class: counts and sums add up to the class.
            assert tree.counts[level][c].sum() == rows.sum()
            np.testing.assert_allclose(tree.sums[level][c].sum(0), Z[rows].sum(0), atol=1e-9)
        # Level 1 splits on the first hyperplane through the class centre (bit 1 = positive side).
        positive = ((Z[rows] - centres[c]) @ hyperplanes[0]) > 0
        assert tree.counts[1][c][1] == positive.sum()
        assert tree.counts[1][c][0] == (~positive).sum()


# --------------------------------------------------------------------------- DP k-means
def test_dp_kmeans_without_noise_recovers_separated_centres():
    dim, per_cluster = 8, 1000
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(3, dim))
    true = 0.6 * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    assert np.linalg.norm(true[:, None] - true[None], axis=-1)[np.triu_indices(3, 1)].min() > 0.3
    Z = np.concatenate([m + 0.02 * rng.normal(size=(per_cluster, dim)) for m in true])
    Z = Z[rng.permutation(len(Z))]
    cls = np.zeros(len(Z), dtype=np.int64)
    plan = DPSynthesizer(float("inf"), DELTA, components_per_class=3).make_plan(dim)
    for name in ("lsh_level_counts", "lsh_leaf_sums", "lloyd_counts", "lloyd_sums"):
        assert plan.release(name).sigma == 0.0

    def source():
        return ((Z[i:i + 700], cls[i:i + 700]) for i in range(0, len(Z), 700))

    km = DPKMeans(3, plan, NoiseSource(), radius=1.0, depth=8, rounds=3, random_state=0)
    km.fit(source, Z.mean(0, keepdims=True), np.array([float(len(Z))]))
    found = km.centres_[0]
    assert found.shape == (3, dim)
    assert km.coreset_sizes_[0] >= 3
    dist = np.linalg.norm(true[:, None] - found[None], axis=-1)
    nearest = dist.argmin(1)
    assert sorted(nearest) == [0, 1, 2]  # one found centre per true centre
    # Cluster means of 1,000 points with std 0.02 a coordinate are within ~0.002 of the centre.
    assert dist.min(1).max() < 0.05


def test_tree_thresholds_grow_as_epsilon_shrinks():
    # Thresholds from the synthesizer's own k = 3 plan (LSH and Lloyd releases included).
    def thresholds(eps):
        plan = DPSynthesizer(eps, DELTA, components_per_class=3, covariance="lowrank",
                             subspace_dim=4).make_plan(16)
        return TreeThresholds.from_plan(plan, dim=4, radius=1.0)

    loose, tight = thresholds(1.0), thresholds(0.5)
    assert tight.keep > loose.keep
    assert tight.split > loose.split
    assert loose.split >= loose.keep > 0


# -------------------------------------------------------------------------- helpers
def test_nearest_centre_and_assign_components():
    centres = [np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0]])]
    Z = np.array([[0.1, 0.0], [0.9, 0.1], [0.6, 0.5], [0.0, 0.9]])
    cls = np.array([0, 0, 0, 1])
    np.testing.assert_array_equal(nearest_centre(Z[:3], centres[0]), [0, 1, 1])
    offsets = np.cumsum([0] + [len(c) for c in centres])
    np.testing.assert_array_equal(assign_components(Z, cls, centres, offsets), [0, 1, 1, 2])


@pytest.mark.parametrize("radius", [0.5, 2.0])
def test_project_to_ball(radius):
    rng = np.random.default_rng(4)
    P = rng.normal(size=(50, 3))
    out = project_to_ball(P, radius)
    norms = np.linalg.norm(P, axis=1)
    assert (np.linalg.norm(out, axis=1) <= radius * (1 + 1e-12)).all()
    inside = norms <= radius
    np.testing.assert_array_equal(out[inside], P[inside])
    # Outside points keep their direction.
    np.testing.assert_allclose(out[~inside] / np.linalg.norm(out[~inside], axis=1)[:, None],
                               P[~inside] / norms[~inside, None])


# ------------------------------------------------------- a plugin clusterer's releases
OFFSET_SUMS = "offset_sums"


class _WeightedClusterer:
    """A clusterer with one release of its own and a default weight for it."""

    default_weights = {OFFSET_SUMS: 2.0}

    @classmethod
    def release_specs(cls, radius, weights, *, spread=0.1):
        return [ReleaseSpec(OFFSET_SUMS, radius, weights[OFFSET_SUMS],
                            description="noisy class sums, for the test",
                            mechanism=mechanism_of(cls.fit))]

    def __init__(self, n_clusters, plan, noise, *, radius, random_state, spread=0.1):
        self.n_clusters, self.plan, self.noise, self.spread = n_clusters, plan, noise, spread

    def fit(self, source, class_centres, class_counts):
        sums = GroupSums.zeros(*class_centres.shape)
        for Z, cls in source():
            sums.add(Z, cls)
        noisy = sums.sums + self.noise.gaussian(self.plan.release(OFFSET_SUMS),
                                                class_centres.shape)
        self.noisy_sums_ = noisy
        offsets = self.spread * np.eye(class_centres.shape[1])[: self.n_clusters]
        self.centres_ = [c + offsets for c in class_centres]
        return self


@pytest.fixture
def weighted_clusterer():
    register_clusterer("weighted-test")(_WeightedClusterer)
    yield "weighted-test"
    CLUSTERERS.unregister("weighted-test")


def test_a_plugin_clusterer_declares_its_releases_and_their_weights(weighted_clusterer):
    def plan(**weights):
        return DPSynthesizer(4.0, DELTA, components_per_class=2, clusterer=weighted_clusterer,
                             subspace_dim=3, budget_weights=weights or None).make_plan(6)

    default, given = plan(), plan(offset_sums=0.5)
    for p, weight in ((default, 2.0), (given, 0.5)):
        release = p.release(OFFSET_SUMS)
        assert release.noise_multiplier == pytest.approx(p.scale * weight, rel=1e-12)
        assert release.mechanism.endswith(":_WeightedClusterer.fit")
    assert [r.name for r in given.releases] == [
        "subspace_second_moment", "class_counts", "class_sums", OFFSET_SUMS,
        "component_counts", "component_sums", "second_moments"]
    # dp-kmeans's keys mean nothing to this clusterer; the built-in releases' still do.
    with pytest.raises(ValueError, match=r"unknown budget_weights keys \['lloyd_counts'\]"):
        plan(lloyd_counts=1.0)
    assert plan(class_counts=8.0).release("class_counts").noise_multiplier == \
        pytest.approx(plan(class_counts=8.0).scale * 8.0, rel=1e-12)


def test_a_plugin_clusterer_draws_its_noise_from_the_plan(weighted_clusterer):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 300)
    X = rng.normal(size=(600, 6)) + 3 * np.eye(6)[y]
    synth = DPSynthesizer(float("inf"), DELTA, components_per_class=2,
                          clusterer=weighted_clusterer, subspace_dim=3, random_state=0,
                          budget_weights={OFFSET_SUMS: 3.0}).fit(X, y, classes=[0, 1])
    assert synth.privacy_plan_.release(OFFSET_SUMS).sigma == 0.0
    # No noise at epsilon = inf: the release is the exact per-class sum in the subspace.
    Z = bound_norms(X, 1.0, True) @ synth.subspace_
    np.testing.assert_allclose(synth.clusterer_.noisy_sums_,
                               [Z[y == 0].sum(0), Z[y == 1].sum(0)], atol=1e-9)
    assert len(synth.mixture_.component_class) == 4
    seeded = DPSynthesizer(4.0, DELTA, components_per_class=2, clusterer=weighted_clusterer,
                           subspace_dim=3, random_state=0, noise_seed=1)
    with pytest.warns(UserWarning, match="noise_seed"):
        seeded.fit(X, y, classes=[0, 1])
    Zs = bound_norms(X, 1.0, True) @ seeded.subspace_
    noise = seeded.clusterer_.noisy_sums_ - [Zs[y == 0].sum(0), Zs[y == 1].sum(0)]
    assert np.abs(noise).max() > 1e-3  # drawn with the plan's sigma


def test_a_clusterer_may_not_declare_weights_for_the_mixtures_releases():
    class Clashing(_WeightedClusterer):
        default_weights = {"class_counts": 1.0}

    with pytest.raises(ValueError, match=r"declares default weights for \['class_counts'\]"):
        budget.resolve_weights(None, Clashing)
