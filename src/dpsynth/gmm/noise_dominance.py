"""Released classes whose synthetic data is mostly noise (issue 25, item 1).

A class clears the noise threshold of its *count* (:func:`~dpsynth.privacy.plan.
release_threshold`) long before its *mean* is worth anything in a high dimension: the
count's noise is one number, the sum's is ``d`` of them. With d = 1280 at eps = 4, a class
of 60 records is released nine times out of ten, yet its synthetic mean has a cosine of
about 0.45 with the real one and a classifier trained on the synthetic data scores it near
0%. This module says so, from public quantities only.

The argument
    A class of n records with (unknown) mean m is released as the noisy sum
    ``s = n m + z``, z ~ N(0, sigma^2 I_d), sigma the ``class_sums`` release's noise in the
    plan; its synthetic mean is s / n_hat (n_hat the noisy count), projected into the ball
    of radius R. Dividing by the count, and the projection, scale signal and noise alike,
    so the mean's *noise-to-signal ratio* is that of the sum::

        rho = ||z|| / ||n m|| ~= sigma sqrt(d) / (n ||m||).

    The released mean then points at the real one with cosine about 1 / sqrt(1 + rho^2)
    (z is independent of m and in high dimension almost orthogonal to it): after the
    re-normalisation of the samples the class's signal shrinks by that factor and the rest
    of each sample is the same random direction z / n for every record of the class.

    ``n ||m||`` is not public, but the released sum's energy estimates it without bias:
    E ||s||^2 = n^2 ||m||^2 + sigma^2 d, so ::

        rho_hat = sigma sqrt(d) / sqrt(max(||s||^2 - sigma^2 d, 0))

    (infinite when nothing is left above the noise's energy). Only the DP release ``s``,
    the plan's sigma and d enter: post-processing, no budget, no private data. Its spread
    is small in high dimension: Var ||s||^2 = 4 sigma^2 n^2 ||m||^2 + 2 sigma^4 d, which at
    d = 1280 puts rho_hat within about 10% of rho for a class of 60 records at eps = 4
    (rho about 2) and within 5% for 400 records at eps = 1 (rho about 1.1). The noisy count
    is not used: its noise (sigma 5.41 at eps = 4, 18.7 at eps = 1) would add more spread.

The limit
    A class is *noise-dominated* when rho_hat > :data:`NOISE_TO_SIGNAL_LIMIT` = sqrt(2):
    the noise's energy is more than twice the signal's, so less than a third of the
    released mean is signal and its expected cosine with the real mean is below
    1 / sqrt(3) = 0.58. Measured on Fashion-MNIST (EfficientNet-Lite0, d = 1280; five
    classes of 400 records, five of 60; tests/test_noise_dominance.py): classes of 400 at
    eps = 1 have rho_hat 0.95-1.30 and keep most of their non-private accuracy, classes
    of 60 at eps = 4 have 1.63-2.84 and those with a look-alike class fall to 0-20%. A
    class with rho under the limit can still score badly when it is hard to tell from
    another (that is no noise's doing); one over it can still score well when nothing
    looks like it (its data is mostly noise all the same).

Records needed
    rho <= limit when n >= sigma sqrt(d) / (limit ||m||). ``||m||`` is the class's mean
    norm, at most R (records are normalised to, or clipped at, R); the *typical* one is
    estimated from the released sums of all released classes, pooled as
    ``sum_c (||s_c||^2 - sigma^2 d) / sum_c n_hat_c^2`` (weighted towards the large classes,
    whose sums are mostly signal), and capped at R. With R in its place the bound needs
    the plan alone (:func:`fewest_records_needed`): no class of fewer records can be
    anything but noise-dominated.

More than one component per class: the class's sum is released all the same (``class_sums``)
and its ratio is computed from it; its components' means come from their own, smaller
sums (``component_sums``), each at least as noisy, so the class's ratio is a lower bound
on theirs. ``eps = inf`` (sigma = 0) flags nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpsynth.gmm.mixture import CLASS_SUMS
from dpsynth.privacy import PrivacyPlan

#: rho above which a released class is reported as noise-dominated: noise energy more than
#: twice the signal's (expected cosine of the released mean with the real one < 0.58).
NOISE_TO_SIGNAL_LIMIT = math.sqrt(2.0)


def noise_to_signal(sum_sq_norms: np.ndarray, sigma: float, dim: int) -> np.ndarray:
    """rho_hat of each released sum: ``sigma sqrt(d) / sqrt(||s||^2 - sigma^2 d)``, ``inf``
    where the sum's energy does not exceed the noise's, 0 without noise (sigma = 0).

    ``sum_sq_norms``: ||s_c||^2 of each noisy sum s_c; ``sigma``: the sum release's noise;
    ``dim``: d, the number of noisy coordinates."""
    energy = np.asarray(sum_sq_norms, dtype=float)
    noise = float(sigma) ** 2 * int(dim)
    if noise == 0.0:
        return np.zeros_like(energy)
    signal = energy - noise
    with np.errstate(divide="ignore"):
        return np.where(signal > 0, math.sqrt(noise) / np.sqrt(np.maximum(signal, 0.0)),
                        np.inf)


def typical_mean_norm(sum_sq_norms: np.ndarray, counts: np.ndarray, sigma: float,
                      dim: int, radius: float) -> float | None:
    """A class mean's typical norm from released sums and counts: ``sqrt(sum_c (||s_c||^2
    - sigma^2 d) / sum_c n_c^2)``, capped at ``radius``; None when nothing is left above
    the noise (or there is no class)."""
    energy = np.asarray(sum_sq_norms, dtype=float)
    counts = np.maximum(np.asarray(counts, dtype=float), 0.0)
    if energy.size == 0 or not (counts**2).sum() > 0:
        return None
    signal = float((energy - float(sigma) ** 2 * int(dim)).sum())
    if signal <= 0:
        return None
    return min(math.sqrt(signal / float((counts**2).sum())), float(radius))


def records_needed(sigma: float, dim: int, mean_norm: float,
                   limit: float = NOISE_TO_SIGNAL_LIMIT) -> int:
    """The fewest records whose class mean of norm ``mean_norm`` is not noise-dominated:
    ``ceil(sigma sqrt(d) / (limit mean_norm))`` (0 without noise)."""
    if sigma == 0.0:
        return 0
    return math.ceil(float(sigma) * math.sqrt(int(dim)) / (limit * float(mean_norm)))


def fewest_records_needed(plan: PrivacyPlan, dim: int, radius: float,
                          limit: float = NOISE_TO_SIGNAL_LIMIT) -> int:
    """:func:`records_needed` at the largest mean norm, ``radius``: from the plan alone, a
    released class of fewer records is noise-dominated whatever its data."""
    return records_needed(plan.release(CLASS_SUMS).sigma, dim, radius, limit)


@dataclass(frozen=True)
class NoiseDominance:
    """The noise-to-signal ratio of every released class, and which are noise-dominated.

    ``classes``: one dict per released class, in class order: ``class`` (label),
    ``noisy_count``, ``noise_to_signal`` (rho_hat; None where it is infinite: no signal
    above the noise), ``noise_dominated`` and, for those, ``reason``. ``mean_norm``: the
    typical mean norm used for ``records_needed`` (None when not estimable: R is used).
    Everything is public: DP releases and the plan."""

    release: str
    sigma: float
    dim: int
    limit: float
    epsilon: float
    mean_norm: float | None
    records_needed: int
    classes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dominated(self) -> list[dict[str, Any]]:
        return [c for c in self.classes if c["noise_dominated"]]

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it (no infinities: an infinite ratio is None)."""
        return {"release": self.release, "sigma": self.sigma, "dim": self.dim,
                "limit": self.limit, "epsilon": _finite(self.epsilon),
                "mean_norm": self.mean_norm, "records_needed": self.records_needed,
                "classes": [dict(c) for c in self.classes]}


def assess_classes(classes: Sequence[Any], class_counts: np.ndarray, class_sums: np.ndarray,
                   released: Sequence[int], plan: PrivacyPlan, radius: float,
                   limit: float = NOISE_TO_SIGNAL_LIMIT) -> NoiseDominance:
    """:class:`NoiseDominance` of the released classes (indices ``released`` into
    ``classes``), from the noisy class counts (C,) and sums (C, d) and the plan's
    ``class_sums`` sigma; ``radius`` R bounds a mean's norm."""
    sums = np.asarray(class_sums, dtype=float)
    dim = sums.shape[1]
    sigma = float(plan.release(CLASS_SUMS).sigma)
    kept = sorted({int(c) for c in released})
    energy = np.einsum("ij,ij->i", sums, sums)[kept]
    counts = np.asarray(class_counts, dtype=float)[kept]
    rho = noise_to_signal(energy, sigma, dim)
    mean_norm = typical_mean_norm(energy, counts, sigma, dim, radius)
    needed = records_needed(sigma, dim, mean_norm if mean_norm is not None else radius,
                            limit)
    eps = float(plan.epsilon)
    out = []
    for c, count, r in zip(kept, counts.tolist(), rho.tolist(), strict=True):
        label = classes[c]
        entry: dict[str, Any] = {"class": label.item() if hasattr(label, "item") else label,
                                 "noisy_count": count,
                                 "noise_to_signal": r if math.isfinite(r) else None,
                                 "noise_dominated": bool(r > limit)}
        if entry["noise_dominated"]:
            entry["reason"] = _reason(r, sigma, dim, limit, needed, mean_norm, radius, eps)
        out.append(entry)
    return NoiseDominance(CLASS_SUMS, sigma, dim, limit, eps, mean_norm, needed, out)


def _reason(rho: float, sigma: float, dim: int, limit: float, needed: int,
            mean_norm: float | None, radius: float, eps: float) -> str:
    what = ("no signal is left above the noise in its released class sum"
            if not math.isfinite(rho) else
            f"the noise on its synthetic mean is about {rho:.2f} times its signal (limit "
            f"{limit:.2f}; expected cosine with the real mean "
            f"{1 / math.sqrt(1 + rho * rho):.2f})")
    norm = (f"a typical class mean's norm, {mean_norm:.2f}" if mean_norm is not None
            else f"the largest mean norm, {radius:g}")
    return (f"released but noise-dominated: {what}: the class-sum noise (sigma = "
            f"{sigma:.3g} in {CLASS_SUMS!r}, over d = {dim} coordinates) outweighs its "
            f"records, so its synthetic samples are mostly noise. About {needed}+ records "
            f"needed at eps = {eps:g} (for {norm})")


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def assess_model(model: Any, names: dict[Any, str] | None = None) -> dict[str, Any] | None:
    """:func:`assess_classes` of a fitted or loaded
    :class:`~dpsynth.synthesizer.DPSynthesizer`, as JSON holds it, each class with its
    ``name`` from ``names`` (label -> name) where given; None for a model without its
    class release (a mixture file written without the cluster arrays)."""
    released = getattr(model, "clusters_", None)
    if released is None:
        return None
    out = assess_classes(model.classes_, released.class_counts, released.class_sums,
                         model.component_class_, model.privacy_plan_,
                         float(model.clip_norm)).to_dict()
    if names is not None:
        out["classes"] = [{**c, "name": names[c["class"]]} for c in out["classes"]]
    return out


def plan_bound(plan: PrivacyPlan) -> dict[str, object] | None:
    """From the plan alone: the fewest records a released class needs not to be
    noise-dominated (:func:`fewest_records_needed`, at the largest mean norm R), with the
    quantities it follows from and a one-line ``note`` for the run's first lines and
    ``dpsynth plan``. None without noise (eps = inf) or without a ``class_sums`` release
    and the plan's dimension and R."""
    meta = plan.metadata
    if CLASS_SUMS not in plan or "embedding_dim" not in meta or "clip_norm" not in meta:
        return None
    sigma = plan.release(CLASS_SUMS).sigma
    if sigma == 0.0:
        return None
    dim, radius = int(meta["embedding_dim"]), float(meta["clip_norm"])
    needed = fewest_records_needed(plan, dim, radius)
    note = (f"noise-dominated below about {needed} records: a released class of fewer "
            f"records has over {NOISE_TO_SIGNAL_LIMIT:.2f} times as much noise as signal in "
            f"its synthetic mean (sigma = {sigma:.3g} in {CLASS_SUMS!r} over d = {dim} "
            f"coordinates, against a mean norm of at most {radius:g}; a class whose mean is "
            "shorter needs more records), so its synthetic samples are mostly noise: the "
            "run names such classes (MOSTLY NOISE).")
    return {"records": needed, "noise_to_signal_limit": NOISE_TO_SIGNAL_LIMIT,
            "sigma": sigma, "dim": dim, "radius": radius, "note": note}


def describe_plan(plan: PrivacyPlan) -> str | None:
    """:func:`plan_bound`'s one line, or None where it has none."""
    bound = plan_bound(plan)
    return None if bound is None else str(bound["note"])
