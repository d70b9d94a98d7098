"""DPSynthesizer: DP Gaussian-mixture synthesis of labelled embeddings (DESIGN.md)."""

from __future__ import annotations

import inspect
import json
import math
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted

from dpsynth.clustering import GroupSums, assign_components, get_clusterer, project_to_ball
from dpsynth.gmm.budget import release_specs
from dpsynth.gmm.mixture import (
    COMPONENT_COUNTS,
    COVARIANCE_TYPES,
    MixtureParams,
    MixtureSampler,
    SecondOrderStats,
    pooled_mixture,
    release_class_stats,
    release_mixture,
    shard_class_counts,
    shard_sizes,
)
from dpsynth.gmm.subspace import GramAccumulator, release_subspace
from dpsynth.preprocessing import NormOverflowError, Shard, bound_norms, iter_located_chunks
from dpsynth.privacy import (
    NoiseSource,
    PrivacyPlan,
    ReleaseSpec,
    build_plan,
    validate_epsilon_delta,
)
from dpsynth.privacy.plan import (
    PlanMismatchError,
    check_same_noise,
    epsilon_from_json,
    epsilon_to_json,
    match_specs,
    release_threshold,
    verify_plan_dict,
)

FORMAT_VERSION = 1
#: Parameters added to format 1 after files were written without them, with the value
#: that reproduces what those files' fits did: a file that lacks one still loads.
PARAMS_ADDED_IN_FORMAT_1 = {"covariance_ridge": 0.0}
#: Shard size of :meth:`DPSynthesizer.sample`: the default of ``steps.synthesize``, so an
#: in-memory sample equals the set that step writes with the same arguments.
SAMPLE_SHARD_ROWS = 65536
#: Largest sample plus one: numpy's multivariate hypergeometric draw (the classes of the
#: shards) needs fewer than 10^9 items.
MAX_SAMPLE_ROWS = 10**9
_FITTED_ATTRIBUTES = ("classes_", "mixture_", "subspace_", "class_totals_", "clusterer_",
                      "privacy_plan_", "epsilon_", "delta_", "private_", "n_features_in_")


# ``dpsynth.NotFittedError`` and ``dpsynth.synthesizer.NotFittedError`` are scikit-learn's
# (imported above: a ValueError and an AttributeError), so ``except NotFittedError`` works
# whichever module it is imported from.


class _Number(Interval):
    """scikit-learn's :class:`Interval`, refusing booleans: bool is an int subclass, and a
    YAML ``true`` given for a count or a radius is a mistake, never 1."""

    def is_satisfied_by(self, val: object) -> bool:
        return not isinstance(val, bool | np.bool_) and super().is_satisfied_by(val)

    def __str__(self) -> str:
        return f"{super().__str__()} (not a boolean)"


class ModelFileError(ValueError):
    """A saved model (``params.json`` + ``arrays.npz``) that is unreadable or inconsistent.

    The message names the file and what is wrong with it.
    """


@dataclass
class ClusterRelease:
    """What the first half of the fit releases (every array here is a DP release).

    class_counts (C,), class_sums (C, d); subspace (d, r) with the released Gram
    eigenvalues (r,) and trace, or None; centres: per class (k_c, r) DP k-means centres in
    the subspace coordinates, or None for one component per class.
    """

    class_counts: np.ndarray
    class_sums: np.ndarray
    subspace: np.ndarray | None
    eigenvalues: np.ndarray | None
    trace: float
    centres: list[np.ndarray] | None = None

    @property
    def class_means(self) -> np.ndarray:
        return self.class_sums / np.maximum(self.class_counts, 1.0)[:, None]

    def project(self, X: np.ndarray) -> np.ndarray:
        return X @ self.subspace if self.subspace is not None else X

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"cluster_class_counts": self.class_counts,
               "cluster_class_sums": self.class_sums,
               "cluster_trace": np.asarray(self.trace)}
        if self.eigenvalues is not None:
            out["cluster_eigenvalues"] = self.eigenvalues
        if self.centres is not None:
            out["cluster_centres"] = np.concatenate(self.centres)
            out["cluster_centre_counts"] = np.array([len(c) for c in self.centres])
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray],
                    subspace: np.ndarray | None) -> ClusterRelease:
        centres = None
        if "cluster_centres" in a:
            bounds = np.cumsum(a["cluster_centre_counts"])[:-1]
            centres = np.split(a["cluster_centres"], bounds)
        return cls(a["cluster_class_counts"], a["cluster_class_sums"], subspace,
                   a.get("cluster_eigenvalues"), float(a["cluster_trace"]), centres)


class DPSynthesizer(BaseEstimator):
    """Differentially private synthetic embeddings from a per-class Gaussian mixture.

    A scikit-learn estimator (``get_params``/``set_params``/``clone``), fitted with
    :meth:`fit` and used through :meth:`sample`. The signature and this section are the one
    list of parameters: the run configuration's ``model`` section is generated from them
    (:mod:`dpsynth.config`), and :attr:`_parameter_constraints` states the valid values.

    Parameters
    ----------
    epsilon, delta : float
        The (epsilon, delta)-DP guarantee for the whole fit (add/remove one record).
        ``epsilon=float('inf')`` is the explicit non-private mode: no noise, and every
        output says ``private: false``. A finite epsilon must lie in [0.01, 20] and delta
        in [1e-12, 1e-3) (:mod:`dpsynth.privacy.validation`: the range in which noise is
        calibrated in bounded time and memory). Booleans are refused for every number.
    components_per_class : int, default=1
        Mixture components per class. 1 releases one Gaussian per class; more runs DP
        k-means (LSH coreset + DP Lloyd) first and spends budget on it.
    covariance : {"lowrank", "diagonal", "spherical", "tied"}, default="lowrank"
        ``"lowrank"`` (full covariance in the shared DP subspace + isotropic residual),
        ``"diagonal"`` (diagonal in the subspace + isotropic residual), ``"spherical"``, or
        ``"tied"`` (one shared covariance derived from the subspace release at no extra
        privacy cost; needs components_per_class=1 and a subspace).
    subspace_dim : int or None, default=64
        Dimension r of the shared DP subspace (ignored by ``spherical``). ``None`` uses the
        full embedding space (no subspace release).
    clip_norm : float, default=1.0
        Public bound R on each record's L2 norm (records are clipped, or scaled to it).
    normalize : bool, default=True
        L2-normalise each record to ``clip_norm`` (CLIP-style embeddings) and re-normalise
        samples. ``False`` clips instead.
    clusterer : str, default="dp-kmeans"
        Registry name of the DP clusterer that places the components of a class when
        components_per_class > 1 (:mod:`dpsynth.clustering.registry`; built in:
        ``"dp-kmeans"``, LSH coreset + DP Lloyd rounds; plugins by entry point).
    lsh_depth : int, default=8
        ``dp-kmeans`` option: maximum LSH tree depth.
    lloyd_rounds : int, default=3
        ``dp-kmeans`` option: DP Lloyd rounds.
    clusterer_options : dict or None, default=None
        Keyword options of another clusterer (for ``dp-kmeans``, overrides of ``depth``
        and ``rounds``).
    budget_weights : dict of str to float or None, default=None
        Overrides of the relative noise multipliers in
        :data:`dpsynth.gmm.budget.DEFAULT_WEIGHTS` (each default sits in the module that
        adds that release's noise); a plugin clusterer's ``default_weights`` keys are
        accepted too.
    second_moment_clip : float or None, default=None
        Centred clipping of the second-order release: records are centred at their
        class's released mean and clipped to this norm C, so the release's sensitivity is
        C^2 instead of clip_norm^2. ``None`` releases uncentred second moments.
    covariance_floor : float, default=1e-6
        Smallest variance kept after repair.
    covariance_ridge : float, default=0.0
        ``lowrank`` only: each component's covariance in the subspace gets this multiple
        of its noise's spectral norm, 2 sigma sqrt(r) / n_c, added on the diagonal (a
        ridge at the noise scale; post-processing, no budget; 0 at eps = inf). Other
        covariance types ignore it.
    random_state : int or None, default=None
        Seed of data-independent randomness only (hash directions, k-means++ on the
        released coreset, sampling). Never seeds DP noise.
    noise_seed : int or None, default=None
        Test-only. Seeds the DP noise; the result is then marked NOT private everywhere.
    chunk_rows : int, default=16384
        Rows per streamed chunk; bounds memory independently of n.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels (public: ``classes=`` of :meth:`fit`, or read from the labels).
    n_features_in_ : int
        Embedding dimension d seen in :meth:`fit`.
    subspace_ : ndarray of shape (n_features_in_, subspace_dim) or None
        Orthonormal basis of the released shared subspace; ``None`` without one.
    class_totals_ : ndarray of shape (n_classes,)
        Released (noisy) record count of each class, floored at 0.
    clusters_ : ClusterRelease
        The releases of the first half of the fit (:meth:`fit_clusters`).
    clusterer_ : object
        The fitted DP clusterer (components_per_class > 1, except ``tied``; set by a fit
        in this process, not by :meth:`load`).
    mixture_ : MixtureParams
        The released, repaired mixture (all classes, components flattened); set by
        :meth:`fit` / :meth:`fit_mixture`. The views below read it.
    weights_ : ndarray of shape (n_components,)
        Released (noisy) record count of each component, > 0; divided by their sum
        within a class they are that class's mixing proportions.
    means_ : ndarray of shape (n_components, n_features_in_)
        Mean of each component, in the embedding space.
    covariances_ : ndarray
        Covariance of each component within the subspace (its coordinates ``X @
        subspace_``, or the embedding space without a subspace): shape (n_components,)
        for ``spherical`` (one variance), (n_components, q) for ``diagonal``,
        (n_components, q, q) for ``lowrank`` and ``tied``, q the subspace dimension.
    residual_var_ : ndarray of shape (n_components,)
        Variance per dimension outside the subspace, of each component.
    component_class_ : ndarray of shape (n_components,)
        Index into ``classes_`` of each component's class.
    privacy_plan_ : PrivacyPlan
        Every noisy release of the fit, its sensitivity and noise, and the composed
        (epsilon, delta).
    epsilon_, delta_ : float
        The guarantee the plan composes to (PLD accounting; ``inf`` when not private).
    private_ : bool
        Whether the fit is differentially private (finite epsilon and no noise_seed).
    """

    # Declarative checks (scikit-learn's), run by _validate_params before any use; the
    # checks they cannot state follow there. A new parameter needs an entry here, in the
    # signature and in the docstring above: the run config's model section follows.
    _parameter_constraints: dict = {
        # validate_epsilon_delta: calibrated range, inf as the non-private mode, named
        # PrivacyParameterError (sklearn's Interval cannot say why a value is refused).
        "epsilon": "no_validation",
        "delta": "no_validation",
        "components_per_class": [_Number(Integral, 1, None, closed="left")],
        "covariance": [StrOptions(set(COVARIANCE_TYPES))],
        "subspace_dim": [_Number(Integral, 1, None, closed="left"), None],
        "clip_norm": [_Number(Real, 0, None, closed="neither")],
        "normalize": ["boolean"],
        "clusterer": [str],  # looked up in the clusterer registry when used
        "lsh_depth": [_Number(Integral, 1, None, closed="left")],
        "lloyd_rounds": [_Number(Integral, 0, None, closed="left")],
        "clusterer_options": [dict, None],
        "budget_weights": [dict, None],  # values: _validate_params; names: the plan
        "second_moment_clip": [_Number(Real, 0, None, closed="neither"), None],
        "covariance_floor": [_Number(Real, 0, None, closed="neither")],
        "covariance_ridge": [_Number(Real, 0, None, closed="left")],
        "random_state": [_Number(Integral, 0, None, closed="left"), None],
        "noise_seed": [_Number(Integral, 0, None, closed="left"), None],
        "chunk_rows": [_Number(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        epsilon: float,
        delta: float,
        *,
        components_per_class: int = 1,
        covariance: str = "lowrank",
        subspace_dim: int | None = 64,
        clip_norm: float = 1.0,
        normalize: bool = True,
        clusterer: str = "dp-kmeans",
        lsh_depth: int = 8,
        lloyd_rounds: int = 3,
        clusterer_options: dict[str, object] | None = None,
        budget_weights: dict[str, float] | None = None,
        second_moment_clip: float | None = None,
        covariance_floor: float = 1e-6,
        covariance_ridge: float = 0.0,
        random_state: int | None = None,
        noise_seed: int | None = None,
        chunk_rows: int = 16384,
    ) -> None:
        self.epsilon = epsilon
        self.delta = delta
        self.components_per_class = components_per_class
        self.covariance = covariance
        self.subspace_dim = subspace_dim
        self.clip_norm = clip_norm
        self.normalize = normalize
        self.clusterer = clusterer
        self.lsh_depth = lsh_depth
        self.lloyd_rounds = lloyd_rounds
        self.clusterer_options = clusterer_options
        self.budget_weights = budget_weights
        self.second_moment_clip = second_moment_clip
        self.covariance_floor = covariance_floor
        self.covariance_ridge = covariance_ridge
        self.random_state = random_state
        self.noise_seed = noise_seed
        self.chunk_rows = chunk_rows

    # ----------------------------------------------------------------- parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:
        # The signature's order, not scikit-learn's alphabetical one: get_params() feeds
        # the privacy plan's metadata and params.json, whose bytes must not change.
        return [name for name in inspect.signature(cls.__init__).parameters
                if name != "self"]

    def _validate_params(self, *, check_clusterer: bool = True) -> None:
        """Refuse invalid parameters, naming them: :attr:`_parameter_constraints` first,
        then what those cannot state. Booleans are never numbers here (True is not 1).

        ``check_clusterer=False`` skips the clusterer lookup (a loaded model samples
        without it, so its plugin need not be installed).
        """
        validate_epsilon_delta(self.epsilon, self.delta, calibrated=True)
        validate_parameter_constraints(self._parameter_constraints,
                                       self.get_params(deep=False),
                                       caller_name=type(self).__name__)
        if self.covariance == "tied" and (self.components_per_class != 1
                                          or self.subspace_dim is None):
            raise ValueError("covariance='tied' needs components_per_class=1 and a "
                             "subspace_dim")
        if not math.isfinite(self.covariance_ridge):
            raise ValueError(f"covariance_ridge must be a finite number >= 0, got "
                             f"{self.covariance_ridge!r}")
        for name, weight in (self.budget_weights or {}).items():
            if not (_is_real(weight) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"budget_weights[{name!r}] must be a finite number > 0, "
                                 f"got {weight!r}")
        if check_clusterer and self.components_per_class > 1:
            try:
                get_clusterer(self.clusterer)
            except KeyError as exc:
                raise ValueError(exc.args[0]) from None

    def _clusterer_options(self) -> dict[str, object]:
        builtin = ({"depth": int(self.lsh_depth), "rounds": int(self.lloyd_rounds)}
                   if self.clusterer == "dp-kmeans" else {})
        return {**builtin, **(self.clusterer_options or {})}

    def _uses_subspace(self, dim: int) -> bool:
        return (self.covariance != "spherical" and self.subspace_dim is not None
                and self.subspace_dim < dim)

    def make_plan(self, dim: int) -> PrivacyPlan:
        """The privacy plan this configuration uses for embeddings of dimension ``dim``.

        Depends only on public configuration: it can be shown before any data is read.
        """
        specs = self._release_specs(dim)
        return build_plan(specs, self.epsilon, self.delta,
                          noise_seeded=self.noise_seed is not None,
                          metadata={"embedding_dim": dim, **{
                              k: v for k, v in self.get_params().items()
                              if k not in ("epsilon", "delta", "chunk_rows")}})

    def _release_specs(self, dim: int) -> list[ReleaseSpec]:
        """The releases this configuration makes for dimension ``dim``, in the order they
        are made, each specified by the module that adds its noise (:mod:`dpsynth.gmm.budget`
        assembles them). ``budget_weights`` may name the built-in releases and those the
        configured clusterer declares (its ``default_weights``)."""
        self._validate_params()
        try:
            clusterer = get_clusterer(self.clusterer)
        except KeyError:
            clusterer = None  # only with one component per class (_validate_params)
        return release_specs(
            covariance=self.covariance, uses_subspace=self._uses_subspace(dim),
            components_per_class=int(self.components_per_class),
            radius=float(self.clip_norm), weights=self.budget_weights,
            second_moment_clip=self.second_moment_clip, clusterer=clusterer,
            clusterer_options=self._clusterer_options())

    def _recorded_plan(self, plan: PrivacyPlan, dim: int) -> PrivacyPlan:
        """``plan``, a recorded plan (e.g. the plan step's ``privacy_plan.json``), checked to
        be this configuration's so that its noise can be drawn as recorded, never
        re-calibrated: the same target (epsilon, delta), noise seeding and dimension, and
        exactly the releases this configuration makes (same names, sensitivities,
        repetitions and scopes: :func:`~dpsynth.privacy.plan.match_specs`). Raises
        :class:`~dpsynth.privacy.plan.PlanMismatchError` naming what differs."""
        specs = self._release_specs(dim)
        problem = self._plan_target_problem(plan, dim)
        if problem:
            raise PlanMismatchError(problem)
        return match_specs(plan, specs)

    def _plan_target_problem(self, plan: PrivacyPlan, dim: int) -> str | None:
        """What makes ``plan`` not this configuration's for dimension ``dim`` (its target,
        noise seeding or embedding dimension differ), or None."""
        if plan.epsilon != float(self.epsilon) or plan.delta != float(self.delta):
            return (f"params say epsilon={self.epsilon:g}, delta={self.delta:g}, but the "
                    f"privacy plan's target is epsilon={plan.epsilon:g}, delta={plan.delta:g}")
        if plan.noise_seeded != (self.noise_seed is not None):
            return (f"params say noise_seed={self.noise_seed!r}, but the privacy plan says "
                    f"noise_seeded={plan.noise_seeded}")
        planned = plan.metadata.get("embedding_dim", dim)
        if planned != dim:
            return (f"n_features_in is {dim}, but the privacy plan was made for "
                    f"embedding_dim {planned!r}")
        return None

    # ----------------------------------------------------------------------- fit
    def fit(self, X, y, *, classes: Sequence | None = None) -> DPSynthesizer:
        """Fit on float embeddings ``X`` (n, d) and integer labels ``y`` (n,)."""
        return self.fit_shards([(X, y)], classes=classes)

    def fit_shards(self, shards: Sequence[Shard], *,
                   classes: Sequence | None = None) -> DPSynthesizer:
        """Fit on a sequence of (X, y) shards (e.g. memory-mapped), streamed in chunks.

        Statistics are summed over shards before any noise is added, so this equals
        ``fit`` on the concatenation given the same noise draws: exactly up to float64
        rounding for float64 input; float32 input is summed in float32 within a chunk (half
        the memory traffic), so results then agree to float32 rounding (~1e-5 relative).

        Equivalent to :meth:`fit_clusters` followed by :meth:`fit_mixture` on the same
        shards: the pipeline runs those two halves as separate steps.
        """
        return self.fit_clusters(shards, classes=classes).fit_mixture(shards)

    def fit_clusters(self, shards: Sequence[Shard], *, classes: Sequence | None = None,
                     plan: PrivacyPlan | None = None) -> DPSynthesizer:
        """First half of the fit: the shared subspace, the class counts and sums, and (for
        more than one component per class) the DP k-means centres. Sets ``clusters_``.

        Every value kept is a release of the plan; the exact statistics are dropped here.
        ``plan``: a recorded plan (the plan step's file) to draw the noise from as it is
        recorded, instead of calibrating one (:meth:`make_plan`). It must be this
        configuration's (target, noise seeding, dimension, and the same release names,
        sensitivities, repetitions and scopes), else
        :class:`~dpsynth.privacy.plan.PlanMismatchError` names what differs.
        """
        self._validate_params()
        # A failed (re)fit must not leave a model that mixes old parameters and new classes.
        for attr in (*_FITTED_ATTRIBUTES, "clusters_"):
            self.__dict__.pop(attr, None)
        shards = _check_shards(shards)
        dim = shards[0][0].shape[1]
        self.classes_ = _resolve_classes(shards, classes)
        if self.subspace_dim is not None and self.covariance != "spherical" \
                and self.subspace_dim > dim:
            raise ValueError(f"subspace_dim={self.subspace_dim} exceeds the embedding "
                             f"dimension {dim}")
        plan = self.make_plan(dim) if plan is None else self._recorded_plan(plan, dim)
        self._warn_if_seeded()
        self.clusters_ = self._release_clusters(shards, plan, self._noise(0), dim)
        self.subspace_ = self.clusters_.subspace
        self.class_totals_ = np.maximum(self.clusters_.class_counts, 0.0)
        self.privacy_plan_ = plan
        self.epsilon_ = plan.epsilon_pld
        self.delta_ = plan.delta
        self.private_ = plan.private
        self.n_features_in_ = dim
        return self

    def fit_mixture(self, shards: Sequence[Shard], *,
                    plan: PrivacyPlan | None = None) -> DPSynthesizer:
        """Second half of the fit: per-component weights, means and covariances, given
        the releases of :meth:`fit_clusters` (made here or loaded from disk).

        ``plan``: a recorded plan (the plan step's file) to draw the noise from, checked
        like :meth:`fit_clusters`'s and against the plan the clusters were released under
        (the same noise for every release), else
        :class:`~dpsynth.privacy.plan.PlanMismatchError` names the release that differs.
        """
        if not hasattr(self, "clusters_"):
            raise NotFittedError("fit_mixture needs the cluster releases: call fit_clusters "
                                 "first (or load a model saved after it)")
        self.__dict__.pop("mixture_", None)
        shards = _check_shards(shards)
        dim = shards[0][0].shape[1]
        if dim != self.n_features_in_:
            raise ValueError(f"the clusters were fitted on dimension {self.n_features_in_}, "
                             f"these shards have dimension {dim}")
        if plan is None:
            plan = self.privacy_plan_
        else:
            plan = self._recorded_plan(plan, dim)
            check_same_noise(plan, self.privacy_plan_, "the plan the clusters were released "
                                                       "under")
        self._warn_if_seeded()
        self._release_mixture(shards, plan, self._noise(1), self.clusters_)
        return self

    def _noise(self, stage: int) -> NoiseSource:
        """Independent noise per fit stage, so the two halves can run in separate steps
        (with a test seed, stage 1 must not replay stage 0's draws)."""
        return NoiseSource(self.noise_seed, stream=stage)

    def _warn_if_seeded(self) -> None:
        if self.noise_seed is not None:
            warnings.warn("noise_seed is set: the DP noise is reproducible and this fit is "
                          "NOT private (test use only)", stacklevel=3)

    def _chunks(self, shards: Sequence[Shard], *, reuse: bool = False
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Bounded records and class indices, chunk by chunk.

        A bad row is refused with its position (never bounded to a silent zero row): rows
        holding NaN or inf first, then labels outside ``classes_``, then rows whose norm
        overflows. ``reuse=True`` bounds every chunk into one buffer, so a chunk is only
        valid until the next is drawn: for the fit's own passes, which consume each chunk
        before asking for the next (a fresh (chunk, d) array per chunk page-faulted in
        anew each time, ~0.3 s of a fresh process's 60k x 1280 fit). A clusterer, which
        may be a plugin, gets fresh arrays.
        """
        classes = self.classes_
        lookup = {c: i for i, c in enumerate(classes.tolist())}
        order = (np.argsort(classes, kind="stable")
                 if classes.dtype.kind == "i" and len(classes) else None)
        buffer: np.ndarray | None = None

        def where(shard: int, row: int) -> str:
            return f"row {row}" + (f" of shard {shard}" if len(shards) > 1 else "")

        def class_index(y: np.ndarray) -> np.ndarray:
            if order is not None and y.dtype.kind == "i":  # integer labels: vectorised
                pos = np.minimum(np.searchsorted(classes, y, sorter=order), len(order) - 1)
                hit = classes[order[pos]] == y
                return np.where(hit, order[pos], -1).astype(np.int64)
            return np.fromiter((lookup.get(v, -1) for v in y.tolist()), np.int64, len(y))

        for shard, start, X, y in iter_located_chunks(shards, int(self.chunk_rows)):
            target = X
            if reuse and X.dtype.kind in "biuf":
                dtype = np.float32 if X.dtype == np.float32 else np.float64
                if buffer is None or buffer.dtype != dtype or len(buffer) < len(X):
                    buffer = np.empty((max(len(X), int(self.chunk_rows)), X.shape[1]), dtype)
                target = buffer[:len(X)]
                np.copyto(target, X)
            failed = None
            try:
                bounded = bound_norms(target, self.clip_norm, self.normalize,
                                      inplace=target is not X)
            except NormOverflowError as exc:
                failed = exc.rows  # NaN/inf rows and overflowing ones, in row order
            if failed is not None:
                for row in failed:
                    cols = np.flatnonzero(~np.isfinite(X[row]))
                    if len(cols):
                        raise ValueError(
                            f"X contains NaN or infinite values: {where(shard, start + row)}"
                            f", column {cols[0]} is {X[row, cols[0]]}")
            idx = class_index(y)
            if (idx < 0).any():
                bad = sorted(set(y[idx < 0].tolist()))[:5]
                raise ValueError(f"labels {bad} are not in classes={classes.tolist()}")
            if failed is not None:
                row = int(failed[0])
                raise ValueError(
                    f"X has a row whose L2 norm overflows float64: {where(shard, start + row)} "
                    f"(largest |value| {np.abs(X[row]).max():.3g}); rows that large cannot be "
                    "clipped or normalised reliably and are refused (check the embeddings)")
            yield bounded, idx

    def _release_clusters(self, shards, plan: PrivacyPlan, noise: NoiseSource,
                          dim: int) -> ClusterRelease:
        R = float(self.clip_norm)
        C = len(self.classes_)
        # Pass 1: global second moment (for the subspace), class counts and sums.
        gram = GramAccumulator(dim) if self._uses_subspace(dim) else None
        class_stats = GroupSums.zeros(C, dim)
        for Xb, idx in self._chunks(shards, reuse=True):
            if gram is not None:
                gram.add(Xb)
            class_stats.add(Xb, idx)
        basis = eigenvalues = None
        trace = 0.0
        if gram is not None:
            basis, eigenvalues, trace = release_subspace(gram, int(self.subspace_dim), plan,
                                                         noise)
        class_counts, class_sums = release_class_stats(class_stats, plan, noise)
        del class_stats  # exact statistics never outlive the release
        released = ClusterRelease(class_counts, class_sums, basis, eigenvalues, float(trace))
        k = int(self.components_per_class)
        if k > 1 and self.covariance != "tied":
            class_centres = released.project(released.class_means)
            self.clusterer_ = get_clusterer(self.clusterer)(
                k, plan, noise, radius=R, random_state=self.random_state,
                **self._clusterer_options())
            self.clusterer_.fit(
                lambda: ((released.project(Xb), idx) for Xb, idx in self._chunks(shards)),
                class_centres, class_counts)
            released.centres = self.clusterer_.centres_
        return released

    def _release_mixture(self, shards, plan: PrivacyPlan, noise: NoiseSource,
                         released: ClusterRelease) -> None:
        R = float(self.clip_norm)
        C = len(self.classes_)
        basis = released.subspace
        dim = int(self.n_features_in_)
        k = int(self.components_per_class)
        # max(3 sigma, 2) of the class counts (k = 1) or component counts: the plan's
        # smallest releasable class (release_threshold derives it) is this threshold.
        min_count = release_threshold(plan).threshold
        if self.covariance == "tied":
            params = pooled_mixture(released.class_counts, released.class_sums, basis,
                                    released.eigenvalues, released.trace,
                                    min_count=min_count, radius=R,
                                    covariance_floor=self.covariance_floor)
            self._finish(params, min_count)
            return
        centres = released.centres
        if centres is None:
            component_class = np.arange(C)
        else:
            offsets = np.cumsum([0] + [len(c) for c in centres])
            component_class = np.repeat(np.arange(C), [len(c) for c in centres])
        sub_dim = basis.shape[1] if basis is not None else dim
        anchors = None
        if self.second_moment_clip is not None:
            anchors = project_to_ball(released.class_means, R)[component_class]
        stats = SecondOrderStats(len(component_class), dim, sub_dim, self.covariance,
                                 anchors=anchors, clip=self.second_moment_clip,
                                 first_order=k > 1)
        for Xb, idx in self._chunks(shards, reuse=True):
            comp = (idx if centres is None
                    else assign_components(released.project(Xb), idx, centres, offsets))
            stats.add(Xb, comp, basis)
        # One component per class: its count and sum are the class release already made,
        # so only the second-order statistic is new (re-releasing would spend budget twice).
        params = release_mixture(
            stats, component_class, plan, noise,
            basis=basis, min_count=min_count, radius=R, covariance_floor=self.covariance_floor,
            released_first=(released.class_counts, released.class_sums) if k == 1 else None,
            ridge=float(self.covariance_ridge))
        self._finish(params, min_count)

    def _finish(self, params: MixtureParams, min_count: float) -> None:
        C = len(self.classes_)
        params.class_totals = self.class_totals_
        self.mixture_ = params
        empty = [self.classes_[c].item() for c in range(C)
                 if c not in set(params.component_class)]
        if empty:
            warnings.warn(f"classes {empty} have no component above the noise threshold "
                          f"({min_count:.1f} records) and will get no samples", stacklevel=3)

    # -------------------------------------------------------------------- sample
    def sample(self, n: int, *, class_balance: str = "proportional",
               random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` synthetic records: (X_syn float32 (n, d), y_syn labels (n,)).

        class_balance: ``"proportional"`` to the noisy class totals, or ``"balanced"``.
        Sampling is post-processing: it spends no privacy budget. The result is the
        concatenation of :meth:`sample_shards` with ``shard_rows=SAMPLE_SHARD_ROWS`` (what
        ``steps.synthesize`` writes by default), held in memory: for large n stream the
        shards instead.
        """
        d = int(self.n_features_in_) if hasattr(self, "n_features_in_") else 0
        X = y = None
        pos = 0
        for Xs, ys in self.sample_shards(n, SAMPLE_SHARD_ROWS, class_balance=class_balance,
                                         random_state=random_state):
            if X is None and len(Xs) == n:
                return Xs, ys  # a single shard is the sample: no copy
            if X is None:
                X, y = np.empty((n, d), np.float32), np.empty(n, ys.dtype)
            X[pos:pos + len(Xs)], y[pos:pos + len(ys)] = Xs, ys
            pos += len(Xs)
            del Xs, ys  # one shard at a time besides the result
        return X, y

    def sample_shards(self, n: int, shard_rows: int = SAMPLE_SHARD_ROWS, *,
                      class_balance: str = "proportional", random_state: int | None = None,
                      start_shard: int = 0, stop_shard: int | None = None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream an ``n``-record sample as shards of ``shard_rows`` rows (the last one
        shorter; one empty shard for n = 0): yields (X float32 (rows, d), labels (rows,))
        for shards ``start_shard`` to ``stop_shard - 1`` (default: all of them).

        Memory is one shard, whatever n. The sample is a function of (model, n,
        shard_rows, class_balance, seed) alone: every shard has its own random stream,
        ``SeedSequence(seed).spawn(2)[1].spawn(n_shards)[i]``, and the class counts of
        the shards are dealt from ``SeedSequence(seed).spawn(2)[0]`` (the deal a shuffled
        whole sample would give; :func:`~dpsynth.gmm.mixture.shard_class_counts`). So any
        split of the shards over processes writes the same set as one process, and a
        range of shards needs a seed (``random_state`` here or in the constructor).
        Sampling is post-processing: it spends no privacy budget.
        """
        self._check_fitted()
        if not _is_int(n) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if n >= MAX_SAMPLE_ROWS:  # numpy's hypergeometric deal of the shards' classes
            raise ValueError(f"n must be below {MAX_SAMPLE_ROWS:.0e} (5 TB at d = 1280), "
                             f"got {n}: sample in several runs with different seeds")
        if not _is_int(shard_rows) or shard_rows < 1:
            raise ValueError(f"shard_rows must be a positive integer, got {shard_rows!r}")
        if class_balance not in ("proportional", "balanced"):
            raise ValueError(f"class_balance must be 'proportional' or 'balanced', "
                             f"got {class_balance!r}")
        if random_state is not None and (not _is_int(random_state) or random_state < 0):
            raise ValueError(f"random_state must be a non-negative integer or None, "
                             f"got {random_state!r}")
        sizes = shard_sizes(int(n), int(shard_rows))
        stop = len(sizes) if stop_shard is None else stop_shard
        if not (_is_int(start_shard) and _is_int(stop)
                and 0 <= start_shard <= stop <= len(sizes)):
            raise ValueError(f"need 0 <= start_shard <= stop_shard <= {len(sizes)} (the "
                             f"number of shards), got {start_shard!r}, {stop_shard!r}")
        params = self.mixture_
        C = len(self.classes_)
        has = np.isin(np.arange(C), params.component_class)
        share = (params.class_totals if class_balance == "proportional"
                 else np.ones(C)) * has
        if share.sum() <= 0:
            raise RuntimeError("no class has a released component to sample from")
        seed = self.random_state if random_state is None else random_state
        if seed is None and (start_shard, stop) != (0, len(sizes)):
            raise ValueError("sampling a range of shards needs a seed (random_state), so "
                             "that the ranges sampled by different processes fit together")
        return self._sample_shards(int(n), sizes, share, np.random.SeedSequence(seed),
                                   int(start_shard), int(stop))

    def _sample_shards(self, n: int, sizes: np.ndarray, share: np.ndarray,
                       root: np.random.SeedSequence, start: int, stop: int
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        per_class = _apportion(n, share / share.sum())
        # Children of the root, made by key so that shard i's stream needs no other's.
        deal = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(0,)))
        counts = shard_class_counts(per_class, sizes, stop, deal)
        sampler = MixtureSampler(self.mixture_, self.subspace_, normalize=self.normalize,
                                 radius=float(self.clip_norm))
        for i in range(start, stop):
            rng = np.random.default_rng(np.random.SeedSequence(root.entropy,
                                                               spawn_key=(1, i)))
            X, cls = sampler.draw(counts[i], rng)
            yield X, self.classes_[cls]
            del X, cls  # the caller holds the shard: no second reference while drawing on

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``params.json`` + ``arrays.npz`` (no pickle) into directory ``path``.

        Works after :meth:`fit_clusters` alone too (``stage: "clusters"``), so the two
        halves of the fit can run as separate pipeline steps. Every array written is a
        DP release or public; files are replaced atomically.
        """
        if not hasattr(self, "clusters_") and not hasattr(self, "mixture_"):
            raise NotFittedError("this DPSynthesizer is not fitted yet; call fit first")
        if self.classes_.dtype.kind not in "iub":
            raise TypeError("only integer class labels can be saved")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"classes": self.classes_,
                                         "class_totals": self.class_totals_}
        if self.subspace_ is not None:
            arrays["subspace"] = self.subspace_
        if hasattr(self, "clusters_"):
            arrays.update(self.clusters_.to_arrays())
        if hasattr(self, "mixture_"):
            p = self.mixture_
            arrays.update({"component_class": p.component_class, "weights": p.weights,
                           "means": p.means, "covariances": p.covariances,
                           "residual_var": p.residual_var})
        tmp = path / "arrays.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(path / "arrays.npz")
        meta = {"format_version": FORMAT_VERSION,
                "stage": "mixture" if hasattr(self, "mixture_") else "clusters",
                "params": self._params_to_json(), "n_features_in": self.n_features_in_,
                "privacy_plan": self.privacy_plan_.to_dict()}
        tmp_json = path / "params.tmp.json"
        tmp_json.write_text(json.dumps(meta, indent=2))
        tmp_json.replace(path / "params.json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> DPSynthesizer:
        """Read a model written by :meth:`save`, checking everything before trusting it.

        Raises FileNotFoundError when ``params.json`` or ``arrays.npz`` is missing, and
        :class:`ModelFileError` (naming the file) when one is unreadable or inconsistent:
        invalid parameters, a privacy plan whose releases do not compose to its recorded
        epsilon (or whose epsilon/delta are not the parameters'), missing or unexpected
        arrays, wrong shapes or dtypes, non-finite values, negative weights or variances,
        covariances that are not symmetric PSD, or a subspace that is not orthonormal.
        """
        path = Path(path)
        missing = [name for name in ("params.json", "arrays.npz")
                   if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a saved DPSynthesizer: "
                                    f"{' and '.join(missing)} missing (expected params.json "
                                    "and arrays.npz)")
        obj, stage = cls._from_params_file(path / "params.json")
        a = _read_arrays(path / "arrays.npz")
        _check_arrays(a, obj, stage, path / "arrays.npz")
        obj.classes_ = a["classes"]
        obj.subspace_ = a.get("subspace")
        obj.class_totals_ = a["class_totals"]
        if "cluster_class_counts" in a:
            obj.clusters_ = ClusterRelease.from_arrays(a, obj.subspace_)
        if stage == "mixture":
            obj.mixture_ = MixtureParams(a["component_class"], a["weights"], a["means"],
                                         a["covariances"], a["residual_var"],
                                         a["class_totals"])
        return obj

    @classmethod
    def _from_params_file(cls, file: Path) -> tuple[DPSynthesizer, str]:
        """The unfitted synthesizer of ``params.json`` with its privacy plan and dimension
        set, and the saved stage; every field checked, the plan's accounting re-derived."""

        def fail(problem: str) -> ModelFileError:
            return ModelFileError(f"{file}: {problem}")

        def refuse_constant(token: str) -> None:
            raise fail(f"non-standard JSON constant {token} (save writes strict JSON)")

        try:
            meta = json.loads(file.read_text(encoding="utf-8"), parse_constant=refuse_constant)
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"cannot be read ({exc})") from None
        except json.JSONDecodeError as exc:
            raise fail(f"is not valid JSON (truncated or edited?): {exc}") from None
        if not isinstance(meta, dict):
            raise fail(f"must hold a JSON object, got {type(meta).__name__}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise fail(f"unsupported format_version {meta.get('format_version')!r} "
                       f"(this version reads {FORMAT_VERSION})")
        stage = meta.get("stage", "mixture")
        if stage not in ("clusters", "mixture"):
            raise fail(f"stage must be 'clusters' or 'mixture', got {stage!r}")
        params = meta.get("params")
        if not isinstance(params, dict):
            raise fail(f"'params' must be a JSON object, got {params!r}")
        expected = set(cls._get_param_names())
        params = {key: value for key, value in PARAMS_ADDED_IN_FORMAT_1.items()
                  if key not in params} | params
        unknown, lacking = sorted(set(params) - expected), sorted(expected - set(params))
        if unknown or lacking:
            raise fail("'params' " + " and ".join(
                part for part in (unknown and f"has unknown keys {unknown}",
                                  lacking and f"lacks {lacking}") if part))
        try:
            obj = cls(**cls._params_from_json(params))
            obj._validate_params(check_clusterer=False)
        except ValueError as exc:
            raise fail(f"invalid params: {exc}") from None
        dim = meta.get("n_features_in")
        if not _is_int(dim) or dim < 1:
            raise fail(f"n_features_in must be a positive integer, got {dim!r}")
        if "privacy_plan" not in meta:
            raise fail("missing key 'privacy_plan'")
        try:
            plan = verify_plan_dict(meta["privacy_plan"])
        except ValueError as exc:
            raise fail(str(exc)) from None
        # The plan is what the noise was calibrated to; the parameters must say the same.
        problem = obj._plan_target_problem(plan, dim)
        if problem:
            raise fail(problem)
        obj.privacy_plan_ = plan
        obj.epsilon_ = plan.epsilon_pld
        obj.delta_ = plan.delta
        obj.private_ = plan.private
        obj.n_features_in_ = int(dim)
        return obj, stage

    @classmethod
    def from_plan(cls, plan: PrivacyPlan) -> DPSynthesizer:
        """The synthesizer a plan was made for (its metadata holds every parameter), so a
        pipeline step given only ``privacy_plan.json`` fits exactly what was planned. Pass
        the plan on (``fit_clusters(..., plan=plan)``) to draw the noise it records."""
        meta = dict(plan.metadata)
        meta.pop("embedding_dim", None)
        return cls(plan.epsilon, plan.delta, **meta)

    def _params_to_json(self) -> dict[str, object]:
        """``get_params()`` as ``params.json`` stores it (epsilon ``inf`` as ``"inf"``)."""
        params = self.get_params(deep=False)
        return {**params, "epsilon": epsilon_to_json(float(params["epsilon"]))}

    @staticmethod
    def _params_from_json(params: dict[str, object]) -> dict[str, object]:
        """The constructor arguments of a ``params.json`` (inverse of _params_to_json)."""
        return {**params, "epsilon": epsilon_from_json(params["epsilon"])}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True  # fit needs the class labels
        # DP noise comes from OS entropy: refits differ unless it is off or seeded.
        tags.non_deterministic = self.noise_seed is None and self.epsilon != math.inf
        return tags

    # ------------------------------------------------------------ fitted state
    def __sklearn_is_fitted__(self) -> bool:
        # Fitted means sampleable: a model saved after fit_clusters alone is not.
        return hasattr(self, "mixture_")

    def _check_fitted(self) -> None:
        check_is_fitted(self)

    def _mixture_field(self, field: str) -> np.ndarray:
        self._check_fitted()
        view = np.asarray(getattr(self.mixture_, field)).view()
        view.flags.writeable = False
        return view

    @property
    def weights_(self) -> np.ndarray:
        """Released (noisy) record count of each component (read-only view of mixture_)."""
        return self._mixture_field("weights")

    @property
    def means_(self) -> np.ndarray:
        """Mean of each component, (n_components, n_features_in_) (read-only)."""
        return self._mixture_field("means")

    @property
    def covariances_(self) -> np.ndarray:
        """Covariance of each component within the subspace (read-only; see the class
        docstring for its shape per covariance type)."""
        return self._mixture_field("covariances")

    @property
    def residual_var_(self) -> np.ndarray:
        """Variance per dimension outside the subspace, of each component (read-only)."""
        return self._mixture_field("residual_var")

    @property
    def component_class_(self) -> np.ndarray:
        """Index into ``classes_`` of each component's class (read-only)."""
        return self._mixture_field("component_class")

    @property
    def dropped_classes_(self) -> list[dict[str, object]]:
        """The classes with no released component, which get no synthetic samples, each
        as ``{"class", "noisy_count", "threshold", "reason"}``. Derived from the DP
        releases and the plan (:func:`~dpsynth.privacy.plan.release_threshold`), so
        public, and the same after :meth:`load`."""
        kept = set(self._mixture_field("component_class").tolist())
        limit = release_threshold(self.privacy_plan_)
        dropped = []
        for c, label in enumerate(self.classes_.tolist()):
            if c in kept:
                continue
            count = float(self.class_totals_[c])
            what = ("its noisy record count" if limit.release != COMPONENT_COUNTS
                    else "the noisy count of each of its mixture components (noisy class "
                         f"count {count:.1f})")
            shown = f" ({count:.1f})" if limit.release != COMPONENT_COUNTS else ""
            dropped.append({
                "class": label, "noisy_count": count, "threshold": limit.threshold,
                "reason": f"{what}{shown} is below the noise threshold {limit.threshold:.1f} "
                          f"= max(3 sigma, 2), sigma = {limit.sigma:.3g} in "
                          f"{limit.release!r}: the class is too small to release at "
                          f"eps = {self.privacy_plan_.epsilon:g} (about "
                          f"{limit.smallest_class}+ records needed)"})
        return dropped


def _read_arrays(file: Path) -> dict[str, np.ndarray]:
    """Every array of ``arrays.npz``, or ModelFileError naming the file."""
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"holds a single {type(loaded).__name__}, not an .npz archive")
        with loaded as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(f"{file}: cannot be read ({type(exc).__name__}: {exc}); it is "
                             "truncated, edited or not written by DPSynthesizer.save") from None


def _check_arrays(a: dict[str, np.ndarray], obj: DPSynthesizer, stage: str,
                  file: Path) -> None:
    """Presence, dtypes, shapes (against each other and n_features_in) and values of the
    saved arrays; ModelFileError naming the file and the array on the first problem."""

    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{file}: {problem}")

    def array(name: str, shape: tuple[int | None, ...], kind: str) -> np.ndarray:
        """The array, checked: ``None`` in ``shape`` matches any length."""
        if name not in a:
            raise fail(f"array {name!r} is missing")
        x = a[name]
        if x.dtype.kind not in kind:
            raise fail(f"array {name!r} has dtype {x.dtype}, expected "
                       f"{'floats' if kind == 'f' else 'integers'}")
        if x.ndim != len(shape) or any(n is not None and n != m
                                        for n, m in zip(shape, x.shape, strict=True)):
            want = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
            raise fail(f"array {name!r} has shape {x.shape}, expected {want}")
        if kind == "f" and not np.isfinite(x).all():
            raise fail(f"array {name!r} holds NaN or infinite values")
        return x

    def non_negative(name: str) -> None:
        if (a[name] < 0).any():
            raise fail(f"array {name!r} has negative entries (min {a[name].min():g})")

    d = int(obj.n_features_in_)
    classes = array("classes", (None,), "iub")
    C = len(classes)
    if C == 0 or len(np.unique(classes)) != C:
        raise fail(f"array 'classes' must be non-empty and without duplicates, "
                   f"got {classes.tolist()[:10]}")
    array("class_totals", (C,), "f")
    non_negative("class_totals")
    r = int(obj.subspace_dim) if obj._uses_subspace(d) else None
    q = r if r is not None else d  # dimension of the coordinates inside the subspace
    expected = {"classes", "class_totals"}
    if r is not None:
        expected.add("subspace")
        V = array("subspace", (d, r), "f")
        err = np.abs(V.T @ V - np.eye(r)).max()
        if err > 1e-6:
            raise fail(f"array 'subspace' is not orthonormal (|V^T V - I| up to {err:.3g})")
    elif "subspace" in a:
        raise fail(f"array 'subspace' is present, but the parameters (covariance="
                   f"{obj.covariance!r}, subspace_dim={obj.subspace_dim!r}, n_features_in={d}) "
                   "use no subspace")
    if stage == "clusters" or "cluster_class_counts" in a:
        expected |= {"cluster_class_counts", "cluster_class_sums", "cluster_trace"}
        counts = array("cluster_class_counts", (C,), "f")
        array("cluster_class_sums", (C, d), "f")
        array("cluster_trace", (), "f")
        if not np.array_equal(a["class_totals"], np.maximum(counts, 0.0)):
            raise fail("array 'class_totals' is not the released class counts floored at 0 "
                       "('cluster_class_counts')")
        if r is not None:
            expected.add("cluster_eigenvalues")
            array("cluster_eigenvalues", (r,), "f")
        if obj.components_per_class > 1 and obj.covariance != "tied":
            expected |= {"cluster_centres", "cluster_centre_counts"}
            per_class = array("cluster_centre_counts", (C,), "iu")
            array("cluster_centres", (int(per_class.sum()), q), "f")
    if stage == "mixture":
        expected |= {"component_class", "weights", "means", "covariances", "residual_var"}
        component_class = array("component_class", (None,), "iu")
        K = len(component_class)
        if K and not ((component_class >= 0) & (component_class < C)).all():
            raise fail(f"array 'component_class' has class indices outside [0, {C})")
        array("weights", (K,), "f")
        non_negative("weights")
        array("means", (K, d), "f")
        array("residual_var", (K,), "f")
        non_negative("residual_var")
        cov_shape = {"spherical": (K,), "diagonal": (K, q)}.get(obj.covariance, (K, q, q))
        covs = array("covariances", cov_shape, "f")
        if len(cov_shape) < 3:
            non_negative("covariances")
        else:
            for j, cov in enumerate(covs):
                scale = max(float(np.abs(cov).max()), np.finfo(float).tiny)
                if np.abs(cov - cov.T).max() > 1e-8 * scale:
                    raise fail(f"array 'covariances': component {j} is not symmetric")
                low = float(np.linalg.eigvalsh(cov).min())
                if low < -1e-8 * scale:
                    raise fail(f"array 'covariances': component {j} is not positive "
                               f"semi-definite (smallest eigenvalue {low:.3g})")
    unexpected = sorted(set(a) - expected)
    if unexpected:
        raise fail(f"unexpected arrays {unexpected} for a {stage!r} model with these "
                   "parameters")


def _is_int(value: object) -> bool:
    """An integer that is not a bool (bool is an int subclass: True must not mean 1)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool | np.bool_))


def _check_shards(shards: Sequence[Shard]) -> list[Shard]:
    shards = [_check_shard(i, X, y) for i, (X, y) in enumerate(shards)]
    if not shards or sum(len(X) for X, _ in shards) == 0:
        raise ValueError("X is empty: need at least one record to fit")
    dim = shards[0][0].shape[1]
    for i, (X, _) in enumerate(shards):
        if X.shape[1] != dim:
            raise ValueError(f"shard {i} has dimension {X.shape[1]}, shard 0 has {dim}")
    return shards


def _check_shard(i: int, X, y) -> Shard:
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError("sparse input is not supported: pass the embeddings as a dense "
                        "array (an EmbeddingSet shard is one)")
    X = X if isinstance(X, np.ndarray) else np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}"
                         + (f" in shard {i}" if i else ""))
    if X.dtype.kind not in "fiu":
        raise ValueError(f"X must hold numbers, got dtype {X.dtype}")
    if X.shape[1] == 0:  # scikit-learn's wording: nothing to model in zero dimensions
        raise ValueError(f"0 feature(s) (shape={X.shape}) while a minimum of 1 is required."
                         + (f" (shard {i})" if i else ""))
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with one label per row of X: X has {len(X)} rows, "
                         f"y has shape {y.shape}")
    if len(y) and y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return X, y


def _resolve_classes(shards: Sequence[Shard], classes: Sequence | None) -> np.ndarray:
    if classes is not None:
        arr = np.asarray(classes)
        if arr.ndim != 1 or len(arr) == 0 or arr.dtype.kind not in "iu":
            raise ValueError(f"classes must be a non-empty 1-D list of integer labels, "
                             f"got {classes!r}")
        if len(np.unique(arr)) != len(arr):
            raise ValueError(f"classes has duplicates: {arr.tolist()}")
        return arr
    warnings.warn("classes were read from the labels: the set of labels present is treated "
                  "as public. Pass classes= to keep the class list data-independent.",
                  stacklevel=3)
    return np.unique(np.concatenate([np.unique(y) for _, y in shards]))


def _apportion(n: int, p: np.ndarray) -> np.ndarray:
    """Largest-remainder split of n into integer parts proportional to p."""
    raw = n * p
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(raw - out)[::-1][: n - out.sum()]] += 1
    return out
