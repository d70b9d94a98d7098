"""Streaming a sample from a released mixture, shard by shard (post-processing: no budget).

:func:`sample_shards` is :meth:`dpsynth.synthesizer.DPSynthesizer.sample_shards` on the
arrays of a mixture: it checks the request, splits ``n`` over the classes
(:func:`apportion`), deals the classes over the shards and draws each shard from its own
random stream, so that any split of the shards over processes gives the same set.
:func:`dropped_classes` says which classes get no samples, and why.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dpsynth.fit_inputs import is_int
from dpsynth.gmm.mixture import (
    COMPONENT_COUNTS,
    MixtureParams,
    MixtureSampler,
    shard_class_counts,
    shard_sizes,
)
from dpsynth.privacy import PrivacyPlan
from dpsynth.privacy.plan import release_threshold

#: Shard size of :meth:`DPSynthesizer.sample`: the default of ``steps.synthesize``, so an
#: in-memory sample equals the set that step writes with the same arguments.
SAMPLE_SHARD_ROWS = 65536
#: Largest sample plus one: numpy's multivariate hypergeometric draw (the classes of the
#: shards) needs fewer than 10^9 items.
MAX_SAMPLE_ROWS = 10**9


def apportion(n: int, p: np.ndarray) -> np.ndarray:
    """Largest-remainder split of n into integer parts proportional to p."""
    raw = n * p
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(raw - out)[::-1][: n - out.sum()]] += 1
    return out


def sample_shards(mixture: MixtureParams, subspace: np.ndarray | None, classes: np.ndarray,
                  n: int, shard_rows: int = SAMPLE_SHARD_ROWS, *, normalize: bool,
                  radius: float, class_balance: str = "proportional",
                  random_state: int | None = None, default_seed: int | None = None,
                  start_shard: int = 0, stop_shard: int | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The shards ``start_shard`` to ``stop_shard - 1`` of an ``n``-record sample of
    ``mixture`` (X float32 (rows, d), labels from ``classes``), every argument checked
    before the first draw; ``random_state`` (else ``default_seed``) seeds the sample.
    See :meth:`~dpsynth.synthesizer.DPSynthesizer.sample_shards`."""
    if not is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n >= MAX_SAMPLE_ROWS:  # numpy's hypergeometric deal of the shards' classes
        raise ValueError(f"n must be below {MAX_SAMPLE_ROWS:.0e} (5 TB at d = 1280), "
                         f"got {n}: sample in several runs with different seeds")
    if not is_int(shard_rows) or shard_rows < 1:
        raise ValueError(f"shard_rows must be a positive integer, got {shard_rows!r}")
    if class_balance not in ("proportional", "balanced"):
        raise ValueError(f"class_balance must be 'proportional' or 'balanced', "
                         f"got {class_balance!r}")
    if random_state is not None and (not is_int(random_state) or random_state < 0):
        raise ValueError(f"random_state must be a non-negative integer or None, "
                         f"got {random_state!r}")
    sizes = shard_sizes(int(n), int(shard_rows))
    stop = len(sizes) if stop_shard is None else stop_shard
    if not (is_int(start_shard) and is_int(stop)
            and 0 <= start_shard <= stop <= len(sizes)):
        raise ValueError(f"need 0 <= start_shard <= stop_shard <= {len(sizes)} (the "
                         f"number of shards), got {start_shard!r}, {stop_shard!r}")
    C = len(classes)
    has = np.isin(np.arange(C), mixture.component_class)
    share = (mixture.class_totals if class_balance == "proportional"
             else np.ones(C)) * has
    if share.sum() <= 0:
        raise RuntimeError("no class has a released component to sample from")
    seed = default_seed if random_state is None else random_state
    if seed is None and (start_shard, stop) != (0, len(sizes)):
        raise ValueError("sampling a range of shards needs a seed (random_state), so "
                         "that the ranges sampled by different processes fit together")
    return _draw_shards(mixture, subspace, classes, normalize, float(radius), int(n), sizes,
                        share, np.random.SeedSequence(seed), int(start_shard), int(stop))


def _draw_shards(mixture: MixtureParams, subspace: np.ndarray | None, classes: np.ndarray,
                 normalize: bool, radius: float, n: int, sizes: np.ndarray,
                 share: np.ndarray, root: np.random.SeedSequence, start: int, stop: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    per_class = apportion(n, share / share.sum())
    # Children of the root, made by key so that shard i's stream needs no other's.
    deal = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(0,)))
    counts = shard_class_counts(per_class, sizes, stop, deal)
    sampler = MixtureSampler(mixture, subspace, normalize=normalize, radius=radius)
    for i in range(start, stop):
        rng = np.random.default_rng(np.random.SeedSequence(root.entropy,
                                                           spawn_key=(1, i)))
        X, cls = sampler.draw(counts[i], rng)
        yield X, classes[cls]
        del X, cls  # the caller holds the shard: no second reference while drawing on


def concatenate_shards(shards: Iterator[tuple[np.ndarray, np.ndarray]], n: int, dim: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The shards of an ``n``-record sample as one (X float32 (n, dim), labels (n,)) in
    memory, holding one shard at a time besides the result (a single shard as it is)."""
    X = y = None
    pos = 0
    for Xs, ys in shards:
        if X is None and len(Xs) == n:
            return Xs, ys  # a single shard is the sample: no copy
        if X is None:
            X, y = np.empty((n, dim), np.float32), np.empty(n, ys.dtype)
        X[pos:pos + len(Xs)], y[pos:pos + len(ys)] = Xs, ys
        pos += len(Xs)
        del Xs, ys  # one shard at a time besides the result
    return X, y


def dropped_classes(classes: np.ndarray, class_totals: np.ndarray,
                    component_class: np.ndarray, plan: PrivacyPlan) -> list[dict[str, object]]:
    """The classes with no released component, which get no synthetic samples, each as
    ``{"class", "noisy_count", "threshold", "reason"}``: derived from the DP releases and
    the plan (:func:`~dpsynth.privacy.plan.release_threshold`), so public."""
    kept = set(component_class.tolist())
    limit = release_threshold(plan)
    dropped = []
    for c, label in enumerate(classes.tolist()):
        if c in kept:
            continue
        count = float(class_totals[c])
        what = ("its noisy record count" if limit.release != COMPONENT_COUNTS
                else "the noisy count of each of its mixture components (noisy class "
                     f"count {count:.1f})")
        shown = f" ({count:.1f})" if limit.release != COMPONENT_COUNTS else ""
        dropped.append({
            "class": label, "noisy_count": count, "threshold": limit.threshold,
            "reason": f"{what}{shown} is below the noise threshold {limit.threshold:.1f} "
                      f"= max(3 sigma, 2), sigma = {limit.sigma:.3g} in "
                      f"{limit.release!r}: the class is too small to release at "
                      f"eps = {plan.epsilon:g} (about "
                      f"{limit.smallest_class}+ records needed)"})
    return dropped
