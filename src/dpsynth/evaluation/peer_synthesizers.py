"""Peer DP synthesizers on the same embeddings (issue 26): DP-MERF and Private Evolution.

Both take L2-normalised embeddings and labels and return synthetic embeddings and labels
(``fit(X, y, classes)`` then ``sample(n)``), so that the utility benchmark trains the same
two-layer MLP on their samples as on dpsynth's. Neither looks at any public data: the
encoder is public, the rest is the private training split.

Privacy model as in DESIGN.md: neighbouring datasets differ by adding or removing one
record; every noisy release is a Gaussian mechanism listed as a
:class:`~dpsynth.privacy.ReleaseSpec` (name, L2 sensitivity, relative noise, repetitions),
and :func:`~dpsynth.privacy.build_plan` calibrates one scale so that the composition is
(epsilon, delta)-DP under dp-accounting's PLD accountant (RDP as a cross-check), exactly as
:func:`dpsynth.evaluation.baselines.dp_class_means` does. Everything after the releases
(the generator's training, resampling, variation, sampling) reads only released values and
data-independent randomness: post-processing. Hyperparameters are constants fixed here (no
tuning on the private set), so there is no selection to account for.

DP-MERF (Harder, Adamczewski, Park, "DP-MERF: Differentially Private Mean Embeddings with
Random Features for Practical Privacy-preserving Data Generation", AISTATS 2021):
    Random Fourier features phi(x) = [cos(x W), sin(x W)] / sqrt(D), W (d, D) with i.i.d.
    N(0, 1 / lengthscale^2) entries (data independent, from ``random_state``): phi
    approximates a Gaussian kernel and ||phi(x)|| = 1 for EVERY x (cos^2 + sin^2 = 1 per
    frequency), whatever the record's norm.
    Releases (per class c; classes partition the records, so the K rows form one release):
      * ``merf_class_sums``: S_c = sum_{i in c} phi(x_i), a (K, 2D) matrix. Adding or
        removing one record changes exactly one row by phi(x), of L2 norm 1: sensitivity 1.
      * ``merf_class_counts``: n_c, sensitivity 1, at ``count_noise_weight`` times the sums'
        noise multiplier (counts are large; they need little budget).
    Composition: two Gaussian mechanisms, one calibrated scale (PLD) to (epsilon, delta).
    Post-processing: the target class mean embedding is S~_c / max(n~_c, 1); a generator
    G(z, c) = normalize(MLP([z, onehot(c)])) is trained with Adam to minimise
    sum_c p_c || target_c - mean_b phi(G(z_b, c)) ||^2 (the paper's objective with its
    class-conditional embedding), and samples are drawn with class proportions p ~ n~.

Private Evolution in embedding space (Lin, Gopi, Kulkarni, Nori, Yekhanin, "Differentially
Private Synthetic Data via Foundation Model APIs 1: Images", ICLR 2024; microsoft/DPSDA),
public-data-free:
    RANDOM_API: ``population`` unit vectors per class, drawn from the public random state
    (i.i.d. |N(0, I)| normalised when the encoder's features are non-negative, a public
    property of the architecture, else N(0, I) normalised).
    VARIATION_API: Gaussian perturbation x + s_t g / sqrt(d), g ~ N(0, I), re-normalised;
    s_t decays geometrically from ``variation_start`` to ``variation_end``.
    Iteration t = 1..T: every private record votes for its nearest synthetic embedding of
    its own class (Euclidean on normalised rows); the vote histogram gets Gaussian noise;
    bins under ``threshold`` noise stds are zeroed (PE's threshold H); the next population
    is drawn from the noisy histogram and varied (except after the last vote).
    Release ``pe_vote_histogram`` (one per iteration, ``repetitions = T``): the histogram
    over all K * population candidates. A record casts one vote per iteration, so adding
    or removing it changes one bin by 1: L2 sensitivity 1 per iteration (the per-class
    histograms are disjoint slices of this one release: parallel composition). T Gaussian
    mechanisms composed (PLD) to (epsilon, delta). The class proportions come from the
    last histogram's noisy totals (post-processing).
    Sampling: a candidate drawn from the last noisy histogram, varied at the last scale
    (post-processing; PE's own way of generating more samples than the population).
"""

from __future__ import annotations

import math

import numpy as np

from dpsynth.preprocessing import bound_norms
from dpsynth.privacy import NoiseSource, PrivacyPlan, ReleaseSpec, build_plan

MERF_SUMS = "merf_class_sums"
MERF_COUNTS = "merf_class_counts"
PE_HISTOGRAM = "pe_vote_histogram"


def _class_index(y: np.ndarray, classes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    classes = np.unique(y) if classes is None else np.asarray(classes)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    idx = np.array([lookup.get(v, -1) for v in y.tolist()], dtype=np.int64)
    if (idx < 0).any():
        raise ValueError(f"y has labels {sorted(set(y[idx < 0].tolist()))[:5]} that are not "
                         f"in classes={list(lookup)}")
    return classes, idx


def _check_xy(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or len(X) != len(np.asarray(y)) or len(X) == 0:
        raise ValueError(f"need X (n, d) and y (n,) with n > 0; got X {X.shape}, "
                         f"y {np.asarray(y).shape}")
    return X


def _sample_classes(rng: np.random.Generator, proportions: np.ndarray, n: int) -> np.ndarray:
    """Class indices of n samples in proportion to ``proportions`` (largest remainders)."""
    p = np.maximum(np.asarray(proportions, dtype=float), 0.0)
    p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
    counts = np.floor(p * n).astype(int)
    order = np.argsort(-(p * n - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), counts))


# ----------------------------------------------------------------------------- DP-MERF


def merf_plan(epsilon: float, delta: float, count_noise_weight: float = 4.0, *,
              noise_seeded: bool = False) -> PrivacyPlan:
    """The DP-MERF releases (module docstring) calibrated to (epsilon, delta)."""
    return build_plan([
        ReleaseSpec(MERF_SUMS, 1.0, description="per-class sum of random Fourier features, "
                                                "||phi(x)|| = 1"),
        ReleaseSpec(MERF_COUNTS, 1.0, count_noise_weight, description="per-class counts"),
    ], epsilon, delta, noise_seeded=noise_seeded)


def random_fourier_features(X: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """phi(X) = [cos(X W), sin(X W)] / sqrt(D): rows of L2 norm exactly 1."""
    proj = np.asarray(X, dtype=np.float64) @ frequencies
    return np.hstack([np.cos(proj), np.sin(proj)]) / math.sqrt(frequencies.shape[1])


def merf_class_sums(X: np.ndarray, class_idx: np.ndarray, n_classes: int,
                    frequencies: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Exact (K, 2D) per-class sums of :func:`random_fourier_features` (never released as
    is: :class:`DPMERF` adds the ``merf_class_sums`` noise)."""
    sums = np.zeros((n_classes, 2 * frequencies.shape[1]))
    for start in range(0, len(X), chunk):
        np.add.at(sums, class_idx[start:start + chunk],
                  random_fourier_features(X[start:start + chunk], frequencies))
    return sums


class DPMERF:
    """DP-MERF: a class-conditional generator fitted to a DP random-feature mean embedding.

    Parameters are public constants (module docstring for the privacy argument):
    ``n_frequencies`` D (2D features), ``lengthscale`` of the Gaussian kernel on
    normalised embeddings, ``count_noise_weight`` (counts' noise multiplier / sums'),
    the generator (``latent_dim``, ``hidden``, ``steps`` Adam steps at ``lr`` on
    ``batch_per_class`` samples per class). ``random_state`` seeds the frequencies, the
    generator and sampling (data independent); ``noise_seed`` replays the DP noise (tests
    only: a seeded fit is not private).
    """

    def __init__(self, epsilon: float, delta: float, *, n_frequencies: int = 1000,
                 lengthscale: float = 0.5, count_noise_weight: float = 4.0,
                 latent_dim: int = 32, hidden: int = 256, steps: int = 600,
                 batch_per_class: int = 64, lr: float = 3e-3,
                 random_state: int | None = 0, noise_seed: int | None = None) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.n_frequencies = n_frequencies
        self.lengthscale = lengthscale
        self.count_noise_weight = count_noise_weight
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.steps = steps
        self.batch_per_class = batch_per_class
        self.lr = lr
        self.random_state = random_state
        self.noise_seed = noise_seed

    def release(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None
                ) -> DPMERF:
        """Only the DP releases (``target_`` class mean embeddings, ``counts_``)."""
        X = _check_xy(X, y)
        self.classes_, idx = _class_index(y, classes)
        K, d = len(self.classes_), X.shape[1]
        rng = np.random.default_rng(self.random_state)
        self.frequencies_ = rng.normal(0.0, 1.0 / self.lengthscale, size=(d, self.n_frequencies))
        self.privacy_plan_ = merf_plan(self.epsilon, self.delta, self.count_noise_weight,
                                       noise_seeded=self.noise_seed is not None)
        noise = NoiseSource(self.noise_seed)
        Xb = bound_norms(X, 1.0, normalize=True)
        sums = merf_class_sums(Xb, idx, K, self.frequencies_)
        sums += noise.gaussian(self.privacy_plan_.release(MERF_SUMS), sums.shape)
        counts = np.bincount(idx, minlength=K).astype(float)
        counts += noise.gaussian(self.privacy_plan_.release(MERF_COUNTS), K)
        self.counts_ = counts
        self.target_ = sums / np.maximum(counts, 1.0)[:, None]
        self.n_features_in_ = d
        return self

    def fit(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None) -> DPMERF:
        import torch
        from torch import nn

        self.release(X, y, classes)
        K, d = len(self.classes_), self.n_features_in_
        torch.manual_seed(0 if self.random_state is None else self.random_state)
        self.generator_ = nn.Sequential(
            nn.Linear(self.latent_dim + K, self.hidden), nn.ReLU(),
            nn.Linear(self.hidden, self.hidden), nn.ReLU(), nn.Linear(self.hidden, d))
        W = torch.from_numpy(self.frequencies_.astype(np.float32))
        target = torch.from_numpy(self.target_.astype(np.float32))
        p = np.maximum(self.counts_, 0.0)
        p = torch.from_numpy((p / p.sum() if p.sum() > 0 else np.full(K, 1 / K))
                             .astype(np.float32))
        labels = torch.arange(K).repeat_interleave(self.batch_per_class)
        onehot = torch.eye(K)[labels]
        opt = torch.optim.Adam(self.generator_.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        scale = 1.0 / math.sqrt(self.n_frequencies)
        for _ in range(self.steps):
            z = torch.randn(len(labels), self.latent_dim)
            x = self._generate(z, onehot)
            proj = x @ W
            feats = torch.cat([torch.cos(proj), torch.sin(proj)], 1) * scale
            emb = feats.reshape(K, self.batch_per_class, -1).mean(1)
            loss = (p * ((emb - target) ** 2).sum(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self.final_loss_ = float(loss.detach())
        self.generator_.eval()
        return self

    def _generate(self, z, onehot):
        import torch

        x = self.generator_(torch.cat([z, onehot], 1))
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def sample(self, n: int, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        rng = np.random.default_rng(random_state if random_state is not None
                                    else self.random_state)
        idx = _sample_classes(rng, self.counts_, n)
        K = len(self.classes_)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        with torch.inference_mode():
            z = torch.randn(n, self.latent_dim, generator=gen)
            X = self._generate(z, torch.eye(K)[torch.from_numpy(idx)]).numpy()
        return X.astype(np.float32), self.classes_[idx]


# ------------------------------------------------------------------ Private Evolution


def pe_plan(epsilon: float, delta: float, iterations: int, *,
            noise_seeded: bool = False) -> PrivacyPlan:
    """PE's releases: one vote histogram per iteration, sensitivity 1, T repetitions."""
    return build_plan([ReleaseSpec(PE_HISTOGRAM, 1.0, repetitions=iterations,
                                   description="nearest-synthetic-neighbour votes, one per "
                                               "record per iteration")],
                      epsilon, delta, noise_seeded=noise_seeded)


def nearest_votes(X: np.ndarray, class_idx: np.ndarray, candidates: np.ndarray,
                  chunk: int = 8192) -> np.ndarray:
    """Exact vote histogram (K, P): each record votes for the nearest of its class's P
    candidates (``candidates`` (K, P, d), rows unit norm; X rows unit norm, so nearest =
    largest inner product). Never released as is."""
    K, P, _ = candidates.shape
    votes = np.zeros((K, P))
    for c in range(K):
        rows = np.flatnonzero(class_idx == c)
        for start in range(0, len(rows), chunk):
            sims = X[rows[start:start + chunk]] @ candidates[c].T
            votes[c] += np.bincount(sims.argmax(1), minlength=P)
    return votes


class PrivateEvolution:
    """Public-data-free Private Evolution in embedding space (module docstring).

    ``population`` candidates per class, ``iterations`` T votes, Gaussian variation of
    norm scale from ``variation_start`` to ``variation_end``, ``threshold`` in noise stds
    (PE's H), ``nonnegative_init``: RANDOM_API draws in the non-negative orthant (the
    encoder's features are non-negative by its architecture: a public fact).
    ``random_state`` seeds RANDOM_API, resampling and variation (data independent);
    ``noise_seed`` replays the DP noise (tests only).
    """

    def __init__(self, epsilon: float, delta: float, *, population: int = 200,
                 iterations: int = 10, variation_start: float = 0.6,
                 variation_end: float = 0.1, threshold: float = 2.0,
                 nonnegative_init: bool = True, random_state: int | None = 0,
                 noise_seed: int | None = None) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.population = population
        self.iterations = iterations
        self.variation_start = variation_start
        self.variation_end = variation_end
        self.threshold = threshold
        self.nonnegative_init = nonnegative_init
        self.random_state = random_state
        self.noise_seed = noise_seed

    def variation_scales(self) -> np.ndarray:
        T = self.iterations
        if T == 1:
            return np.array([self.variation_end])
        return self.variation_start * (self.variation_end / self.variation_start) ** (
            np.arange(T) / (T - 1))

    @staticmethod
    def _vary(rng: np.random.Generator, X: np.ndarray, scale: float) -> np.ndarray:
        out = X + scale * rng.normal(size=X.shape) / math.sqrt(X.shape[-1])
        return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)

    def fit(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray | None = None
            ) -> PrivateEvolution:
        X = _check_xy(X, y)
        self.classes_, idx = _class_index(y, classes)
        K, d, P = len(self.classes_), X.shape[1], self.population
        rng = np.random.default_rng(self.random_state)
        self.privacy_plan_ = pe_plan(self.epsilon, self.delta, self.iterations,
                                     noise_seeded=self.noise_seed is not None)
        release = self.privacy_plan_.release(PE_HISTOGRAM)
        noise = NoiseSource(self.noise_seed)
        Xb = np.asarray(bound_norms(X, 1.0, normalize=True), dtype=np.float32)
        # Whether the encoder's features are non-negative is a property of its
        # architecture (public), so it is a parameter, never read off the private records.
        init = rng.normal(size=(K, P, d))
        if self.nonnegative_init:
            init = np.abs(init)
        candidates = init / np.linalg.norm(init, axis=-1, keepdims=True)
        scales = self.variation_scales()
        self.history_ = []
        for t in range(self.iterations):
            votes = nearest_votes(Xb, idx, candidates.astype(np.float32))
            noisy = votes + noise.gaussian(release, votes.shape)
            kept = np.where(noisy >= self.threshold * release.sigma, noisy, 0.0)
            self.history_.append({"iteration": t, "kept": int((kept > 0).sum()),
                                  "scale": float(scales[t])})
            weights = kept.copy()
            for c in range(K):
                if weights[c].sum() <= 0:  # everything under the threshold: no signal
                    weights[c] = 1.0
            if t == self.iterations - 1:
                break
            parents = np.stack([rng.choice(P, size=P, p=w / w.sum()) for w in weights])
            candidates = self._vary(rng, np.take_along_axis(
                candidates, parents[:, :, None], axis=1), scales[t])
        self.candidates_ = candidates
        self.noisy_votes_ = noisy  # the last release, on ``candidates_``
        self.weights_ = weights / weights.sum(1, keepdims=True)
        self.class_totals_ = np.maximum(noisy.sum(1), 0.0)
        self.n_features_in_ = d
        return self

    def sample(self, n: int, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(random_state if random_state is not None
                                    else self.random_state)
        idx = _sample_classes(rng, self.class_totals_, n)
        pick = np.empty(n, dtype=np.int64)
        for c in np.unique(idx):
            where = np.flatnonzero(idx == c)
            pick[where] = rng.choice(self.population, size=len(where), p=self.weights_[c])
        X = self._vary(rng, self.candidates_[idx, pick], float(self.variation_scales()[-1]))
        return X.astype(np.float32), self.classes_[idx]
