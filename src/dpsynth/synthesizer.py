"""DPSynthesizer: DP Gaussian-mixture synthesis of labelled embeddings (DESIGN.md)."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterator, Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted

from dpsynth.clustering import GroupSums, assign_components, get_clusterer, project_to_ball
from dpsynth.fit_inputs import Number, bounded_chunks, check_shards, is_real, resolve_classes
from dpsynth.gmm.budget import release_specs
from dpsynth.gmm.mixture import (
    COVARIANCE_TYPES,
    MixtureParams,
    SecondOrderStats,
    pooled_mixture,
    release_class_stats,
    release_mixture,
)
from dpsynth.gmm.mixture_file import (
    FORMAT_VERSION,
    PARAMS_ADDED_IN_FORMAT_1,
    ClusterRelease,
    ModelFileError,
    SavedMixture,
    read_mixture,
    register_estimator,
    uses_subspace,
    write_mixture,
)
from dpsynth.gmm.sampling import (
    MAX_SAMPLE_ROWS,
    SAMPLE_SHARD_ROWS,
    concatenate_shards,
    dropped_classes,
)
from dpsynth.gmm.sampling import sample_shards as stream_sample
from dpsynth.gmm.subspace import GramAccumulator, release_subspace
from dpsynth.preprocessing import Shard
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
)

#: Moved to their own modules; still importable from here.
__all__ = ["DPSynthesizer", "ClusterRelease", "FORMAT_VERSION", "MAX_SAMPLE_ROWS",
           "ModelFileError", "NotFittedError", "PARAMS_ADDED_IN_FORMAT_1", "SAMPLE_SHARD_ROWS"]

_FITTED_ATTRIBUTES = ("classes_", "mixture_", "subspace_", "class_totals_", "clusterer_",
                      "privacy_plan_", "epsilon_", "delta_", "private_", "n_features_in_")


# ``dpsynth.NotFittedError`` and ``dpsynth.synthesizer.NotFittedError`` are scikit-learn's
# (imported above: a ValueError and an AttributeError), so ``except NotFittedError`` works
# whichever module it is imported from.


@register_estimator  # params.json holds its constructor arguments (gmm/mixture_file.py)
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
        :meth:`fit` / :meth:`fit_gmm`. The views below read it.
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
        "components_per_class": [Number(Integral, 1, None, closed="left")],
        "covariance": [StrOptions(set(COVARIANCE_TYPES))],
        "subspace_dim": [Number(Integral, 1, None, closed="left"), None],
        "clip_norm": [Number(Real, 0, None, closed="neither")],
        "normalize": ["boolean"],
        "clusterer": [str],  # looked up in the clusterer registry when used
        "lsh_depth": [Number(Integral, 1, None, closed="left")],
        "lloyd_rounds": [Number(Integral, 0, None, closed="left")],
        "clusterer_options": [dict, None],
        "budget_weights": [dict, None],  # values: _validate_params; names: the plan
        "second_moment_clip": [Number(Real, 0, None, closed="neither"), None],
        "covariance_floor": [Number(Real, 0, None, closed="neither")],
        "covariance_ridge": [Number(Real, 0, None, closed="left")],
        "random_state": [Number(Integral, 0, None, closed="left"), None],
        "noise_seed": [Number(Integral, 0, None, closed="left"), None],
        "chunk_rows": [Number(Integral, 1, None, closed="left")],
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
            if not (is_real(weight) and math.isfinite(weight) and weight > 0):
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
        return uses_subspace(self.covariance, self.subspace_dim, dim)

    def make_plan(self, dim: int, declared: Sequence[ReleaseSpec] = ()) -> PrivacyPlan:
        """The privacy plan this configuration uses for embeddings of dimension ``dim``, and
        ``declared`` releases (a pipeline's replacement components') under the same noise
        scale. Depends only on public configuration: it can be shown before any data is read."""
        specs = self._release_specs(dim)
        if clash := sorted({s.name for s in declared} & {s.name for s in specs}):
            raise ValueError(f"declared releases {clash} have the names of releases dpsynth's "
                             "own plan makes: a replacement names its own")
        return build_plan([*specs, *declared], self.epsilon, self.delta,
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

        Equivalent to :meth:`fit_clusters` followed by :meth:`fit_gmm` on the same
        shards: the pipeline runs those two halves as separate steps.
        """
        return self.fit_clusters(shards, classes=classes).fit_gmm(shards)

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
        shards = check_shards(shards)
        dim = shards[0][0].shape[1]
        self.classes_ = resolve_classes(shards, classes)
        if self.subspace_dim is not None and self.covariance != "spherical" \
                and self.subspace_dim > dim:
            raise ValueError(f"subspace_dim={self.subspace_dim} exceeds the embedding "
                             f"dimension {dim}")
        plan = self.make_plan(dim) if plan is None else self._recorded_plan(plan, dim)
        self._warn_if_seeded()
        self.clusters_ = self._release_clusters(shards, plan, self._noise(0), dim)
        self.subspace_ = self.clusters_.subspace
        self.class_totals_ = np.maximum(self.clusters_.class_counts, 0.0)
        self._adopt_plan(plan, dim)
        return self

    def fit_gmm(self, shards: Sequence[Shard], *,
                plan: PrivacyPlan | None = None) -> DPSynthesizer:
        """Second half of the fit (the ``fit_gmm`` step): per-component weights, means and
        covariances, given the releases of :meth:`fit_clusters` (made here or loaded).

        ``plan``: a recorded plan (the plan step's file) to draw the noise from, checked
        like :meth:`fit_clusters`'s and against the plan the clusters were released under
        (the same noise for every release), else
        :class:`~dpsynth.privacy.plan.PlanMismatchError` names the release that differs.
        """
        if not hasattr(self, "clusters_"):
            raise NotFittedError("fit_gmm needs the cluster releases: call fit_clusters "
                                 "first (or load a model saved after it)")
        self.__dict__.pop("mixture_", None)
        shards = check_shards(shards)
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

    def _adopt_plan(self, plan: PrivacyPlan, dim: int) -> None:
        """The fitted attributes a plan sets: the guarantee, and the dimension it is for."""
        self.privacy_plan_ = plan
        self.epsilon_ = plan.epsilon_pld
        self.delta_ = plan.delta
        self.private_ = plan.private
        self.n_features_in_ = dim

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
        """Bounded records and class indices, chunk by chunk, bad rows refused where they
        are (:func:`~dpsynth.fit_inputs.bounded_chunks`; ``reuse``: one buffer for all)."""
        return bounded_chunks(shards, self.classes_, chunk_rows=int(self.chunk_rows),
                              clip_norm=self.clip_norm, normalize=self.normalize,
                              reuse=reuse)

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
        shards = self.sample_shards(n, SAMPLE_SHARD_ROWS, class_balance=class_balance,
                                    random_state=random_state)
        return concatenate_shards(shards, n, d)

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
        return stream_sample(self.mixture_, self.subspace_, self.classes_, n, shard_rows,
                             normalize=self.normalize, radius=float(self.clip_norm),
                             class_balance=class_balance, random_state=random_state,
                             default_seed=self.random_state, start_shard=start_shard,
                             stop_shard=stop_shard)

    # --------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``params.json`` + ``arrays.npz`` (no pickle) into directory ``path``: the
        saved-mixture format of :mod:`dpsynth.gmm.mixture_file` (docs/formats.md).

        Works after :meth:`fit_clusters` alone too (``stage: "clusters"``), so the two
        halves of the fit can run as separate pipeline steps. Every array written is a
        DP release or public; files are replaced atomically.
        """
        if not hasattr(self, "clusters_") and not hasattr(self, "mixture_"):
            raise NotFittedError("this DPSynthesizer is not fitted yet; call fit first")
        if self.classes_.dtype.kind not in "iub":
            raise TypeError("only integer class labels can be saved")
        saved = SavedMixture(
            params=self._params_to_json(), n_features_in=self.n_features_in_,
            privacy_plan=self.privacy_plan_, classes=self.classes_,
            class_totals=self.class_totals_, subspace=self.subspace_,
            clusters=getattr(self, "clusters_", None), mixture=getattr(self, "mixture_", None))
        return write_mixture(path, saved, estimator=type(self))

    @classmethod
    def load(cls, path: str | Path) -> DPSynthesizer:
        """Read a model written by :meth:`save` or by
        :func:`~dpsynth.gmm.mixture_file.write_mixture` (a replacement ``fit_gmm``),
        checking everything before trusting it: FileNotFoundError when ``params.json`` or
        ``arrays.npz`` is missing, :class:`ModelFileError` naming the file when one is
        unreadable or inconsistent (:func:`~dpsynth.gmm.mixture_file.read_mixture`)."""
        saved = read_mixture(path, estimator=cls)
        obj = cls(**cls._params_from_json(saved.params))
        obj._adopt_plan(saved.privacy_plan, saved.n_features_in)
        obj.classes_ = saved.classes
        obj.subspace_ = saved.subspace
        obj.class_totals_ = saved.class_totals
        if saved.clusters is not None:
            obj.clusters_ = saved.clusters
        if saved.mixture is not None:
            obj.mixture_ = saved.mixture
        return obj

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
        return dropped_classes(self.classes_, self.class_totals_,
                               self._mixture_field("component_class"), self.privacy_plan_)

