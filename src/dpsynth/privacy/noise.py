"""The source of DP noise.

Noise is drawn from a generator seeded by OS entropy (``numpy.random.SeedSequence()``
with no argument reads ``os.urandom``). A fixed seed exists so that tests can replay the
same draws; a result produced with one is *not private* (anyone holding the seed can
subtract the noise), and every artifact derived from it says so.
"""

from __future__ import annotations

import numpy as np

from dpsynth.privacy.plan import Release


class NoiseSource:
    """Gaussian noise calibrated by a :class:`~dpsynth.privacy.plan.Release`.

    Parameters
    ----------
    seed:
        ``None`` (the default and the only private choice) seeds from OS entropy.
        An integer makes the draws reproducible and marks the source ``is_private=False``.
    stream:
        Independent stream number for the same seed (one per fit stage, so stages run as
        separate processes never replay each other's draws). Stream 0 is the plain seed.
    """

    def __init__(self, seed: int | None = None, stream: int = 0) -> None:
        self.seed = seed
        self.is_private = seed is None
        spawn_key = (stream,) if stream else ()
        self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=spawn_key))

    def gaussian(self, release: Release, shape: tuple[int, ...] | int) -> np.ndarray:
        """Draw noise of the release's ``sigma`` (zero when the release is non-private)."""
        if release.sigma == 0.0:
            return np.zeros(shape, dtype=np.float64)
        return self._rng.normal(0.0, release.sigma, size=shape)

    def symmetric_gaussian(self, release: Release, dim: int) -> np.ndarray:
        """A symmetric ``dim x dim`` noise matrix for a sum of outer products.

        The upper triangle (diagonal included) gets i.i.d. noise of ``release.sigma`` and
        is mirrored. For a record x the released upper triangle of x x^T has L2 norm
        sqrt((||x||^4 + sum_i x_i^4) / 2) <= ||x||^2, so a sensitivity of R^2 covers it.
        """
        upper = np.triu(self.gaussian(release, (dim, dim)))
        return upper + np.triu(upper, 1).T

    def provenance(self) -> dict[str, object]:
        """What the run records about its noise: never the entropy itself."""
        return {"noise_seeded": not self.is_private, "noise_seed": self.seed}
