"""Utility, fidelity and baselines."""

from dpsynth.evaluation.fidelity import frechet_distance
from dpsynth.evaluation.mlp import (
    ClassificationReport,
    TwoLayerMLP,
    classification_report,
    evaluate_synthetic,
)

__all__ = ["ClassificationReport", "TwoLayerMLP", "classification_report",
           "evaluate_synthetic", "frechet_distance"]
