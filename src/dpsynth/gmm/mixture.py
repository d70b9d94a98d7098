"""Per-class and per-component mixture releases, parameter repair and sampling.

This module owns five releases (names are the constants below, specs come from
:func:`class_release_specs`, :func:`component_release_specs` and
:func:`second_moment_specs`, default weights from :data:`DEFAULT_WEIGHTS`):

* ``class_counts`` / ``class_sums`` (:func:`release_class_stats`): noisy records and sum
  of records per class. With one component per class they are also the component's
  count and sum.
* ``component_counts`` / ``component_sums`` (:func:`release_mixture`, more than one
  component per class): noisy n_j and sum per component. Each record is in one
  component: L2 sensitivity 1 and R.
* ``second_moments`` (:func:`release_mixture`): per component, depending on
  ``covariance``, with x = V z + r (z = V^T x in the shared subspace, r the residual
  orthogonal to it):

  - ``spherical``: sum of ||x||^2. Sensitivity R^2.
  - ``diagonal``: [sum of z*z (elementwise), sum of ||r||^2]. The record's contribution
    has L2 norm sqrt(sum z_i^4 + ||r||^4) <= ||z||^2 + ||r||^2 = ||x||^2 <= R^2.
  - ``lowrank``: [upper triangle of sum z z^T, sum of ||r||^2]. The contribution has
    norm^2 = (||z||^4 + sum z_i^4)/2 + ||r||^4 <= (||z||^2 + ||r||^2)^2, so again R^2.
    Releasing both parts jointly costs one release instead of two.

Centred clipping (``second_moment_clip = C``): the second-order statistic is computed on
e = clip_C(x - a), where a is the record's class mean *as already released* by
``class_sums / class_counts`` (public by then) and clip_C scales e to norm <= C. The
formulas above hold with e in place of x, so the sensitivity becomes C^2 instead of R^2.
For embeddings concentrated around their class mean (||x - a|| well under R) this cuts the
noise of the noisiest release by R^2 / C^2 at a small clipping bias.

The covariance model is ``V C V^T + s^2 (I - V V^T)``: full (lowrank) or diagonal C in
the subspace plus an isotropic residual, i.e. a low-rank + diagonal covariance whose
diagonal part is constant off the subspace. Repair (post-processing): components whose
noisy count is under the public threshold are dropped, eigenvalues are floored so
covariances are PSD, residual variances are floored at zero.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import blas

from dpsynth.blas_threads import one_blas_thread
from dpsynth.clustering.stats import GroupSums, project_to_ball
from dpsynth.cpu_threads import CPU_MAX, cpu_threads
from dpsynth.preprocessing import bound_norms
from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec
from dpsynth.privacy.plan import mechanism_of

COVARIANCE_TYPES = ("spherical", "diagonal", "lowrank", "tied")

#: Release names (see the module docstring).
CLASS_COUNTS = "class_counts"
CLASS_SUMS = "class_sums"
COMPONENT_COUNTS = "component_counts"
COMPONENT_SUMS = "component_sums"
SECOND_MOMENTS = "second_moments"

#: Default budget weights (relative noise multipliers): counts need far less precision
#: than sums and second moments, so they get a larger noise multiplier (DESIGN.md's
#: measured hints): four times for component counts; twice for class counts (issue 25:
#: at eps = 1 four times put the noise threshold at ~110 records and dropped most classes
#: of 100; twice puts it at ~56 for 1.5% more noise elsewhere; docs/results.md "Small
#: data", tests/test_count_weight.py).
DEFAULT_WEIGHTS: dict[str, float] = {
    CLASS_COUNTS: 2.0,
    CLASS_SUMS: 1.0,
    COMPONENT_COUNTS: 4.0,
    COMPONENT_SUMS: 1.0,
    SECOND_MOMENTS: 1.0,
}


def class_release_specs(radius: float, weights: dict[str, float]) -> list[ReleaseSpec]:
    """The releases of :func:`release_class_stats`: counts (sensitivity 1), sums (R)."""
    mechanism = mechanism_of(release_class_stats)
    return [
        ReleaseSpec(CLASS_COUNTS, 1.0, weights[CLASS_COUNTS], description="records per class",
                    mechanism=mechanism),
        ReleaseSpec(CLASS_SUMS, radius, weights[CLASS_SUMS],
                    description="sum of records per class", mechanism=mechanism),
    ]


def component_release_specs(radius: float, weights: dict[str, float]) -> list[ReleaseSpec]:
    """The first-order releases of :func:`release_mixture` (more than one component per
    class): counts (sensitivity 1) and sums (R) per component."""
    mechanism = mechanism_of(release_mixture)
    return [
        ReleaseSpec(COMPONENT_COUNTS, 1.0, weights[COMPONENT_COUNTS],
                    description="records per mixture component", mechanism=mechanism),
        ReleaseSpec(COMPONENT_SUMS, radius, weights[COMPONENT_SUMS],
                    description="sum of records per mixture component", mechanism=mechanism),
    ]


def second_moment_specs(covariance: str, radius: float, weights: dict[str, float],
                        clip: float | None = None) -> list[ReleaseSpec]:
    """The second-order release of :func:`release_mixture`: sensitivity R^2, or C^2 with
    centred clipping at C; none for ``tied`` (its shared covariance is post-processing of
    the subspace release)."""
    if covariance == "tied":
        return []
    centred = clip is not None
    return [ReleaseSpec(
        SECOND_MOMENTS, clip**2 if centred else radius**2, weights[SECOND_MOMENTS],
        description=f"per-component second-order statistic ({covariance})"
                    + (f", centred at the released class mean, clipped to {clip}"
                       if centred else ""),
        mechanism=mechanism_of(release_mixture))]


def release_class_stats(stats: GroupSums, plan: PrivacyPlan,
                        noise: NoiseSource) -> tuple[np.ndarray, np.ndarray]:
    """Noisy (counts (C,), sums (C, d)) of the exact per-class ``stats``.

    Releases ``class_counts`` and ``class_sums``. Each record is in one class, so adding
    or removing one changes the count vector by 1 in one coordinate (L2 sensitivity 1) and
    the sums by the record itself (L2 sensitivity R, records bounded by R).
    """
    C, d = stats.sums.shape
    counts = stats.counts + noise.gaussian(plan.release(CLASS_COUNTS), C)
    sums = stats.sums + noise.gaussian(plan.release(CLASS_SUMS), (C, d))
    return counts, sums


class SecondOrderStats:
    """Exact per-component count, full sum and second-order statistic (mergeable).

    ``anchors`` (n_components, d): the released class mean of each component's class
    (centred clipping) or ``None`` (uncentred, no clipping beyond the record bound R).
    ``first_order=False`` skips the counts and sums (one component per class reuses the
    class release, so accumulating them again would be wasted work on every record).
    """

    def __init__(self, n_components: int, dim: int, sub_dim: int, covariance: str, *,
                 anchors: np.ndarray | None = None, clip: float | None = None,
                 first_order: bool = True) -> None:
        if (anchors is None) != (clip is None):
            raise ValueError("anchors and clip go together (centred clipping) or not at all")
        self.covariance = covariance
        self.anchors = anchors
        self.clip = clip
        self.dim = dim
        self.first = GroupSums.zeros(n_components, dim) if first_order else None
        shape = {"spherical": (n_components,), "diagonal": (n_components, sub_dim),
                 "lowrank": (n_components, sub_dim, sub_dim)}[covariance]
        self.second = np.zeros(shape)
        self.residual = np.zeros(n_components)

    def add(self, X: np.ndarray, component: np.ndarray, basis: np.ndarray | None) -> None:
        """X: bounded records; component: global ids; basis: the subspace V or None."""
        if self.first is not None:
            self.first.add(X, component)
        # float32 records stay float32: the released anchors and basis are cast to the
        # records' dtype instead of the records being promoted to a float64 copy (at 60k x
        # 1280 that copy and the float64 product were a quarter of the fit). The argument
        # is GramAccumulator.add's: every entry of Z^T Z is a chunk's sum of products
        # bounded by R^2 (or C^2), rounded at ~6e-8 relative, ~1e-4 R^2 per 40k rows,
        # three orders of magnitude below the second-moment noise at any calibrated
        # epsilon (tests/test_fast_fit.py measures it against float64).
        if self.anchors is not None:
            # cast the (components, d) anchors, then gather: no (m, d) float64 gather
            X = bound_norms(X - self.anchors.astype(X.dtype, copy=False)[component],
                            self.clip, normalize=False)
        Z = X @ basis.astype(X.dtype, copy=False) if basis is not None else X
        sq_norm = np.einsum("ij,ij->i", X, X)
        if self.covariance == "spherical":
            self.second += np.bincount(component, sq_norm, minlength=len(self.second))
            return
        self.residual += np.bincount(
            component, np.maximum(sq_norm - np.einsum("ij,ij->i", Z, Z), 0.0),
            minlength=len(self.residual))
        for j in np.unique(component):
            Zj = Z[component == j]
            self.second[j] += (Zj * Zj).sum(0) if self.covariance == "diagonal" else Zj.T @ Zj

    def __iadd__(self, other: SecondOrderStats) -> SecondOrderStats:
        if self.first is not None:
            self.first += other.first
        self.second += other.second
        self.residual += other.residual
        return self


@dataclass
class MixtureParams:
    """Released, repaired mixture over all classes (components flattened)."""

    component_class: np.ndarray  # (K,) class index of each component
    weights: np.ndarray  # (K,) noisy counts, > 0 after repair
    means: np.ndarray  # (K, d)
    covariances: np.ndarray  # (K,), (K, r) or (K, r, r)
    residual_var: np.ndarray  # (K,) variance per residual dimension
    class_totals: np.ndarray  # (C,) noisy class counts, >= 0


def release_mixture(
    stats: SecondOrderStats,
    component_class: np.ndarray,
    plan: PrivacyPlan,
    noise: NoiseSource,
    *,
    basis: np.ndarray | None,
    min_count: float,
    radius: float,
    covariance_floor: float,
    released_first: tuple[np.ndarray, np.ndarray] | None = None,
    ridge: float = 0.0,
) -> MixtureParams:
    """Add the plan's noise to ``stats`` and repair into mixture parameters.

    Releases ``component_counts`` (L2 sensitivity 1) and ``component_sums`` (R), then
    ``second_moments`` (R^2, or C^2 with centred clipping; the module docstring derives
    them). ``released_first``: (noisy counts, noisy sums) already released as
    ``class_counts`` / ``class_sums`` (one component per class reuses the class release);
    then only the second-order statistic is released here. ``ridge`` (lowrank only): each
    repaired covariance gets ``ridge * noise_ridge(...)`` added on its diagonal
    (post-processing of released values, no budget).
    """
    K, d = len(component_class), stats.dim
    second_release = plan.release(SECOND_MOMENTS)
    if released_first is None:
        if stats.first is None:
            raise ValueError("stats were accumulated without first-order statistics; pass "
                             "the released counts and sums as released_first")
        noisy_counts = stats.first.counts + noise.gaussian(plan.release(COMPONENT_COUNTS), K)
        noisy_sums = stats.first.sums + noise.gaussian(plan.release(COMPONENT_SUMS), (K, d))
    else:
        noisy_counts, noisy_sums = released_first
    if stats.covariance == "lowrank":
        r = stats.second.shape[1]
        noisy_second = stats.second + np.stack(
            [noise.symmetric_gaussian(second_release, r) for _ in range(K)])
    else:
        noisy_second = stats.second + noise.gaussian(second_release, stats.second.shape)
    noisy_residual = (stats.residual + noise.gaussian(second_release, K)
                      if stats.covariance != "spherical" else np.zeros(K))

    keep = noisy_counts >= min_count
    n = noisy_counts[keep]
    means = project_to_ball(noisy_sums[keep] / n[:, None], radius)
    second = noisy_second[keep] / n.reshape((-1,) + (1,) * (noisy_second.ndim - 1))
    # Second moments are about the anchor (0 when uncentred): subtract the mean's offset.
    offset = means - stats.anchors[keep] if stats.anchors is not None else means
    if stats.covariance == "spherical":
        covs = np.maximum((second - np.einsum("ij,ij->i", offset, offset)) / d,
                          covariance_floor)
        residual_var = np.zeros(len(n))
    else:
        mz = offset @ basis if basis is not None else offset
        res_energy = noisy_residual[keep] / n - (
            np.einsum("ij,ij->i", offset, offset) - np.einsum("ij,ij->i", mz, mz))
        free_dims = d - mz.shape[1]
        residual_var = (np.maximum(res_energy, 0.0) / free_dims if free_dims > 0
                        else np.zeros(len(n)))
        if stats.covariance == "diagonal":
            covs = np.maximum(second - mz**2, covariance_floor)
        else:
            # Floor the subspace eigenvalues at the residual variance: the subspace holds
            # the top directions of the data, so no direction in it should carry less
            # variance than a direction outside it; noise pushes small eigenvalues below.
            floors = np.maximum(residual_var, covariance_floor)
            # One BLAS thread for these (r, r) eigh: threads only add hand-offs there, and
            # in a fit, right after scipy's (d, d) eigh, its BLAS threads still spin on the
            # cores: 4.4 ms each threaded against 0.3 ms (r = 64, 2 cores, measured).
            with one_blas_thread():
                covs = np.array([_psd_repair(S - np.outer(m, m), f)
                                 for S, m, f in zip(second, mz, floors, strict=True)]
                                ).reshape((len(n), *second.shape[1:]))
            if ridge > 0:
                r = covs.shape[-1]
                covs = covs + (ridge * noise_ridge(second_release.sigma, r, n)
                               )[:, None, None] * np.eye(r)
    return MixtureParams(component_class[keep], n, means, covs, residual_var,
                         class_totals=np.zeros(0))


def noise_ridge(sigma: float, dim: int, counts: np.ndarray) -> np.ndarray:
    """Per component, the spectral norm of the noise on its released covariance:
    ``2 sigma sqrt(dim) / n_c``.

    The released (dim x dim) second moment carries symmetric Gaussian noise of ``sigma``
    per entry (``NoiseSource.symmetric_gaussian``); divided by the noisy count n_c it is
    the covariance's noise, a Wigner matrix whose eigenvalues fill [-2 s sqrt(dim),
    2 s sqrt(dim)] with s = sigma / n_c (tests/test_covariance_ridge.py checks the edge
    statistically). Adding that much to every eigenvalue (a ridge at the noise scale, as
    DP least squares regularises its noisy Gram) lifts the directions the noise pushed
    down, which eigenvalue flooring alone leaves at the floor. It reads only released or
    public values (sigma from the plan, the noisy count): post-processing, no budget.
    sigma = 0 (eps = inf) gives 0. ``counts`` below 1 count as 1.
    """
    return 2.0 * float(sigma) * np.sqrt(dim) / np.maximum(np.asarray(counts, float), 1.0)


def pooled_mixture(
    class_counts: np.ndarray,
    class_sums: np.ndarray,
    basis: np.ndarray,
    eigenvalues: np.ndarray,
    trace: float,
    *,
    min_count: float,
    radius: float,
    covariance_floor: float,
) -> MixtureParams:
    """One Gaussian per class with a shared ("tied") covariance, from releases already made.

    Post-processing only: the noisy global second moment M (whose top eigenpairs give V and
    V^T M V = diag(eigenvalues)), the noisy class counts N_c and sums. The pooled within-class
    covariance in the subspace is diag(eigenvalues)/N - sum_c (N_c/N) mu_c mu_c^T (mu_c =
    V^T mean_c), and the residual variance is what trace(M)/N leaves outside the subspace
    after the class means. No per-class second moment is released, so the budget goes to
    the subspace, the counts and the sums; the price is one covariance for all classes.
    """
    keep = class_counts >= min_count
    n = class_counts[keep]
    means = project_to_ball(class_sums[keep] / n[:, None], radius)
    total = n.sum()
    w = n / total
    mz = means @ basis
    within = np.diag(eigenvalues / total) - (w[:, None] * mz).T @ mz
    res_means = np.einsum("ij,ij->i", means, means) - np.einsum("ij,ij->i", mz, mz)
    res_energy = (trace - eigenvalues.sum()) / total - w @ res_means
    free_dims = means.shape[1] - basis.shape[1]
    residual_var = max(res_energy, 0.0) / free_dims if free_dims > 0 else 0.0
    cov = _psd_repair(within, max(residual_var, covariance_floor))
    K = len(n)
    return MixtureParams(np.flatnonzero(keep), n, means, np.repeat(cov[None], K, axis=0),
                         np.full(K, residual_var), class_totals=np.zeros(0))


def _psd_repair(cov: np.ndarray, floor: float) -> np.ndarray:
    sym = (cov + cov.T) / 2.0
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.maximum(vals, floor)) @ vecs.T


def sample_mixture(
    params: MixtureParams,
    basis: np.ndarray | None,
    counts_per_class: np.ndarray,
    rng: np.random.Generator,
    *,
    normalize: bool,
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``counts_per_class[c]`` samples of class c, in random order; returns (X float32,
    class indices). One shard of :class:`MixtureSampler` (build that once to draw many)."""
    sampler = MixtureSampler(params, basis, normalize=normalize, radius=radius)
    return sampler.draw(np.asarray(counts_per_class, dtype=np.int64), rng)


def shard_sizes(n: int, shard_rows: int) -> np.ndarray:
    """Rows of each shard of an n-row sample cut into shards of ``shard_rows``: full shards
    and a shorter last one; one empty shard for n = 0 (a set always has a shard)."""
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    sizes = np.full(-(-n // shard_rows), shard_rows, dtype=np.int64)
    sizes[-1] = n - shard_rows * (len(sizes) - 1)
    return sizes


def shard_class_counts(counts_per_class: np.ndarray, sizes: np.ndarray, stop: int,
                       rng: np.random.Generator) -> np.ndarray:
    """How many records of each class shards ``0..stop-1`` hold: (stop, C).

    The exact class totals ``counts_per_class`` are dealt to the shards (``sizes`` rows
    each) by successive multivariate hypergeometric draws without replacement: exactly the
    class counts that cutting a randomly permuted n-row sample into those shards gives,
    which is what sampling everything at once and shuffling did. Only C numbers per shard
    are drawn, so every process replays the deal of the shards before its own cheaply
    and all processes agree on it.
    """
    remaining = np.asarray(counts_per_class, dtype=np.int64).copy()
    out = np.zeros((stop, len(remaining)), dtype=np.int64)
    for s in range(stop):
        if sizes[s] == remaining.sum():
            out[s] = remaining
        elif sizes[s]:
            out[s] = rng.multivariate_hypergeometric(remaining, int(sizes[s]),
                                                     method="marginals")
        remaining -= out[s]
    return out


def default_threads(cpu_max: str | Path = CPU_MAX, load: float | None = None) -> int:
    """Worker threads for sampling: :func:`dpsynth.cpu_threads.cpu_threads`, at most 8.

    The cores this process may use (its affinity, capped by a pod's cgroup CPU quota,
    which the affinity does not show) less those other work keeps busy (``load``; the
    load average when None), or the user's ``DPSYNTH_THREADS``/``OMP_NUM_THREADS``. More
    threads than that would only be throttled or descheduled; the samples do not depend
    on it.
    """
    return cpu_threads(cap=8, cpu_max=cpu_max, load=load)


#: How close to s^2 an eigenvalue of C may be, relative to C's scale, and count as the
#: floor: the repair puts floored eigenvalues at s^2 exactly, and eigh returns them within
#: ~1e-16 relative, on either side. Those get exactly 0 in A: their square roots (~1e-8)
#: would be rounding noise, which the square root magnifies (equal fits computed in
#: different orders would sample visibly different bits). The variance this drops or
#: adds is below 1e-9 relative, far under float32's 1e-7 rounding of every draw.
EXCESS_RTOL = 1e-9


def _excess_factor(cov: np.ndarray, residual_var: float) -> np.ndarray | None:
    """float32 A with A A^T = cov - residual_var I (per-coordinate standard deviations when
    ``cov`` is a diagonal (r,)), or None when that is not positive semi-definite."""
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim == 1:
        vals = cov - residual_var
    else:
        vals, vecs = np.linalg.eigh(cov - residual_var * np.eye(len(cov)))
    floor = EXCESS_RTOL * (residual_var + np.abs(vals).max(initial=0.0))
    if vals.min(initial=0.0) < -floor:
        return None
    root = np.sqrt(np.where(vals > floor, vals, 0.0))
    return (root if cov.ndim == 1 else (vecs * root) @ vecs.T).astype(np.float32)


class MixtureSampler:
    """Draws shards of samples from a released mixture (post-processing: no budget).

    Everything per component that does not depend on the draw (the Cholesky factor of its
    covariance, float32 copies of the mean and the subspace basis) is computed once, so a
    sampler serves any number of shards. Work happens in float32, the synthetic set's
    dtype, and in the subspace coordinates: a component with subspace V (d, r), mean mu,
    covariance C (r, r) in the subspace and residual variance s^2 gives

        x = mu + V L g + s (I - V V^T) h  =  mu + s h + (L g - s V^T h) V^T,

    g ~ N(0, I_r), h ~ N(0, I_d), L L^T = C: the only d-dimensional draw is the isotropic
    residual h (skipped when s = 0). That costs two (m, d) x (d, r) products; one is
    enough when C - s^2 I is positive semi-definite, which the repair makes it for lowrank
    and tied fits (it floors C's eigenvalues at s^2):

    x = mu + s h + (A g) V^T,   A A^T = C - s^2 I,

    since s h = s (I - V V^T) h + s V (V^T h) and V^T h ~ N(0, I_r) is independent of the
    residual part, so the subspace gets covariance s^2 I + (C - s^2 I) = C: the same
    distribution. A is the symmetric square root, a continuous function of C like the
    Cholesky factor (floored eigenvalues give zero columns, whatever their eigenvectors).
    float32 is safe here: the draws are written as float32 anyway, V is
    orthonormal to ~1e-7 in float32, and the rounding of a float32 product of bounded
    values (|x| <= R after bounding) is ~1e-7 relative, far below the sampling noise of
    any moment (test_streaming.py checks the moments of float32 shards against the model).
    Memory: one shard (m, d) plus the temporaries of one block of draws per worker thread;
    nothing of size n.
    """

    #: Draws made at a time: the temporaries of one block stay small (~20 MB at d = 1280).
    block_rows = 4096

    def __init__(self, params: MixtureParams, basis: np.ndarray | None, *, normalize: bool,
                 radius: float, threads: int | None = None) -> None:
        self.params = params
        self.normalize = bool(normalize)
        self.radius = float(radius)
        self.threads = default_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        self.dim = int(params.means.shape[1])
        self.basis = None if basis is None else np.asarray(basis, dtype=np.float32)
        self.basis_t = None if basis is None else np.ascontiguousarray(self.basis.T)
        self.means = np.asarray(params.means, dtype=np.float32)
        covs = np.asarray(params.covariances, dtype=np.float64)
        # Per component: a scalar standard deviation (spherical), per-coordinate standard
        # deviations (diagonal) or the transposed Cholesky factor (full), all float32.
        # Cholesky, not an eigenbasis: repaired covariances are positive definite, and the
        # factor is a continuous function of the covariance (eigenvectors of repeated,
        # floored eigenvalues are not), so equal fits give equal samples.
        if covs.ndim < 3:
            self.factors = np.sqrt(covs).astype(np.float32)
        else:
            self.factors = np.array([np.linalg.cholesky(c).T for c in covs],
                                    dtype=np.float32).reshape(covs.shape)
        residual_var = np.asarray(params.residual_var, dtype=np.float64)
        self.residual_sd = np.sqrt(residual_var).astype(np.float32)
        # A (one product instead of two) where C - s^2 I is positive semi-definite.
        self.excess: list[np.ndarray | None] = [
            _excess_factor(c, s2) if basis is not None and covs.ndim > 1 and s2 > 0
            else None for c, s2 in zip(covs, residual_var, strict=True)]
        self.components = [np.flatnonzero(params.component_class == c)
                           for c in range(int(params.component_class.max(initial=-1)) + 1)]

    def draw(self, counts_per_class: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """``counts_per_class[c]`` samples of class c in random order: (X float32 (m, d),
        class indices (m,)); classes without a component get none. Components are picked
        by their weights within the class.

        ``rng`` draws the random order and the split over components, then spawns one
        child stream per block of ``block_rows`` draws (``SeedSequence.spawn``), and each
        block is drawn, bounded and written straight to its rows by whichever of
        ``threads`` worker threads takes it: the shard is the only (m, d) array (no
        shuffled copy), and it is the same bit for bit for any number of threads, since a
        block's stream and rows do not depend on who draws it. The children are SFC64
        generators, numpy's fastest (its normals cost ~25% less than PCG64's here); the
        d-dimensional residual draw is most of the sampling time, and numpy's normal
        generators release the GIL, so the threads draw in parallel. BLAS is held to one
        thread per worker meanwhile (the workers are the parallelism)."""
        counts = np.array([n_c if c < len(self.components) and len(self.components[c])
                           else 0 for c, n_c in enumerate(counts_per_class)], dtype=np.int64)
        m_total = int(counts.sum())
        X = np.empty((m_total, self.dim), dtype=np.float32)
        cls = np.empty(m_total, dtype=np.int64)
        rows = rng.permutation(m_total)  # rows[k]: where the k-th draw goes
        blocks: list[tuple[int, int, int]] = []  # (component, first draw, size)
        pos = 0
        for c, n_c in enumerate(counts):
            if n_c == 0:
                continue
            comps = self.components[c]
            w = self.params.weights[comps] / self.params.weights[comps].sum()
            for j, m in zip(comps, rng.multinomial(int(n_c), w), strict=True):
                blocks.extend((int(j), pos + start, min(self.block_rows, int(m) - start))
                              for start in range(0, int(m), self.block_rows))
                cls[rows[pos:pos + m]] = c
                pos += int(m)
        streams = [np.random.Generator(np.random.SFC64(seed))
                   for seed in rng.bit_generator.seed_seq.spawn(len(blocks))]
        buffers: dict[int, np.ndarray] = {}  # per worker thread, reused across blocks

        def draw_block(b: int) -> None:
            j, first, size = blocks[b]
            key = threading.get_ident()
            if key not in buffers:
                buffers[key] = np.empty((min(self.block_rows, m_total), self.dim),
                                        dtype=np.float32)
            out = buffers[key][:size]
            self._component(j, out, streams[b])
            bound_norms(out, self.radius, self.normalize, inplace=True)  # row by row
            X[rows[first:first + size]] = out

        workers = min(self.threads, len(blocks))
        # One BLAS thread even for one worker: OpenBLAS splits these skinny products
        # 2-10x slower than it computes them on one core.
        with one_blas_thread():
            if workers <= 1:
                for b in range(len(blocks)):
                    draw_block(b)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    for _ in pool.map(draw_block, range(len(blocks))):
                        pass  # re-raises a worker's exception here
        return X, cls

    def _component(self, j: int, out: np.ndarray, rng: np.random.Generator) -> None:
        """Fill ``out`` (m, d) with draws of component j."""
        m = len(out)
        factor = self.factors[j]
        if factor.ndim == 0:  # spherical: mu + s h in the full space
            rng.standard_normal(out=out, dtype=np.float32)
            out *= factor
            out += self.means[j]
            return
        g = rng.standard_normal((m, len(factor)), dtype=np.float32)
        excess = self.excess[j]
        if excess is not None:  # mu + s h + (A g) V^T: one product
            low = g * excess if excess.ndim == 1 else g @ excess
            rng.standard_normal(out=out, dtype=np.float32)
            self._scale_and_add_product(out, self.residual_sd[j], low)
            out += self.means[j]
            return
        low = g * factor if factor.ndim == 1 else g @ factor  # coordinates, cov C
        if self.basis is None:
            out[...] = low
        else:
            sd = self.residual_sd[j]
            if sd > 0:
                rng.standard_normal(out=out, dtype=np.float32)
                low -= sd * (out @ self.basis)  # remove h's part inside the subspace
                self._scale_and_add_product(out, sd, low)
            else:
                np.matmul(low, self.basis_t, out=out)
        out += self.means[j]

    def _scale_and_add_product(self, out: np.ndarray, scale: float, low: np.ndarray) -> None:
        """out = scale * out + low V^T, as one BLAS gemm (beta = scale) on out's transpose,
        a Fortran-ordered view of the same memory: no (m, d) temporary."""
        done = blas.sgemm(1.0, self.basis, low, trans_b=True, beta=scale, c=out.T,
                          overwrite_c=True)
        if not np.shares_memory(done, out):  # a BLAS that copied: write it back
            out[...] = done.T
