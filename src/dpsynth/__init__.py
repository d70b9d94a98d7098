"""dpsynth: differentially private synthetic embeddings by DP clustering and mixtures."""

from importlib.metadata import PackageNotFoundError, version

from dpsynth.synthesizer import DPSynthesizer, NotFittedError

try:
    __version__ = version("dpsynth")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["DPSynthesizer", "NotFittedError", "__version__"]
