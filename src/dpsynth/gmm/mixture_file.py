"""The saved mixture: the files ``fit_gmm`` writes and ``synthesize`` reads.

This module is the contract between the fit steps and sampling (docs/formats.md,
"Mixture (fit_gmm -> synthesize)"): a directory with

* ``params.json``: ``format_version``, ``stage``, the synthesizer parameters, the embedding
  dimension and the privacy plan the releases were drawn under;
* ``arrays.npz``: the DP releases (class list, noisy class totals, the shared subspace,
  the cluster releases and the mixture: weights, means, covariances, residual variances);
* ``embedding_info.json`` (optional here, written by the pipeline steps): what the
  training set was encoded with, which ``synthesize`` copies into the synthetic set.

:class:`SavedMixture` describes their content as plain typed fields; :func:`write_mixture`
writes one (atomically, no pickle) and :func:`read_mixture` reads and checks one, raising
:class:`ModelFileError` naming the file and what is wrong. A replacement ``fit_gmm`` writes
its mixture with :func:`write_mixture` (or the same files by hand) and
:meth:`dpsynth.synthesizer.DPSynthesizer.load` samples from it; it never has to build a
``DPSynthesizer``.

Format versions: :data:`FORMAT_VERSION` is written into ``params.json``; a file without the
field (written before it existed) is read as version 1; a version this module does not
know is refused, naming the versions it reads.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.gmm.mixture import MixtureParams
from dpsynth.privacy.plan import PrivacyPlan, epsilon_from_json, verify_plan_dict

#: The format version :func:`write_mixture` writes.
FORMAT_VERSION = 1
#: The versions :func:`read_mixture` reads. A file without ``format_version`` is version 1.
READABLE_FORMAT_VERSIONS = (1,)
#: Parameters added to format 1 after files were written without them, with the value
#: that reproduces what those files' fits did: a file that lacks one still loads.
PARAMS_ADDED_IN_FORMAT_1 = {"covariance_ridge": 0.0}
STAGES = ("clusters", "mixture")
PARAMS_FILE = "params.json"
ARRAYS_FILE = "arrays.npz"
EMBEDDING_INFO_FILE = "embedding_info.json"  # = dpsynth.steps.EMBEDDING_INFO
#: The keys of ``embedding_info.json`` (the training set's manifest's values).
EMBEDDING_INFO_KEYS = ("encoder", "encoder_options", "dim", "normalized", "classes",
                       "class_names", "dataset_id")
#: The arrays of the mixture stage, in the order they are written.
MIXTURE_ARRAYS = ("component_class", "weights", "means", "covariances", "residual_var")


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


@dataclass
class SavedMixture:
    """Everything a saved model directory holds; every array is a DP release or public.

    ``params``: the synthesizer's parameters as ``params.json`` stores them (every
    constructor argument of :class:`~dpsynth.synthesizer.DPSynthesizer`, epsilon ``inf``
    as ``"inf"``; :func:`params_from_plan` derives them from the plan). Three of them fix
    the arrays' layout: ``covariance`` (the covariances' form), ``subspace_dim`` and
    ``components_per_class``; ``normalize``, ``clip_norm`` and ``random_state`` steer
    sampling. ``n_features_in``: the embedding dimension d. ``privacy_plan``: the plan the
    releases were drawn under (its target and noise seeding must be the params').

    Arrays (C classes, K components, d dimensions, r the subspace dimension, q = r with a
    subspace, else d): ``classes`` (C,) integer labels; ``class_totals`` (C,) noisy class
    counts floored at 0 (the proportional sampling weights); ``subspace`` (d, r)
    orthonormal, or None; ``clusters`` the first half's releases (required for the
    ``clusters`` stage, optional in the ``mixture`` one); ``mixture`` the released mixture
    (components flattened: ``component_class`` (K,), ``weights`` (K,), ``means`` (K, d),
    ``covariances`` (K,) / (K, q) / (K, q, q) for spherical / diagonal / lowrank and tied,
    ``residual_var`` (K,)), or None for the ``clusters`` stage.

    ``embedding_info``: the ``embedding_info.json`` object, or None where it is absent.
    ``format_version``: the version the file was read from; :func:`write_mixture` always
    writes :data:`FORMAT_VERSION`.
    """

    params: dict[str, Any]
    n_features_in: int
    privacy_plan: PrivacyPlan
    classes: np.ndarray
    class_totals: np.ndarray
    subspace: np.ndarray | None = None
    clusters: ClusterRelease | None = None
    mixture: MixtureParams | None = None
    embedding_info: dict[str, Any] | None = None
    format_version: int = field(default=FORMAT_VERSION)

    @property
    def stage(self) -> str:
        """``"mixture"`` when it holds a mixture (``fit_gmm``), else ``"clusters"``."""
        return "mixture" if self.mixture is not None else "clusters"

    @classmethod
    def from_plan(cls, plan: PrivacyPlan, **fields: Any) -> SavedMixture:
        """A saved mixture whose ``params`` and ``n_features_in`` are the plan's (as the
        plan step recorded them): what a replacement ``fit_gmm`` given only
        ``privacy_plan.json`` writes. ``fields``: the arrays and ``embedding_info``."""
        return cls(params=params_from_plan(plan),
                   n_features_in=int(plan.metadata["embedding_dim"]), privacy_plan=plan,
                   **fields)

    def arrays(self) -> dict[str, np.ndarray]:
        """The content of ``arrays.npz``, in the order it is written."""
        out: dict[str, np.ndarray] = {"classes": np.asarray(self.classes),
                                      "class_totals": np.asarray(self.class_totals)}
        if self.subspace is not None:
            out["subspace"] = np.asarray(self.subspace)
        if self.clusters is not None:
            out.update(self.clusters.to_arrays())
        if self.mixture is not None:
            out.update({name: np.asarray(getattr(self.mixture, name))
                        for name in MIXTURE_ARRAYS})
        return out

    def meta(self) -> dict[str, Any]:
        """The content of ``params.json``."""
        return {"format_version": FORMAT_VERSION, "stage": self.stage, "params": self.params,
                "n_features_in": self.n_features_in,
                "privacy_plan": self.privacy_plan.to_dict()}


def uses_subspace(covariance: str, subspace_dim: int | None, dim: int) -> bool:
    """Whether a model with these parameters releases (and saves) a shared subspace."""
    return covariance != "spherical" and subspace_dim is not None and subspace_dim < dim


def params_from_plan(plan: PrivacyPlan, estimator: type | None = None) -> dict[str, Any]:
    """The ``params`` of the synthesizer a plan was made for (its metadata holds every
    model parameter), as ``params.json`` stores them."""
    estimator = _estimator(estimator)
    return estimator.from_plan(plan)._params_to_json()


def write_mixture(path: str | Path, mixture: SavedMixture, *,
                  estimator: type | None = None) -> Path:
    """Write ``mixture`` into directory ``path`` (created if needed): ``arrays.npz``, then
    ``params.json``, then ``embedding_info.json`` when it has one, each replaced
    atomically. Checked first as :func:`read_mixture` checks (except the plan's
    accounting, which a :class:`PrivacyPlan` carries already): a mixture that would not
    load is refused with :class:`ModelFileError` and nothing is written."""
    path = Path(path)
    arrays = mixture.arrays()
    meta = mixture.meta()
    dim = mixture.n_features_in
    _check_params(meta["params"], mixture.privacy_plan, dim, _estimator(estimator),
                  _failure(path / PARAMS_FILE))
    _check_arrays(arrays, meta["params"], dim, mixture.stage, path / ARRAYS_FILE)
    if mixture.embedding_info is not None:
        _check_embedding_info(mixture.embedding_info, arrays["classes"], dim,
                              path / EMBEDDING_INFO_FILE)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "arrays.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path / ARRAYS_FILE)
    _write_json(path / PARAMS_FILE, meta)
    if mixture.embedding_info is not None:
        _write_json(path / EMBEDDING_INFO_FILE, mixture.embedding_info)
    return path


def read_mixture(path: str | Path, *, estimator: type | None = None) -> SavedMixture:
    """Read a saved model directory, checking everything before trusting it.

    Raises FileNotFoundError when ``params.json`` or ``arrays.npz`` is missing, and
    :class:`ModelFileError` (naming the file) when one is unreadable or inconsistent: a
    format version it does not read, invalid parameters, a privacy plan whose releases do
    not compose to its recorded epsilon (or whose epsilon/delta are not the parameters'),
    missing or unexpected arrays, wrong shapes or dtypes, non-finite values, negative
    weights or variances, covariances that are not symmetric PSD, a subspace that is not
    orthonormal, or an ``embedding_info.json`` that is not the model's.

    ``estimator``: the class whose parameters ``params`` holds (default
    :class:`~dpsynth.synthesizer.DPSynthesizer`); its checks validate them.
    """
    path = Path(path)
    missing = [name for name in (PARAMS_FILE, ARRAYS_FILE) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a saved DPSynthesizer: "
                                f"{' and '.join(missing)} missing (expected params.json "
                                "and arrays.npz)")
    meta = _read_params(path / PARAMS_FILE, _estimator(estimator))
    params, dim, stage = meta["params"], meta["n_features_in"], meta["stage"]
    a = _read_arrays(path / ARRAYS_FILE)
    _check_arrays(a, params, dim, stage, path / ARRAYS_FILE)
    info = None
    if (path / EMBEDDING_INFO_FILE).is_file():
        info = _read_json(path / EMBEDDING_INFO_FILE)
        _check_embedding_info(info, a["classes"], dim, path / EMBEDDING_INFO_FILE)
    subspace = a.get("subspace")
    clusters = (ClusterRelease.from_arrays(a, subspace) if "cluster_class_counts" in a
                else None)
    mixture = None
    if stage == "mixture":
        mixture = MixtureParams(*(a[name] for name in MIXTURE_ARRAYS), a["class_totals"])
    return SavedMixture(params=params, n_features_in=dim, privacy_plan=meta["privacy_plan"],
                        classes=a["classes"], class_totals=a["class_totals"],
                        subspace=subspace, clusters=clusters, mixture=mixture,
                        embedding_info=info, format_version=meta["format_version"])


# ------------------------------------------------------------------------- checks
#: The estimator whose constructor arguments ``params.json`` holds, when a caller names
#: none: :mod:`dpsynth.synthesizer` registers DPSynthesizer when it is imported (``import
#: dpsynth`` does), so this module, which it imports, never imports it back.
_DEFAULT_ESTIMATOR: list[type] = []


def register_estimator(estimator: type) -> type:
    """Make ``estimator`` the default of :func:`read_mixture` and :func:`write_mixture`."""
    _DEFAULT_ESTIMATOR[:] = [estimator]
    return estimator


def _estimator(estimator: type | None) -> type:
    if estimator is not None:
        return estimator
    if not _DEFAULT_ESTIMATOR:
        raise RuntimeError("no estimator registered for mixture files: import dpsynth (or "
                           "pass estimator=DPSynthesizer)")
    return _DEFAULT_ESTIMATOR[0]


def _failure(file: Path):
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{file}: {problem}")
    return fail


def _write_json(file: Path, data: dict[str, Any]) -> None:
    tmp = file.with_name(file.stem + ".tmp.json")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(file)


def _read_json(file: Path) -> dict[str, Any]:
    """A strict-JSON object, or ModelFileError naming the file."""
    fail = _failure(file)

    def refuse_constant(token: str) -> None:
        raise fail(f"non-standard JSON constant {token} (save writes strict JSON)")

    try:
        data = json.loads(file.read_text(encoding="utf-8"), parse_constant=refuse_constant)
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"is not valid JSON (truncated or edited?): {exc}") from None
    if not isinstance(data, dict):
        raise fail(f"must hold a JSON object, got {type(data).__name__}")
    return data


def _format_version(meta: dict[str, Any], fail) -> int:
    """The file's format version: its ``format_version``, 1 where the field is absent."""
    if "format_version" not in meta:
        return 1  # written before the field existed: format 1
    version = meta["format_version"]
    if not _is_int(version) or version not in READABLE_FORMAT_VERSIONS:
        newer = _is_int(version) and version > max(READABLE_FORMAT_VERSIONS)
        readable = ", ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
        raise fail(f"unsupported format_version {version!r} (this version of dpsynth reads "
                   f"format_version {readable}, and files without the field as 1"
                   + ("; the file was written by a newer dpsynth: upgrade to read it)"
                      if newer else ")"))
    return int(version)


def _read_params(file: Path, estimator: type) -> dict[str, Any]:
    """``params.json``, every field checked, the plan's accounting re-derived: its
    ``format_version``, ``stage``, ``params`` (with the defaults of parameters added to
    the format since), ``n_features_in`` and ``privacy_plan`` (a :class:`PrivacyPlan`)."""
    fail = _failure(file)
    meta = _read_json(file)
    version = _format_version(meta, fail)
    stage = meta.get("stage", "mixture")
    if stage not in STAGES:
        raise fail(f"stage must be 'clusters' or 'mixture', got {stage!r}")
    params = meta.get("params")
    if not isinstance(params, dict):
        raise fail(f"'params' must be a JSON object, got {params!r}")
    params = {key: value for key, value in PARAMS_ADDED_IN_FORMAT_1.items()
              if key not in params} | params
    obj = _check_param_values(params, estimator, fail)
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
    return {"format_version": version, "stage": stage, "params": params,
            "n_features_in": int(dim), "privacy_plan": plan}


def _check_param_values(params: dict[str, Any], estimator: type, fail):
    """The estimator ``params`` describe (unfitted): exactly its parameters, valid."""
    expected = set(estimator._get_param_names())
    unknown, lacking = sorted(set(params) - expected), sorted(expected - set(params))
    if unknown or lacking:
        raise fail("'params' " + " and ".join(
            part for part in (unknown and f"has unknown keys {unknown}",
                              lacking and f"lacks {lacking}") if part))
    try:
        obj = estimator(**{**params, "epsilon": epsilon_from_json(params["epsilon"])})
        obj._validate_params(check_clusterer=False)
    except ValueError as exc:
        raise fail(f"invalid params: {exc}") from None
    return obj


def _check_params(params: Any, plan: PrivacyPlan, dim: Any, estimator: type, fail) -> None:
    """What :func:`_read_params` checks of a mixture about to be written."""
    if not isinstance(params, dict):
        raise fail(f"'params' must be a JSON object, got {params!r}")
    obj = _check_param_values(params, estimator, fail)
    if not _is_int(dim) or dim < 1:
        raise fail(f"n_features_in must be a positive integer, got {dim!r}")
    problem = obj._plan_target_problem(plan, dim)
    if problem:
        raise fail(problem)


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


def _check_arrays(a: dict[str, np.ndarray], params: dict[str, Any], d: int, stage: str,
                  file: Path) -> None:
    """Presence, dtypes, shapes (against each other and n_features_in ``d``) and values of
    the saved arrays, given the (checked) parameters; ModelFileError naming the file and
    the array on the first problem."""
    fail = _failure(file)

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

    covariance, subspace_dim = params["covariance"], params["subspace_dim"]
    d = int(d)
    classes = array("classes", (None,), "iub")
    C = len(classes)
    if C == 0 or len(np.unique(classes)) != C:
        raise fail(f"array 'classes' must be non-empty and without duplicates, "
                   f"got {classes.tolist()[:10]}")
    array("class_totals", (C,), "f")
    non_negative("class_totals")
    r = int(subspace_dim) if uses_subspace(covariance, subspace_dim, d) else None
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
                   f"{covariance!r}, subspace_dim={subspace_dim!r}, n_features_in={d}) "
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
        if params["components_per_class"] > 1 and covariance != "tied":
            expected |= {"cluster_centres", "cluster_centre_counts"}
            per_class = array("cluster_centre_counts", (C,), "iu")
            array("cluster_centres", (int(per_class.sum()), q), "f")
    if stage == "mixture":
        expected |= set(MIXTURE_ARRAYS)
        component_class = array("component_class", (None,), "iu")
        K = len(component_class)
        if K and not ((component_class >= 0) & (component_class < C)).all():
            raise fail(f"array 'component_class' has class indices outside [0, {C})")
        array("weights", (K,), "f")
        non_negative("weights")
        array("means", (K, d), "f")
        array("residual_var", (K,), "f")
        non_negative("residual_var")
        cov_shape = {"spherical": (K,), "diagonal": (K, q)}.get(covariance, (K, q, q))
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


def _check_embedding_info(info: Any, classes: np.ndarray, dim: int, file: Path) -> None:
    """``embedding_info.json`` describes the embeddings this model was fitted on."""
    fail = _failure(file)
    if not isinstance(info, dict):
        raise fail(f"must hold a JSON object, got {type(info).__name__}")
    lacking = [key for key in EMBEDDING_INFO_KEYS if key not in info]
    if lacking:
        raise fail(f"lacks {lacking} (expected the keys {list(EMBEDDING_INFO_KEYS)})")
    if info["dim"] != dim:
        raise fail(f"dim is {info['dim']!r}, but the model's n_features_in is {dim}")
    names = info["class_names"]
    if info["classes"] != classes.tolist() or not isinstance(names, list) \
            or len(names) != len(classes):
        raise fail(f"classes {info['classes']!r} with class_names {names!r} are not the "
                   f"model's classes {classes.tolist()}")


def _is_int(value: object) -> bool:
    """An integer that is not a bool (bool is an int subclass: True must not mean 1)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
