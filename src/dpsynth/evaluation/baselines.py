"""Baselines on the same embeddings and (epsilon, delta): DP class means, DP-SGD, DP-LS,
DP-FC, and closed-form classifiers from a fitted DPSynthesizer's own releases.

DP-SGD uses Opacus for the per-sample clipping and noise. DP-LS and DP-FC follow the
description in Mehta et al., "Differentially Private Image Classification from Features"
(TMLR 2023, arXiv 2211.13403): DP-LS solves a ridge regression on one-hot labels from a
noisy Gram X^T X and a noisy X^T Y; DP-FC is full-batch DP gradient descent on a softmax
linear model, preconditioned by a noisy Gram.

Every noise multiplier comes from one helper, :func:`accounted_multiplier`: dp-accounting's
PLD accountant composed over all noisy releases of a training run, over ``runs`` runs, and
over a Gaussian noisy-max selection (:func:`noisy_argmax`) when the tuning is accounted.
Neighbouring datasets differ by adding or removing one record (DESIGN.md).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dp_accounting
import numpy as np
import torch
from dp_accounting.mechanism_calibration import ExplicitBracketInterval
from dp_accounting.pld import pld_privacy_accountant
from torch import nn

from dpsynth.clustering.stats import nearest_centre
from dpsynth.evaluation.mlp import make_mlp
from dpsynth.gmm.subspace import SUBSPACE_SECOND_MOMENT
from dpsynth.preprocessing import bound_norms
from dpsynth.privacy import NoiseSource, Release, ReleaseSpec, build_plan


def dp_class_means(X: np.ndarray, y: np.ndarray, classes: np.ndarray, epsilon: float,
                   delta: float, *, noise_seed: int | None = None) -> np.ndarray:
    """Noisy class means (k = 1, no covariance). Counts sensitivity 1, sums R = 1."""
    plan = build_plan([ReleaseSpec("class_counts", 1.0, 4.0), ReleaseSpec("class_sums", 1.0)],
                      epsilon, delta, noise_seeded=noise_seed is not None)
    noise = NoiseSource(noise_seed)
    Xb = bound_norms(X, 1.0, normalize=True)
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    idx = np.array([lookup.get(v, -1) for v in np.asarray(y).tolist()], dtype=np.int64)
    if (idx < 0).any():
        raise ValueError(f"labels {sorted(set(np.asarray(y)[idx < 0].tolist()))[:5]} are not "
                         f"in classes={list(lookup)}")
    counts = np.bincount(idx, minlength=len(classes)).astype(float)
    sums = np.zeros((len(classes), X.shape[1]))
    np.add.at(sums, idx, Xb)
    counts += noise.gaussian(plan.release("class_counts"), len(classes))
    sums += noise.gaussian(plan.release("class_sums"), sums.shape)
    return sums / np.maximum(counts, 1.0)[:, None]


def nearest_mean_predict(means: np.ndarray, classes: np.ndarray, X: np.ndarray) -> np.ndarray:
    return classes[nearest_centre(bound_norms(X, 1.0, normalize=True), means)]


# ------------------------------------------------------------------ shared accounting

#: PLD discretisation of the baselines' calibrations (coarser than the plan's 1e-4: the
#: subsampled DP-SGD events of hundreds of steps stay fast, and the pessimistic PLD
#: estimate only ever overstates epsilon).
BASELINE_PLD_DISCRETIZATION = 1e-3


def _pld_accountant() -> pld_privacy_accountant.PLDAccountant:
    return pld_privacy_accountant.PLDAccountant(
        value_discretization_interval=BASELINE_PLD_DISCRETIZATION)


def accounted_multiplier(run_event: Callable[[float], dp_accounting.DpEvent], epsilon: float,
                         delta: float, *, runs: int = 1,
                         selection_multiplier: float | None = None,
                         extra_event: dp_accounting.DpEvent | None = None,
                         gaussian_load: float | None = None) -> float:
    """Smallest noise multiplier z (to the search's tolerance) at which ``runs`` runs of
    ``run_event(z)``, a Gaussian noisy-max selection of noise multiplier
    ``selection_multiplier`` and ``extra_event`` compose to (epsilon, delta) under PLD.

    The one calibration of every baseline here (DP-SGD, DP-LS, DP-FC, tuning free or
    accounted), so that they are compared under the same accountant. ``epsilon = inf``
    gives 0 (no noise).

    ``gaussian_load``: when ``run_event(z)`` composes plain Gaussian mechanisms of noise
    multipliers z * w_i, each used r_i times, the sum of r_i / w_i^2. Such a composition is
    exactly mu-GDP with mu^2 = runs * load / z^2 (+ 1 / selection_multiplier^2), which
    brackets the PLD search tightly, as :mod:`dpsynth.privacy.plan` does; a wide bracket
    would make PLD evaluate a nearly noiseless Gaussian, which is slow. Without it (the
    subsampled DP-SGD events) the bracket is [0.3, 200].
    """
    if math.isinf(epsilon):
        return 0.0
    fixed = [] if extra_event is None else [extra_event]
    if selection_multiplier is not None:
        fixed.append(dp_accounting.GaussianDpEvent(selection_multiplier))

    def event(z: float) -> dp_accounting.DpEvent:
        run = run_event(z)
        composed = run if runs == 1 else dp_accounting.SelfComposedDpEvent(run, runs)
        return dp_accounting.ComposedDpEvent([composed, *fixed]) if fixed else composed

    if gaussian_load is None:
        lower, upper, tol = 0.3, 200.0, 1e-3
    else:
        if extra_event is not None:
            raise ValueError("gaussian_load brackets Gaussian compositions only; pass the "
                             "selection as selection_multiplier")
        spare = dp_accounting.get_sigma_gaussian(epsilon, delta) ** -2
        if selection_multiplier is not None:
            spare -= selection_multiplier ** -2
        if spare <= 0:
            raise ValueError(f"the selection alone spends more than epsilon={epsilon:g}")
        z = math.sqrt(runs * gaussian_load / spare)
        lower, upper, tol = 0.8 * z, 1.25 * z, 5e-4 * z
    return float(dp_accounting.calibrate_dp_mechanism(
        _pld_accountant, event, epsilon, delta,
        bracket_interval=ExplicitBracketInterval(lower, upper), tol=tol))


def accounted_epsilon(event: dp_accounting.DpEvent, delta: float) -> float:
    """PLD epsilon at ``delta`` of ``event``, with the calibration's discretisation."""
    accountant = _pld_accountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def selection_multiplier(n_configs: int, sigma_records: float) -> float:
    """Noise multiplier of a Gaussian noisy max over ``n_configs`` validation correct-counts,
    each perturbed by N(0, sigma_records^2): adding or removing one validation record moves
    every count by at most 1, so the vector of counts has L2 sensitivity sqrt(n_configs)."""
    return sigma_records / math.sqrt(n_configs)


def selection_sigma_records(epsilon: float, delta: float, n_configs: int, *,
                            floor: float = 30.0, max_share: float = 0.5) -> float:
    """Noise std (in validation records) of a noisy max over ``n_configs`` counts: at least
    ``floor``, and enough that the selection spends at most ``max_share`` of the budget in
    GDP terms (mu_sel^2 <= max_share * mu^2, mu the budget's Gaussian-equivalent), so that a
    small epsilon still leaves the training most of it. From public inputs only."""
    if math.isinf(epsilon):
        return floor
    mu = 1.0 / dp_accounting.get_sigma_gaussian(epsilon, delta)
    least_multiplier = 1.0 / (math.sqrt(max_share) * mu)
    return max(floor, least_multiplier * math.sqrt(n_configs))


def noisy_argmax(correct_counts: Sequence[float], sigma_records: float,
                 rng: np.random.Generator) -> int:
    """Index of the largest count after adding N(0, sigma_records^2) to each (no noise when
    ``sigma_records`` is 0: the non-private, tuning-free selection)."""
    counts = np.asarray(correct_counts, dtype=float)
    if sigma_records > 0:
        counts = counts + rng.normal(0.0, sigma_records, size=counts.shape)
    return int(np.argmax(counts))


@dataclass(frozen=True)
class DPSGDConfig:
    hidden: int = 0
    lr: float = 2.0
    epochs: int = 10
    batch_size: int = 2048
    clip: float = 1.0
    momentum: float = 0.9

    def label(self) -> str:
        return (f"hidden={self.hidden},lr={self.lr},epochs={self.epochs},"
                f"batch={self.batch_size},clip={self.clip}")

    def schedule(self, n: int) -> tuple[float, int]:
        """(Poisson sampling rate, optimiser steps) of a training on ``n`` records: what
        :func:`dpsgd_noise_multiplier` accounts for."""
        sample_rate = self.batch_size / n
        return sample_rate, self.epochs * int(round(1 / sample_rate))


def dpsgd_noise_multiplier(sample_rate: float, steps: int, epsilon: float, delta: float,
                           runs: int = 1,
                           extra_event: dp_accounting.DpEvent | None = None) -> float:
    """Noise multiplier making ``runs`` DP-SGD trainings of ``steps`` steps (eps, delta)-DP.

    ``extra_event`` (e.g. a private selection among the runs) is composed in as well.
    """
    def training(sigma: float) -> dp_accounting.DpEvent:
        step = dp_accounting.PoissonSampledDpEvent(sample_rate,
                                                   dp_accounting.GaussianDpEvent(sigma))
        return dp_accounting.SelfComposedDpEvent(step, steps)

    return accounted_multiplier(training, epsilon, delta, runs=runs, extra_event=extra_event)


def train_dpsgd(X: np.ndarray, y: np.ndarray, n_classes: int, config: DPSGDConfig,
                noise_multiplier: float, *, seed: int = 0) -> nn.Module:
    """Opacus DP-SGD (Poisson sampling, per-sample clipping) with a given noise multiplier."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xt, yt),
                                         batch_size=config.batch_size, shuffle=True)
    model = make_mlp(X.shape[1], n_classes, config.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    engine = PrivacyEngine(accountant="prv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Ghost clipping computes per-sample gradient norms without materialising the
        # per-sample gradients: a 512-wide hidden layer at batch 2048 would otherwise need
        # 2048 x 655k floats (5 GB) per step.
        model, opt, criterion, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, criterion=nn.CrossEntropyLoss(),
            noise_multiplier=noise_multiplier, max_grad_norm=config.clip,
            poisson_sampling=True, grad_sample_mode="ghost")
    model.train()
    for _ in range(config.epochs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                criterion(model(xb), yb).backward()
                opt.step()
    model.eval()
    return model


@torch.inference_mode()
def model_accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    pred = model(torch.from_numpy(np.asarray(X, dtype=np.float32))).argmax(1).numpy()
    return float((pred == np.asarray(y)).mean())


# ------------------------------------------------------------------------ DP-LS

#: L2 sensitivity of the joint DP-LS release [upper triangle of X^T X | X^T Y] for
#: ||x|| <= 1 and a one-hot y: adding or removing a record changes the Gram's upper
#: triangle by that of x x^T, of norm <= ||x||^2 <= 1 (NoiseSource.symmetric_gaussian), and
#: X^T Y by x y^T, of Frobenius norm ||x|| ||y|| <= 1; together sqrt(1 + 1).
DPLS_SENSITIVITY = math.sqrt(2.0)
#: L2 sensitivity of a Gram release alone (DP-FC's preconditioner): ||x||^2 <= 1.
GRAM_SENSITIVITY = 1.0


def _class_index(y: np.ndarray, n_classes: int) -> np.ndarray:
    idx = np.asarray(y).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes})")
    return idx


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[_class_index(y, n_classes)]


def least_squares_statistics(X: np.ndarray, y: np.ndarray,
                             n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact (X^T X (d, d), X^T Y (d, K)) of the records L2-normalised to norm 1 (the
    pre-processing every release here assumes) and one-hot labels. Never released as is."""
    Xb = np.asarray(bound_norms(X, 1.0, normalize=True), dtype=np.float64)
    return Xb.T @ Xb, Xb.T @ one_hot(y, n_classes)


@dataclass
class LeastSquaresRelease:
    """A PSD Gram (as eigenpairs) and X^T Y, solved as ridge regressions.

    ``vecs`` (d, r) with eigenvalues ``vals`` (r,); when r < d the Gram is ``residual`` on
    the orthogonal complement of ``vecs`` (a low-rank release plus an isotropic rest, as
    dpsynth's subspace release gives). ``sigma``: noise std of each Gram entry, which sets
    the ridge's unit (:meth:`ridge`). Solving is post-processing of the release.
    """

    vals: np.ndarray
    vecs: np.ndarray
    xty: np.ndarray
    sigma: float
    residual: float = 0.0
    _proj: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._proj = self.vecs.T @ self.xty

    @classmethod
    def from_gram(cls, gram: np.ndarray, xty: np.ndarray, sigma: float) -> LeastSquaresRelease:
        """Eigenvalues of the noisy symmetric Gram clipped at 0: the nearest PSD matrix in
        Frobenius norm, so that a ridge >= 0 keeps the system positive definite."""
        vals, vecs = np.linalg.eigh((gram + gram.T) / 2.0)
        return cls(np.maximum(vals, 0.0), vecs, xty, sigma)

    @property
    def dim(self) -> int:
        return self.vecs.shape[0]

    def ridge(self, scale: float) -> float:
        """``scale`` times the spectral norm of the Gram noise (about sigma * 2 sqrt(d) for a
        symmetric Gaussian matrix; sigma * sqrt(d) is used as the unit): the ridge has to
        swamp the noise's eigenvalues. Public, so choosing among scales costs no budget
        beyond the selection. Without noise the unit is 1."""
        return scale * (self.sigma * math.sqrt(self.dim) if self.sigma > 0 else 1.0)

    def solve(self, ridge: float) -> np.ndarray:
        """W (d, K) minimising ||XW - Y||^2 + ridge ||W||^2 for the released statistics."""
        W = self.vecs @ (self._proj / (self.vals + ridge)[:, None])
        if self.vecs.shape[1] < self.dim:
            rest = self.xty - self.vecs @ self._proj
            W += rest / (self.residual + ridge)
        return W


def dpls_release(noise_multiplier: float) -> Release:
    """The DP-LS release (one Gaussian mechanism over the joint statistics)."""
    return Release("dpls_gram_xty", DPLS_SENSITIVITY, noise_multiplier, scope="global",
                   description="[upper triangle of X^T X | X^T Y], ||x|| <= 1, y one-hot")


def dp_least_squares_release(X: np.ndarray, y: np.ndarray, n_classes: int,
                             noise_multiplier: float, *, noise_seed: int | None = None,
                             stats: tuple[np.ndarray, np.ndarray] | None = None
                             ) -> LeastSquaresRelease:
    """DP-LS statistics: X^T X and X^T Y plus Gaussian noise of std
    ``noise_multiplier * sqrt(2)`` per entry (the Gram's noise symmetric), PSD-repaired.

    Sensitivity (add/remove one record): :data:`DPLS_SENSITIVITY` = sqrt(2). ``stats``: the
    exact :func:`least_squares_statistics` of (X, y), when already computed (one pass over a
    large X serves every epsilon and draw).
    """
    gram, xty = stats if stats is not None else least_squares_statistics(X, y, n_classes)
    release = dpls_release(noise_multiplier)
    noise = NoiseSource(noise_seed)
    return LeastSquaresRelease.from_gram(gram + noise.symmetric_gaussian(release, len(gram)),
                                         xty + noise.gaussian(release, xty.shape),
                                         release.sigma)


def linear_predict(W: np.ndarray, X: np.ndarray, intercept: np.ndarray | None = None
                   ) -> np.ndarray:
    """Arg-max column of X W (+ intercept), X L2-normalised as in training."""
    scores = np.asarray(bound_norms(X, 1.0, normalize=True), dtype=np.float64) @ W
    if intercept is not None:
        scores = scores + intercept
    return scores.argmax(1)


@dataclass
class Selected:
    """A trained linear model chosen on validation: weights (d, K), the chosen grid entry,
    its validation accuracy and the noise multiplier it was trained under."""

    weights: np.ndarray
    config: object
    val_accuracy: float
    noise_multiplier: float


def _select(models: Sequence[np.ndarray], configs: Sequence[object], noise_multiplier: float,
            X_val: np.ndarray, y_val: np.ndarray, sigma_records: float,
            rng: np.random.Generator) -> Selected:
    accs = [float((linear_predict(W, X_val) == np.asarray(y_val)).mean()) for W in models]
    best = noisy_argmax([a * len(y_val) for a in accs], sigma_records, rng)
    return Selected(models[best], configs[best], accs[best], noise_multiplier)


def dp_least_squares(X: np.ndarray, y: np.ndarray, n_classes: int, epsilon: float,
                     delta: float, ridge_scales: Sequence[float], X_val: np.ndarray,
                     y_val: np.ndarray, *, account_tuning: bool,
                     selection_sigma_records: float = 30.0, noise_seed: int | None = None,
                     stats: tuple[np.ndarray, np.ndarray] | None = None,
                     rng: np.random.Generator | None = None) -> Selected:
    """DP-LS with the ridge chosen on the validation split among ``ridge_scales``
    (:meth:`LeastSquaresRelease.ridge` units).

    Every ridge solves the same release, so the grid is post-processing: tuning free
    (``account_tuning=False``) releases at the full (epsilon, delta) and takes the best
    validation accuracy; tuning accounted releases at what a Gaussian noisy max over the
    grid's validation correct-counts (std ``selection_sigma_records``) leaves, and selects
    with that noisy max, so the whole is (epsilon, delta)-DP.
    """
    rng = rng or np.random.default_rng(noise_seed)
    noisy_sel = account_tuning and not math.isinf(epsilon) and len(ridge_scales) > 1
    sel = selection_multiplier(len(ridge_scales), selection_sigma_records) if noisy_sel else None
    z = accounted_multiplier(lambda m: dpls_release(m).dp_event(), epsilon, delta,
                             selection_multiplier=sel, gaussian_load=1.0)
    release = dp_least_squares_release(X, y, n_classes, z, noise_seed=noise_seed, stats=stats)
    models = [release.solve(release.ridge(c)) for c in ridge_scales]
    return _select(models, list(ridge_scales), z, X_val, y_val,
                   selection_sigma_records if noisy_sel else 0.0, rng)


# ------------------------------------------------------------------------ DP-FC


@dataclass(frozen=True)
class DPFCConfig:
    """Full-batch DP gradient descent on a softmax linear model, preconditioned.

    ``gram_share``: fraction of the run's privacy cost (in GDP mu^2) spent on the Gram
    release; the gradient steps share the rest equally. ``lr = 1`` is a Newton step at the
    uniform start (the softmax Hessian there is Gram / n_classes on each class direction).
    ``ridge_scale`` in :meth:`LeastSquaresRelease.ridge` units.
    """

    steps: int = 30
    lr: float = 0.5
    clip: float = 1.0
    ridge_scale: float = 1.0
    gram_share: float = 0.25

    # One run is the grid of one configuration: its own Gram release and its steps.
    def gram_weight(self) -> float:
        """Gram noise multiplier / step noise multiplier: (1/w^2) / (steps + 1/w^2) is
        ``gram_share``."""
        return dpfc_grid_gram_weight([self])

    def gaussian_load(self) -> float:
        return dpfc_grid_load([self])

    def dp_event(self, z: float) -> dp_accounting.DpEvent:
        """Both releases of one run at step noise multiplier z (adaptive composition)."""
        return dpfc_grid_event([self], z)

    def label(self) -> str:
        return (f"steps={self.steps},lr={self.lr},clip={self.clip},"
                f"ridge={self.ridge_scale},gram_share={self.gram_share}")


def dpfc_gram_release(noise_multiplier: float) -> Release:
    """DP-FC's preconditioner: the Gram's upper triangle, sensitivity ||x||^2 <= 1."""
    return Release("dpfc_gram", GRAM_SENSITIVITY, noise_multiplier, scope="global",
                   description="upper triangle of X^T X, ||x|| <= 1")


def dpfc_gradient_release(noise_multiplier: float, config: DPFCConfig) -> Release:
    """One full-batch gradient per step: the sum of per-record gradients each clipped to
    Frobenius norm ``clip``, so adding or removing a record moves it by at most ``clip``."""
    return Release("dpfc_gradient", config.clip, noise_multiplier, repetitions=config.steps,
                   scope="global", description="sum of clipped per-record softmax gradients")


def per_record_gradient_norms(X: np.ndarray, residual: np.ndarray,
                              x_norms: np.ndarray | None = None) -> np.ndarray:
    """Frobenius norms of the per-record softmax gradients x (p - y)^T: ||x|| ||p - y||
    (each gradient is rank one). ``x_norms``: the records' norms, when already known."""
    if x_norms is None:
        x_norms = np.linalg.norm(np.asarray(X, dtype=np.float64), axis=1)
    return x_norms * np.linalg.norm(residual, axis=1)


def clipped_gradient_sum(Xb: np.ndarray, Y: np.ndarray, W: np.ndarray, clip: float,
                         x_norms: np.ndarray | None = None) -> np.ndarray:
    """Sum over records of the softmax cross-entropy gradient w.r.t. W (d, K), each record's
    clipped to Frobenius norm ``clip``: DP-FC's per-step statistic before noise.

    The two products over all records run in ``Xb``'s dtype: float32 embeddings are not
    copied to float64 at every step (a 54k x 1280 copy is most of a step's time); rounding
    is ~1e-7 relative, orders of magnitude below the step's noise (std z * clip, z >= 1).
    The clipping factors are computed in float64 from ``x_norms`` (the records' norms,
    computed once by the caller, or here)."""
    logits = (Xb @ W.astype(Xb.dtype)).astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    P = np.exp(logits)
    P /= P.sum(1, keepdims=True)
    R = P - Y
    # Per-record clipping without materialising the (n, d, K) gradients.
    norms = per_record_gradient_norms(Xb, R, x_norms)
    factor = np.minimum(1.0, clip / np.maximum(norms, 1e-12))
    return (Xb.T @ (R * factor[:, None]).astype(Xb.dtype)).astype(np.float64)


def dpfc_grid_gram_weight(grid: Sequence[DPFCConfig]) -> float:
    """Gram noise multiplier / step noise multiplier when one Gram release serves every
    configuration of ``grid`` (tuning accounted): the Gram takes the grid's common
    ``gram_share`` of the whole grid's mu^2 (one configuration: that run's own Gram,
    :meth:`DPFCConfig.gram_weight`)."""
    shares = {c.gram_share for c in grid}
    if len(shares) != 1:
        raise ValueError(f"a shared Gram release needs one gram_share, got {sorted(shares)}")
    share = shares.pop()
    return math.sqrt((1.0 - share) / (share * sum(c.steps for c in grid)))


def dpfc_grid_event(grid: Sequence[DPFCConfig], z: float) -> dp_accounting.DpEvent:
    """One shared Gram release and every configuration's gradient steps at step noise
    multiplier z."""
    return dp_accounting.ComposedDpEvent([
        dpfc_gram_release(z * dpfc_grid_gram_weight(grid)).dp_event(),
        *(dpfc_gradient_release(z, c).dp_event() for c in grid)])


def dpfc_grid_load(grid: Sequence[DPFCConfig]) -> float:
    """:func:`accounted_multiplier`'s ``gaussian_load`` of :func:`dpfc_grid_event`."""
    return sum(c.steps for c in grid) + dpfc_grid_gram_weight(grid) ** -2


def dpfc_preconditioner(gram: np.ndarray, noise_multiplier: float,
                        noise: NoiseSource) -> LeastSquaresRelease:
    """Release ``dpfc_gram`` (sensitivity 1) from the exact Gram, PSD-repaired."""
    release = dpfc_gram_release(noise_multiplier)
    return LeastSquaresRelease.from_gram(gram + noise.symmetric_gaussian(release, len(gram)),
                                         np.zeros((len(gram), 0)), release.sigma)


def train_dpfc(X: np.ndarray, y: np.ndarray, n_classes: int, config: DPFCConfig,
               noise_multiplier: float, *, noise_seed: int | None = None,
               gram: np.ndarray | None = None,
               preconditioner: LeastSquaresRelease | None = None) -> np.ndarray:
    """DP-FC weights (d, K): releases the Gram (noise multiplier ``noise_multiplier *
    gram_weight``), then ``steps`` noisy clipped full-batch gradients (``noise_multiplier``
    each), W <- W - lr * K * P^-1 g with P the PSD-repaired noisy Gram + ridge.

    ``gram``: the exact X^T X of the normalised records, when already computed.
    ``preconditioner``: a Gram release already made (and paid for) by the caller, shared
    by several configurations; then no Gram is released here."""
    Xb = bound_norms(X, 1.0, normalize=True)  # float32 stays float32: see the gradient
    x_norms = np.linalg.norm(np.asarray(Xb, dtype=np.float64), axis=1)
    Y = one_hot(y, n_classes)
    d = Xb.shape[1]
    noise = NoiseSource(noise_seed)
    pre = preconditioner or dpfc_preconditioner(
        gram if gram is not None else least_squares_statistics(X, y, n_classes)[0],
        noise_multiplier * config.gram_weight(), noise)
    ridge = pre.ridge(config.ridge_scale)
    step_release = dpfc_gradient_release(noise_multiplier, config)
    W = np.zeros((d, n_classes))
    for _ in range(config.steps):
        grad = (clipped_gradient_sum(Xb, Y, W, config.clip, x_norms)
                + noise.gaussian(step_release, (d, n_classes)))
        # P^-1 grad through the eigenpairs: the inverse of the repaired Gram + ridge.
        W -= config.lr * n_classes * (pre.vecs @ ((pre.vecs.T @ grad)
                                                  / (pre.vals + ridge)[:, None]))
    return W


def dp_fc(X: np.ndarray, y: np.ndarray, n_classes: int, epsilon: float, delta: float,
          grid: Sequence[DPFCConfig], X_val: np.ndarray, y_val: np.ndarray, *,
          account_tuning: bool, selection_sigma_records: float = 30.0,
          noise_seed: int | None = None, gram: np.ndarray | None = None,
          rng: np.random.Generator | None = None) -> Selected:
    """DP-FC, best of ``grid`` on the validation split.

    Tuning free: every configuration trained at the full (epsilon, delta), the best
    validation accuracy taken (its cost not accounted). Tuning accounted: one Gram release
    shared by every configuration (the ridge is post-processing of it) and every
    configuration's steps at one step noise multiplier such that these and a Gaussian noisy
    max over the validation correct-counts compose to (epsilon, delta)
    (:func:`dpfc_grid_event`).
    """
    rng = rng or np.random.default_rng(noise_seed)
    seeds = (list(np.random.SeedSequence(noise_seed).generate_state(len(grid) + 1))
             if noise_seed is not None else [None] * (len(grid) + 1))
    pre = None
    if account_tuning and not math.isinf(epsilon):
        sel = selection_multiplier(len(grid), selection_sigma_records) if len(grid) > 1 else None
        z = accounted_multiplier(lambda m: dpfc_grid_event(grid, m), epsilon, delta,
                                 selection_multiplier=sel, gaussian_load=dpfc_grid_load(grid))
        multipliers = [z] * len(grid)
        sigma_records = selection_sigma_records if sel is not None else 0.0
        if gram is None:
            gram = least_squares_statistics(X, y, n_classes)[0]
        pre = dpfc_preconditioner(gram, z * dpfc_grid_gram_weight(grid),
                                  NoiseSource(None if seeds[-1] is None else int(seeds[-1])))
    else:
        multipliers = [accounted_multiplier(c.dp_event, epsilon, delta,
                                            gaussian_load=c.gaussian_load()) for c in grid]
        sigma_records = 0.0
    models = [train_dpfc(X, y, n_classes, c, m, noise_seed=None if s is None else int(s),
                         gram=gram, preconditioner=pre)
              for c, m, s in zip(grid, multipliers, seeds, strict=False)]
    chosen = _select(models, list(grid), multipliers[0], X_val, y_val, sigma_records, rng)
    chosen.noise_multiplier = multipliers[list(grid).index(chosen.config)]
    return chosen


# --------------------------------------------- closed forms from dpsynth's releases
# These read only a fitted DPSynthesizer's released (already DP) attributes: computing them
# is post-processing and costs no privacy budget beyond the synthesizer's own.


def _pooled_covariance(synth) -> tuple[np.ndarray | None, np.ndarray, float]:
    """(basis V (d, q) or None, pooled covariance A in V's coordinates (q, q) or in the
    embedding space (d, d) without a basis, isotropic residual variance outside V)."""
    w = np.asarray(synth.weights_, dtype=float)
    w = w / w.sum()
    covs = np.asarray(synth.covariances_, dtype=float)
    basis = synth.subspace_
    d = synth.n_features_in_
    if covs.ndim == 1:  # spherical: one variance per component, whole space
        return None, np.eye(d) * float(w @ covs), 0.0
    if covs.ndim == 2:  # diagonal
        covs = np.stack([np.diag(c) for c in covs])
    pooled = np.einsum("k,kij->ij", w, covs)
    residual = float(w @ np.asarray(synth.residual_var_, dtype=float))
    return basis, pooled, max(residual, synth.covariance_floor)


def released_lda(synth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plug-in LDA from the fitted synthesizer's released mixture: component means, a
    pooled covariance (weights-averaged component covariances: V A V^T + s (I - V V^T)),
    log component weights. Returns (coef (d, K), intercept (K,), component_class (K,)):
    the class of ``component_class[argmax(x coef + intercept)]``. One component per class
    (the default) is plain LDA."""
    basis, A, s = _pooled_covariance(synth)
    means = np.asarray(synth.means_, dtype=float)  # (K, d)
    if basis is None:
        coef = np.linalg.solve(A, means.T)
    else:
        proj = basis.T @ means.T  # (q, K)
        coef = basis @ np.linalg.solve(A, proj) + (means.T - basis @ proj) / s
    w = np.asarray(synth.weights_, dtype=float)
    intercept = -0.5 * np.einsum("kd,dk->k", means, coef) + np.log(w / w.sum())
    return coef, intercept, np.asarray(synth.component_class_)


def released_least_squares(synth) -> LeastSquaresRelease | None:
    """DP-LS statistics from the synthesizer's releases: the Gram as its released top
    eigenpairs (V, lambda) plus the released trace's remainder spread evenly over the
    complement, and X^T Y as the released class sums (records normalised, labels one-hot:
    column c of X^T Y is class c's sum). ``None`` when no Gram was released (no subspace).
    """
    clusters = synth.clusters_
    if clusters.subspace is None or clusters.eigenvalues is None:
        return None
    V, lam = clusters.subspace, np.asarray(clusters.eigenvalues, dtype=float)
    d, r = V.shape
    residual = max(clusters.trace - lam.sum(), 0.0) / (d - r) if d > r else 0.0
    plan = synth.privacy_plan_
    sigma = (plan.release(SUBSPACE_SECOND_MOMENT).sigma if SUBSPACE_SECOND_MOMENT in plan
             else 0.0)
    return LeastSquaresRelease(np.maximum(lam, 0.0), V, np.asarray(clusters.class_sums).T,
                               sigma, residual)
