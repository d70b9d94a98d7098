"""DP k-means per class: LSH-coreset initialisation plus DP Lloyd refinement."""

from dpsynth.clustering.kmeans import DPKMeans, assign_components, weighted_kmeans_pp
from dpsynth.clustering.lsh_coreset import PrefixTreeStats, TreeThresholds, release_coreset
from dpsynth.clustering.registry import available_clusterers, get_clusterer, register_clusterer
from dpsynth.clustering.stats import GroupSums, nearest_centre, project_to_ball

__all__ = [
    "DPKMeans",
    "GroupSums",
    "PrefixTreeStats",
    "TreeThresholds",
    "assign_components",
    "available_clusterers",
    "get_clusterer",
    "register_clusterer",
    "nearest_centre",
    "project_to_ball",
    "release_coreset",
    "weighted_kmeans_pp",
]
