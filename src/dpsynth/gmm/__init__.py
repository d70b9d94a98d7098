from dpsynth.gmm.mixture import COVARIANCE_TYPES, MixtureParams, release_mixture, sample_mixture
from dpsynth.gmm.subspace import GramAccumulator, release_subspace

__all__ = ["COVARIANCE_TYPES", "GramAccumulator", "MixtureParams", "release_mixture",
           "release_subspace", "sample_mixture"]
