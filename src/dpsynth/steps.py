"""The pipeline steps: plain functions, files in, files out (DESIGN.md's table).

This is the only module where steps meet files. Each step reads what earlier steps wrote
(the EmbeddingSet format, ``privacy_plan.json``, a saved mixture) and writes its own
outputs; none reaches into another's internals, so the Kubeflow components call exactly
these functions and a step can be swapped for anything that reads and writes the formats.

============  ==========================================  ===============================
step          reads                                       writes
============  ==========================================  ===============================
plan          RunConfig                                   privacy_plan.json
encode        images (RunConfig.data)                     EmbeddingSet (cached by key)
dp_cluster    EmbeddingSet, privacy_plan.json             clusters/ (DP releases)
fit_gmm       EmbeddingSet, clusters/, privacy_plan.json  mixture/ (DP releases)
synthesize    mixture/                                    synthetic EmbeddingSet
decode        synthetic EmbeddingSet                      images.npy, labels.npy, grid.png
evaluate      synthetic + test EmbeddingSet               metrics.json, plots, report.html
============  ==========================================  ===============================
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dpsynth.config import EvaluateConfig, RunConfig
from dpsynth.cpu_threads import sized_threads, use_torch_threads
from dpsynth.data.sources import make_source
from dpsynth.data.store import (
    MANIFEST,
    EmbeddingParts,
    EmbeddingSet,
    EmbeddingSetError,
    EmbeddingSetWriter,
    check_embedding_set,
    join_embedding_sets,
    open_embeddings,
    read_manifest,
    write_json_atomic,
)
from dpsynth.gmm.mixture import shard_sizes
from dpsynth.gmm.noise_dominance import assess_model
from dpsynth.gpu import require_cuda
from dpsynth.outputs import remove_embedding_set
from dpsynth.privacy import PrivacyPlan
from dpsynth.privacy.plan import PlanMismatchError, ReleaseSpec, epsilon_to_json
from dpsynth.synthesizer import DPSynthesizer

PLAN_FILE = "privacy_plan.json"
EMBEDDING_INFO = "embedding_info.json"
#: Bump when an encoder's output changes for the same weights, to invalidate caches.
#: 2: EfficientNet-Lite0 resizes before repeating grey to RGB (float rounding differs).
ENCODING_VERSION = 2


class StepInputError(ValueError):
    """A step's inputs do not fit together (wrong plan, dimension, or artifact)."""


# ----------------------------------------------------------------------------- plan
def build_synthesizer(config: RunConfig, normalized_encoder: bool) -> DPSynthesizer:
    """The run's DPSynthesizer: the model section is its parameters (generated from its
    signature, config.ModelConfig), the privacy section its epsilon, delta and noise
    seed; ``normalize: null`` follows the encoder."""
    params = config.model.model_dump()
    if params["normalize"] is None:
        params["normalize"] = normalized_encoder
    privacy = config.privacy
    return DPSynthesizer(privacy.epsilon, privacy.delta, noise_seed=privacy.noise_seed,
                         **params)


def make_encoder(config: RunConfig):
    """The encoder of ``config``, built once per process for the same name and options:
    the pre-flight, each split's encode and the image-level evaluation share it (building
    a pretrained network is most of a small run's start-up). The plan builds none
    (:func:`encoder_facts`)."""
    key = (config.encoder.name, json.dumps(config.encoder.options, sort_keys=True,
                                           default=str))
    if key not in _ENCODERS:
        from dpsynth.encoders import get_encoder

        _ENCODERS.clear()  # one at a time: a process that switches encoders frees the last
        _ENCODERS[key] = get_encoder(config.encoder.name, **config.encoder.options)
    return _ENCODERS[key]


#: The encoder :func:`make_encoder` built last, by (name, options).
_ENCODERS: dict[tuple[str, str], Any] = {}


def encoder_facts(config: RunConfig):
    """The public facts of the run's encoder (:class:`dpsynth.encoders.EncoderFacts`:
    dimension, modality, normalisation), as its factory declares them: no network is built
    and no weight is read. An encoder that declares none (a third-party plugin) is built
    by :func:`make_encoder`, so the run still builds it once."""
    from dpsynth.encoders import describe_encoder

    return describe_encoder(config.encoder.name, config.encoder.options,
                            build=lambda: make_encoder(config))


def make_plan(config: RunConfig, declared: Sequence[ReleaseSpec] = ()) -> PrivacyPlan:
    """The privacy plan of ``config``. Touches no data and builds no encoder: the plan
    depends only on public configuration (the encoder's declared dimension included,
    :func:`encoder_facts`).

    ``declared``: releases that replacement components of the pipeline declared (their
    ``releases.yaml``, :mod:`dpsynth_kfp.declarations`), calibrated together with the
    configuration's own under the one noise scale and charged with them."""
    facts = encoder_facts(config)
    return build_synthesizer(config, facts.normalized).make_plan(facts.dim, declared)


def plan(config: RunConfig, out: Path) -> PrivacyPlan:
    """Write ``privacy_plan.json`` for ``config`` (see :func:`make_plan`)."""
    result = make_plan(config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result.to_dict())
    return result


def read_plan(path: Path) -> PrivacyPlan:
    path = Path(path)
    if not path.is_file():
        raise StepInputError(f"privacy plan {path} does not exist (run the plan step first)")
    from dpsynth.privacy.plan import verify_plan_dict

    try:
        # The plan file is where the DP steps take their noise from: an edited sigma or
        # epsilon must be refused here, not used.
        return verify_plan_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc).removeprefix("privacy plan: ")
        raise StepInputError(f"privacy plan {path}: {reason}") from None


# --------------------------------------------------------------------------- encode
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60]


def encoding_key(config: RunConfig, split: str, part: int = 0,
                 parts: int = 1) -> tuple[dict[str, Any], Any]:
    """The cache key of a split's embeddings (or one part of them) and its source. The
    encoder's options are keyed with its defaults filled in (its input size among them)."""
    from dpsynth.encoders import encoder_options

    source = make_source(config.data, split)
    key = {"dataset": source.dataset_id, "source": source.fingerprint(),
           "encoder": config.encoder.name,
           "encoder_options": encoder_options(config.encoder.name, config.encoder.options),
           "shard_rows": config.encoder.shard_rows, "encoding_version": ENCODING_VERSION}
    if parts > 1:
        key["part"] = [part, parts]
    return key, source


#: The cache's private index (inside ``encoder.cache_dir``): one file per key, named by the
#: key's sha256 and holding the name of the entry directory.
CACHE_INDEX = "index"
#: Entry directories: public slugs and a random id, nothing derived from the data, since
#: their paths are printed in run.json and logs outside the private boundary.
_ENTRY_NAME = re.compile(r"[A-Za-z0-9._-]*[0-9a-f]{32}")
#: The files dpsynth writes into a cache entry (EmbeddingSetWriter's names and its
#: temporary files); discarding a damaged entry removes these and nothing else.
_ENTRY_FILE = re.compile(r"manifest\.json|shard-\d{5,}\.(embeddings|labels)\.npy|"
                         r"\.(manifest\.json|shard-\d{5,}\.(embeddings|labels)\.npy)"
                         r"(\.[0-9a-f]+)?\.tmp")


class CacheEntryWarning(UserWarning):
    """A damaged embedding cache entry was found and discarded (it will be re-encoded)."""


def _key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _cache_root(config: RunConfig) -> Path:
    return Path(config.encoder.cache_dir).expanduser()


def _read_index(file: Path) -> str | None:
    """The entry name an index file holds; None when there is no index file (a damaged one
    is removed, with a warning, so that a new entry takes its place)."""
    for _ in range(20):
        try:
            text = file.read_text().strip()
        except FileNotFoundError:
            return None
        except ValueError:  # not text at all
            text = ""
        if _ENTRY_NAME.fullmatch(text):
            return text
        # Only where hard links are unsupported is an index file created empty and then
        # written (see _claim_index): give a concurrent writer a moment to finish.
        time.sleep(0.05)
    # The file's name (the key's digest) stays out of the message: warnings reach logs.
    warnings.warn(f"a file of the embedding cache index {file.parent} was damaged; removed "
                  "it, so its key gets a new cache entry", CacheEntryWarning, stacklevel=3)
    file.unlink(missing_ok=True)
    return None


def _claim_index(file: Path, name: str) -> None:
    """Record ``name`` for the key of index ``file`` unless another process already has:
    the file appears whole (written aside, then hard-linked, which fails if it exists), so
    concurrent encoders of one key agree on the first one's entry."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, file)
        except FileExistsError:
            pass  # another encoder won; the caller adopts its entry
        except OSError:  # no hard links on this file system: an exclusive create
            try:
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return
            with os.fdopen(fd, "w") as f:
                f.write(name + "\n")
    finally:
        tmp.unlink(missing_ok=True)


def _content_index(config: RunConfig, key: dict[str, Any]) -> Path:
    """The index file that names a complete entry holding ``key``'s embeddings under any
    dataset id: the key less its ``dataset`` is what the embeddings are a function of (the
    source's content fingerprint, the encoder and its options, the sharding)."""
    content = {k: v for k, v in key.items() if k != "dataset"}
    return _cache_root(config) / CACHE_INDEX / f"content-{_key_digest(content)}"


def _same_content_entry(config: RunConfig, key: dict[str, Any],
                        out_dir: Path | None) -> EmbeddingSet | None:
    """A complete cache entry, other than ``out_dir``, with ``key``'s embeddings under
    another dataset id (checked, sha256 included), or None. One that no longer is (gone,
    damaged, or changed) is dropped from the content index, so a complete entry replaces
    it there."""
    file = _content_index(config, key)
    name = _read_index(file)
    if name is None or (out_dir is not None and name == out_dir.name):
        return None
    content = {k: v for k, v in key.items() if k != "dataset"}
    try:
        found = EmbeddingSet.open(_cache_root(config) / name)
        theirs = {k: v for k, v in found.manifest.get("key", {}).items() if k != "dataset"}
        if theirs == json.loads(json.dumps(content, default=str)):
            return found
    except (EmbeddingSetError, OSError, AttributeError):
        pass  # gone or damaged: its own key's next encode deals with it
    file.unlink(missing_ok=True)
    return None


def _record_content(config: RunConfig, key: dict[str, Any], entry: Path) -> None:
    """Name complete ``entry`` in the content index, unless an entry is named there."""
    file = _content_index(config, key)
    if not file.exists():
        with contextlib.suppress(OSError):  # the cache works without it
            _claim_index(file, entry.name)


def _cache_lookup(config: RunConfig, key: dict[str, Any]) -> Path | None:
    """The cache entry directory recorded for ``key``, or None (nothing is created)."""
    name = _read_index(_cache_root(config) / CACHE_INDEX / _key_digest(key))
    return None if name is None else _cache_root(config) / name


def cache_path(config: RunConfig, key: dict[str, Any]) -> Path:
    """The cache entry directory for ``key``: the one the private index records, or a new
    one (a random name, recorded first). Safe when several encoders ask at once: all get
    the first one's directory. The directory itself is created by the writer."""
    root = _cache_root(config)
    file = root / CACHE_INDEX / _key_digest(key)
    try:
        for _ in range(5):
            name = _read_index(file)
            if name is not None:
                return root / name
            _claim_index(file, f"{_slug(key['dataset'])}-{_slug(key['encoder'])}-"
                               f"{uuid.uuid4().hex}")
    except OSError as exc:
        # Named by folder only: the index file's name is a digest of the private data.
        raise OSError(exc.errno, f"cannot use the embedding cache index in {file.parent}: "
                                 f"{exc.strerror or type(exc).__name__}") from None
    raise OSError(f"could not record an entry in the embedding cache index {file.parent}")


def _discard_cache_entry(path: Path, problem: str) -> None:
    """Warn about a damaged cache entry and remove the files dpsynth wrote there."""
    warnings.warn(f"embedding cache entry {path} is damaged and was discarded; it will be "
                  f"encoded again. {problem}", CacheEntryWarning, stacklevel=3)
    for file in path.iterdir():
        if _ENTRY_FILE.fullmatch(file.name) and (file.is_symlink() or file.is_file()):
            file.unlink(missing_ok=True)
    if not any(path.iterdir()):  # anything else there is left alone
        path.rmdir()


def _check_cache_entry(path: Path, key: dict[str, Any]) -> str:
    """"absent", "partial" or "complete" for the cache entry at ``path``, after checking
    every shard it lists (sha256 included; remembered in-process, so the encode that
    follows does not hash the files again). A damaged entry (unreadable manifest, another
    key, a missing, truncated or corrupt shard) is discarded with a
    :class:`CacheEntryWarning` naming it, and is then "absent"."""
    if not (path / MANIFEST).exists():
        return "absent"
    try:
        manifest = check_embedding_set(path, verify=True)
        # Compared as JSON, as the manifest stores it.
        if manifest.get("key") != json.loads(json.dumps(key, default=str)):
            raise EmbeddingSetError(f"{path / MANIFEST} holds another key than the index "
                                    "says")
    except EmbeddingSetError as exc:
        _discard_cache_entry(path, str(exc))
        return "absent"
    return "complete" if manifest.get("complete") else "partial"


def check_cached_encoding(config: RunConfig, split: str, *, part: int = 0,
                          parts: int = 1) -> str:
    """Pre-flight check of a split's embedding cache entry; encodes and decodes nothing.

    Returns "absent" (nothing cached, or the cache is off: encode will encode it all),
    "partial" (encode will resume it) or "complete" (encode will reuse it, or take over
    the shards of the same data's entry under another dataset id). A damaged entry
    is discarded with a :class:`CacheEntryWarning` naming its path and the problem, and
    reported "absent". The source is listed to compute the key (its fingerprint), and the
    entry's files are hashed once: :func:`encode` in the same process reuses the check.
    """
    if not config.encoder.cache:
        return "absent"
    key, _ = encoding_key(config, split, part, parts)
    path = _cache_lookup(config, key)
    state = "absent" if path is None else _check_cache_entry(path, key)
    if state != "complete" and _same_content_entry(config, key, path) is not None:
        return "complete"
    return state


def progress_unit(encoder: Any) -> str:
    """The encode progress bar's unit, after what the encoder reads: texts/s or img/s."""
    return "texts" if getattr(encoder, "modality", "image") == "text" else "img"


def encode(config: RunConfig, split: str, out_dir: Path | None = None, *, part: int = 0,
           parts: int = 1, progress: bool = True) -> EmbeddingSet:
    """Encode a split into an EmbeddingSet, shard by shard.

    ``out_dir=None`` uses the embedding cache (``encoder.cache_dir``, keyed by dataset,
    source fingerprint, encoder and its options; see :func:`cache_path`): a complete
    cached set is returned without encoding, a partial one is resumed, and a damaged one
    (see :func:`check_cached_encoding`) is discarded with a warning and encoded again.
    The embeddings are a function of the content alone (the key less its dataset id): a
    complete entry of the same content under another dataset id gives its shards (hard
    links) instead of an encode, so a run on the same data under another
    ``data.dataset_id`` (a public-data ceiling, say) encodes nothing.
    With ``encoder.cache: false`` the set is written afresh to ``out_dir``. Shards already
    written under the same key are never redone, so a crashed encode resumes where it
    stopped.

    ``part``/``parts`` encode one of ``parts`` contiguous groups of whole shards (the
    pipeline's fan-out). The parts, read in order with :func:`open_embeddings`, hold
    exactly the shards of the unsplit set, so every later step gives the same result.
    """
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    # On the CUDA image, a node whose driver cannot run torch's CUDA would make the
    # encoder pick the CPU and run for hours: refused (or, if allowed, warned) before the
    # source is listed or any record read. In the pipeline this is after plan's charge:
    # plan runs on the CPU image and cannot see the driver of the node encode lands on.
    require_cuda("encode", allow_cpu=config.encoder.allow_cpu)
    key, source = encoding_key(config, split, part, parts)
    checked = False
    cached = out_dir is None and config.encoder.cache
    if out_dir is None:
        out_dir = cache_path(config, key)
        if config.encoder.cache:
            # A damaged entry is discarded here, so it is re-encoded instead of failing
            # every retry (or, zeroed, being used silently).
            _check_cache_entry(out_dir, key)
            checked = True
    out_dir = Path(out_dir)
    if not config.encoder.cache and out_dir.exists():
        remove_embedding_set(out_dir)  # only the set's own files, never a user's
    encoder = make_encoder(config)
    writer = EmbeddingSetWriter(
        out_dir, encoder=encoder.name, encoder_options=key["encoder_options"],
        dim=encoder.dim, normalized=encoder.normalized, classes=source.classes,
        class_names=source.class_names, dataset_id=source.dataset_id, key=key,
        verify=not checked)
    if writer.complete:
        if cached:
            _record_content(config, key, out_dir)  # an entry made before the content index
        return EmbeddingSet.open(out_dir, verify=False)  # the writer has just checked it
    rows = config.encoder.shard_rows
    n = len(source)
    mine = np.array_split(np.arange(max(1, -(-n // rows))), parts)[part]
    spans = [(local, int(g) * rows, min(n, (int(g) + 1) * rows)) for local, g in enumerate(mine)]
    # The same data under another dataset id (e.g. a public copy for a ceiling run) was
    # encoded already: its shards are taken over, not encoded again. This entry keeps its
    # own manifest (its dataset id), so every later step reads it as before.
    same = _same_content_entry(config, key, out_dir) if cached else None
    for shard in same.manifest["shards"] if same is not None else []:
        if int(shard["index"]) < len(spans) and not writer.has_shard(int(shard["index"])):
            writer.adopt_shard(int(shard["index"]), same, shard)
    if not all(writer.has_shard(local) for local, _, _ in spans):
        use_torch_threads()  # sized to the cores other work leaves (dpsynth.cpu_threads)
    done_rows = sum(stop - start for local, start, stop in spans if writer.has_shard(local))
    label = f"encode {split}" + (f" part {part + 1}/{parts}" if parts > 1 else "")
    with tqdm(total=sum(stop - start for _, start, stop in spans), initial=done_rows,
              disable=not progress, unit=progress_unit(encoder),
              desc=f"{label} ({encoder.name})") as bar:
        for local, start, stop in spans:
            if writer.has_shard(local):
                continue
            skipped = getattr(source, "skipped", [])
            already = len(skipped)
            images, labels = source.read(start, stop)
            X = encoder.encode(images, config.encoder.batch_size, on_batch=bar.update)
            # Inside the private boundary (the embedding set is private): which files of
            # this shard were left out, so a resumed encode lists them all.
            writer.write_shard(local, X, labels, skipped=skipped[already:])
            bar.update(len(skipped) - already)  # left-out images count as done
    done = writer.finish(len(spans))
    if cached:
        _record_content(config, key, out_dir)
    return done


# ---------------------------------------------------------------- dp_cluster, fit_gmm
Embeddings = Path | str | list[Path] | list[str]


def _check_plan_fits(plan_: PrivacyPlan, embeddings: EmbeddingSet | EmbeddingParts) -> None:
    dim = plan_.metadata.get("embedding_dim")
    if dim != embeddings.dim:
        raise StepInputError(f"the privacy plan was made for dimension {dim}, the "
                             f"embeddings at {embeddings.path} have dimension "
                             f"{embeddings.dim}")
    if embeddings.manifest.get("synthetic"):
        raise StepInputError(f"{embeddings.path} is synthetic; the DP steps take the "
                             "private training embeddings")


def _plan_mismatch(plan_path: Path, exc: PlanMismatchError) -> StepInputError:
    """The DP steps draw their noise from the plan file, as recorded; one that is not the
    configuration's (checked against the specs it implies) is refused, naming the release."""
    return StepInputError(f"privacy plan {plan_path}: {exc}; re-run the plan step with the "
                          "same configuration")


def _embedding_info(embeddings: EmbeddingSet | EmbeddingParts) -> dict[str, Any]:
    m = embeddings.manifest
    return {k: m[k] for k in ("encoder", "encoder_options", "dim", "normalized", "classes",
                              "class_names", "dataset_id")}


def dp_cluster(embeddings_dir: Embeddings, plan_path: Path, out_dir: Path) -> Path:
    """DP releases of the first half of the fit: shared subspace, class counts and sums,
    and DP k-means centres. Writes a saved (clusters-stage) synthesizer to ``out_dir``.

    ``embeddings_dir``: the private training EmbeddingSet, or the list of its parts."""
    embeddings = open_embeddings(embeddings_dir)
    plan_ = read_plan(plan_path)
    _check_plan_fits(plan_, embeddings)
    synth = DPSynthesizer.from_plan(plan_)
    try:
        # The plan file is the source of the noise: drawn with the sigmas it records.
        synth.fit_clusters(embeddings.shards(), classes=embeddings.classes, plan=plan_)
    except PlanMismatchError as exc:
        raise _plan_mismatch(plan_path, exc) from None
    synth.save(out_dir)
    write_json_atomic(Path(out_dir) / EMBEDDING_INFO, _embedding_info(embeddings))
    return Path(out_dir)


#: The estimator's warning for classes with no released component (by label), which
#: :func:`fit_gmm` replaces with one naming the classes.
_NO_COMPONENT_WARNING = r"classes .* have no component above the noise threshold"


def name_classes(labels: Sequence[int], names: dict[int, str]) -> str:
    """Classes as a person reads them: ``'love' (4), 'joy' (5)``, name then label."""
    return ", ".join(f"{names[int(c)]!r} ({int(c)})" for c in labels)


def fit_gmm(embeddings_dir: Embeddings, clusters_dir: Path, plan_path: Path,
            out_dir: Path) -> Path:
    """DP mixture release (weights, means, covariances per component) given the clusters."""
    embeddings = open_embeddings(embeddings_dir)
    plan_ = read_plan(plan_path)
    _check_plan_fits(plan_, embeddings)
    synth = DPSynthesizer.load(clusters_dir)
    if not hasattr(synth, "clusters_"):
        raise StepInputError(f"{clusters_dir} holds no cluster releases (not a dp_cluster "
                             "output)")
    try:
        # The plan file's sigmas, once it is checked to be the clusters' configuration's
        # and the plan they were released under. The estimator's own warning knows only
        # class labels; the one below names the classes as a person reads them.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_COMPONENT_WARNING)
            synth.fit_gmm(embeddings.shards(), plan=plan_)
    except PlanMismatchError as exc:
        raise _plan_mismatch(plan_path, exc) from None
    if dropped := synth.dropped_classes_:
        info = embeddings.manifest
        names = dict(zip(info["classes"], info["class_names"], strict=True))
        warnings.warn(f"classes {name_classes([d['class'] for d in dropped], names)} have no "
                      "component above the noise threshold "
                      f"({float(dropped[0]['threshold']):.1f} records) and will get no "
                      "samples", stacklevel=2)
    synth.save(out_dir)
    shutil.copyfile(Path(clusters_dir) / EMBEDDING_INFO, Path(out_dir) / EMBEDDING_INFO)
    return Path(out_dir)


# ------------------------------------------------------------------------ synthesize
def synthesize(mixture_dir: Path, out_dir: Path, *, n: int, class_balance: str = "proportional",
               random_state: int | None = 0, shard_rows: int = 65536) -> EmbeddingSet:
    """Sample ``n`` synthetic records into an EmbeddingSet (post-processing: no budget).

    Written shard by shard in float32 as they are drawn
    (:meth:`~dpsynth.synthesizer.DPSynthesizer.sample_shards`): memory is one shard of
    ``shard_rows`` rows, whatever ``n``. The set depends only on the mixture, ``n``,
    ``class_balance``, ``random_state`` and ``shard_rows``; :func:`synthesize_part` +
    :func:`join_synthetic` write the same set bit for bit from several processes."""
    return synthesize_part(mixture_dir, out_dir, part=0, parts=1, n=n,
                           class_balance=class_balance, random_state=random_state,
                           shard_rows=shard_rows)


def synthesize_part(mixture_dir: Path, out_dir: Path, *, part: int, parts: int, n: int,
                    class_balance: str = "proportional", random_state: int | None = 0,
                    shard_rows: int = 65536) -> EmbeddingSet:
    """Part ``part`` of ``parts`` of :func:`synthesize`'s set: a complete EmbeddingSet in
    ``out_dir`` holding one contiguous group of its shards (``np.array_split`` of the shard
    indices, as encode's fan-out; indices are the whole set's), whose key adds
    ``"part": [part, parts]``. :func:`join_synthetic` joins the parts into the set
    :func:`synthesize` writes. More than one part needs an integer ``random_state``."""
    if not (isinstance(parts, int) and isinstance(part, int) and 0 <= part < parts):
        raise ValueError(f"need integers 0 <= part < parts, got part={part!r}, "
                         f"parts={parts!r}")
    if parts > 1 and random_state is None:
        raise ValueError("a synthesis split into parts needs an integer random_state (every "
                         "part must draw from the same seed)")
    mixture_dir = Path(mixture_dir)
    synth = DPSynthesizer.load(mixture_dir)
    info = json.loads((mixture_dir / EMBEDDING_INFO).read_text())
    mine = np.array_split(np.arange(len(shard_sizes(int(n), int(shard_rows)))), parts)[part]
    start, stop = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
    shards = synth.sample_shards(n, shard_rows, class_balance=class_balance,
                                 random_state=random_state, start_shard=start,
                                 stop_shard=stop)
    plan_ = synth.privacy_plan_
    # Classes below the noise threshold get no samples: the set says which and why.
    names = dict(zip(info["classes"], info["class_names"], strict=True))
    dropped = [{**d, "name": names[d["class"]]} for d in synth.dropped_classes_]
    # Released classes whose samples are mostly noise: which, and why (public releases).
    noisy = assess_model(synth, names)
    key = {"synthetic_of": info["dataset_id"], "n": n, "class_balance": class_balance,
           "random_state": random_state, "shard_rows": shard_rows}
    out_dir = Path(out_dir)
    # A resample replaces the set: only the files of the set there are removed.
    remove_embedding_set(out_dir)
    writer = EmbeddingSetWriter(
        out_dir, dim=synth.n_features_in_, encoder=info["encoder"],
        encoder_options=info["encoder_options"], normalized=synth.normalize,
        classes=info["classes"], class_names=info["class_names"],
        dataset_id=f"synthetic:{info['dataset_id']}", synthetic=True,
        key=key if parts == 1 else {**key, "part": [part, parts]},
        provenance={"private": plan_.private, "epsilon": epsilon_to_json(plan_.epsilon_pld),
                    "delta": plan_.delta, "noise_seeded": plan_.noise_seeded,
                    "dropped_classes": dropped, "noise_dominance": noisy})
    # Memory: the shard being drawn only, not the one just written too (hence no
    # enumerate(), whose cached result tuple would keep the last shard alive).
    index = start
    for X, y in shards:
        writer.write_shard(index, X, y)
        index += 1
        del X, y
    return writer.finish(None if parts > 1 else stop)


def join_synthetic(part_dirs: list[Path], out_dir: Path) -> EmbeddingSet:
    """Join the sets of :func:`synthesize_part` (every part of one synthesis, any order)
    into ``out_dir``: the set :func:`synthesize` writes, bit for bit (shard files are
    hard-linked where possible)."""
    key = read_manifest(Path(part_dirs[0])).get("key") or {}
    try:
        expected = len(shard_sizes(int(key["n"]), int(key["shard_rows"])))
    except (KeyError, TypeError, ValueError):
        raise EmbeddingSetError(f"{part_dirs[0]} is not a part of a synthetic set (its key "
                                "lacks n and shard_rows)") from None
    out_dir = Path(out_dir)
    remove_embedding_set(out_dir)
    return join_embedding_sets(part_dirs, out_dir, expected_shards=expected)


# ---------------------------------------------------------------------------- decode
def make_decoder(synthetic: EmbeddingSet, decoder: str | None = None,
                 options: dict[str, Any] | None = None):
    """The named decoder, or else the one that inverts the set's encoder (or None)."""
    from dpsynth.decoders import decoder_for, get_decoder

    if decoder:
        return get_decoder(decoder, **(options or {}))
    return decoder_for(synthetic.encoder, **synthetic.manifest.get("encoder_options", {}))


def decode(synthetic_dir: Path, out_dir: Path, *, per_class: int = 10,
           decoder: str | None = None, options: dict[str, Any] | None = None,
           allow_cpu: bool = False) -> Path | None:
    """Decode ``per_class`` synthetic samples per class with ``decoder`` (registry name and
    options) or the decoder that inverts the set's encoder; ``None`` (and nothing
    written) when there is none. On the CUDA image without a usable GPU it refuses to
    start unless ``allow_cpu`` (:func:`dpsynth.gpu.require_cuda`)."""
    from dpsynth.evaluation.plots import save_image_grid

    # As encode: no silent hours on CPU on the CUDA image; checked before the set is read.
    require_cuda("decode", allow_cpu=allow_cpu)
    synthetic = EmbeddingSet.open(synthetic_dir)
    decoder = make_decoder(synthetic, decoder, options)
    if decoder is None:
        return None
    X, y = synthetic.load()
    rows = _first_per_class(y, synthetic.classes, per_class)
    use_torch_threads()
    images = decoder.decode(X[rows])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "images.npy", images, allow_pickle=False)
    np.save(out_dir / "labels.npy", y[rows], allow_pickle=False)
    write_png_index(images, y[rows], synthetic.classes.tolist(), synthetic.class_names,
                    out_dir)
    save_image_grid(images, y[rows], synthetic.classes.tolist(), synthetic.class_names,
                    per_class, out_dir / "grid.png")
    return out_dir


def _first_per_class(y: np.ndarray, classes: np.ndarray, per_class: int) -> np.ndarray:
    """Row indices of the first ``per_class`` records of every class, in row order."""
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in classes]))


def _mlp_params(settings: EvaluateConfig) -> dict[str, Any]:
    """The evaluation MLP's settings, the same for every model a run trains."""
    return {"hidden": settings.hidden, "steps": settings.steps, "lr": settings.lr,
            "batch_size": settings.batch_size, "random_state": settings.random_state}


def write_png_index(images: np.ndarray, labels: np.ndarray, classes: list[int],
                    class_names: list[str], out_dir: Path) -> Path:
    """``png/<class>/<n>.png`` for every image and ``index.csv`` (file, label, class)."""
    import csv

    from PIL import Image

    names = dict(zip(classes, class_names, strict=True))
    rows = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        rel = Path("png") / _slug(f"{int(label)}-{names[int(label)]}") / f"{i:06d}.png"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out_dir / rel)
        rows.append((rel.as_posix(), int(label), names[int(label)]))
    with open(out_dir / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "class"])
        writer.writerows(rows)
    return out_dir / "index.csv"


# torch's and BLAS's default, a thread per core, stalls on a busy machine: the evaluation's
# threads are sized to the cores other work leaves (dpsynth.cpu_threads).
@sized_threads
def evaluate_images(synthetic_dir: Path, test_dir: Embeddings, config: RunConfig, *,
                    max_images: int = 10000, progress: bool = True) -> dict[str, Any]:
    """Image-level utility: decode synthetic samples, re-encode the *images* with the
    run's encoder, train the same MLP on those embeddings, score on the real test set.

    Post-processing of the DP release (decoder and encoder are public), so it is covered
    by the guarantee. ``max_images`` bounds the work, balanced over classes.
    """
    from dpsynth.evaluation.mlp import TwoLayerMLP

    synthetic = EmbeddingSet.open(synthetic_dir)
    test = open_embeddings(test_dir)
    decoder = make_decoder(synthetic, config.decode.decoder, config.decode.options)
    if decoder is None:
        raise StepInputError(f"encoder {synthetic.encoder!r} has no decoder: there are no "
                             "images to evaluate")
    encoder = make_encoder(config)
    if encoder.name != synthetic.encoder:
        raise StepInputError(f"the run's encoder {encoder.name!r} is not the one that made "
                             f"the synthetic set ({synthetic.encoder!r})")
    X, y = synthetic.load()
    rows = _first_per_class(y, synthetic.classes, max(1, max_images // len(synthetic.classes)))
    Z = np.empty((len(rows), encoder.dim), np.float32)
    batch = config.encoder.batch_size
    for start in tqdm(range(0, len(rows), batch), disable=not progress, unit="batch",
                      desc="decode + re-encode"):
        idx = rows[start:start + batch]
        Z[start:start + len(idx)] = encoder.encode_batch(decoder.decode(X[idx]))
    Xt, yt = test.load()
    clf = TwoLayerMLP(**_mlp_params(config.evaluate)).fit(Z, y[rows],
                                                          classes=synthetic.classes)
    return {"image_level_accuracy": clf.score(Xt, yt), "image_level_n": int(len(rows))}


# -------------------------------------------------------------------------- evaluate
def _by_name(per_class: dict[str, Any], classes: np.ndarray,
             class_names: Sequence[str]) -> dict[str, Any]:
    """``per_class`` (keyed by class label, as a string) keyed by class name instead."""
    names = dict(zip((str(int(c)) for c in classes), class_names, strict=True))
    return {names[k]: v for k, v in per_class.items()}


@sized_threads
def evaluate(synthetic_dir: Path, test_dir: Embeddings, out_dir: Path, *,
             settings: EvaluateConfig | None = None, train_dir: Embeddings | None = None,
             plan_path: Path | None = None, decoded_dir: Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train the MLP on synthetic embeddings, score on the real test set; plots + report.

    ``train_dir`` (the private embeddings) adds the non-private ceiling: the same MLP
    trained on real data. That number is NOT covered by the DP guarantee and is labelled
    ``nonprivate_*`` everywhere; leave ``train_dir`` out to release only DP results.
    """
    from dpsynth.evaluation.fidelity import frechet_distance
    from dpsynth.evaluation.mlp import TwoLayerMLP, classification_report
    from dpsynth.evaluation.plots import (
        plot_confusion,
        plot_per_class_accuracy,
        plot_projection,
    )
    from dpsynth.evaluation.report import (
        classes_without_samples,
        noise_dominance_metrics,
        write_html_report,
    )

    settings = settings or EvaluateConfig()
    synthetic = EmbeddingSet.open(synthetic_dir)
    test = open_embeddings(test_dir)
    if synthetic.dim != test.dim or synthetic.encoder != test.encoder:
        raise StepInputError(f"synthetic ({synthetic.encoder}, {synthetic.dim}-d) and test "
                             f"({test.encoder}, {test.dim}-d) embeddings do not match")
    if test.manifest.get("synthetic"):
        raise StepInputError(f"{test_dir} is synthetic; evaluate needs real test embeddings")
    classes = synthetic.classes
    mlp = _mlp_params(settings)
    Xs, ys = synthetic.load()
    Xt, yt = test.load()
    stages = ["MLP on synthetic"] + (["MLP on real (non-private)"] if train_dir else [])
    with tqdm(stages, disable=not progress, desc="evaluate", unit="model") as bar:
        syn_report = classification_report(
            yt, TwoLayerMLP(**mlp).fit(Xs, ys, classes=classes).predict(Xt), classes)
        bar.update(1)
        real_report = None
        if train_dir is not None:
            Xr, yr = open_embeddings(train_dir).load()
            real_report = classification_report(
                yt, TwoLayerMLP(**mlp).fit(Xr, yr, classes=classes).predict(Xt), classes)
            del Xr, yr
            bar.update(1)
    prov = synthetic.manifest.get("provenance", {})
    metrics: dict[str, Any] = {
        "accuracy": syn_report.accuracy,
        "nonprivate_accuracy": real_report.accuracy if real_report else None,
        "epsilon": prov.get("epsilon"), "delta": prov.get("delta"),
        "private": prov.get("private"), "noise_seeded": prov.get("noise_seeded"),
        "frechet_distance_to_test": frechet_distance(Xt, Xs),
        "n_synthetic": synthetic.count, "n_test": test.count,
        "per_class_accuracy": syn_report.to_dict()["per_class_accuracy"],
        "nonprivate_per_class_accuracy": (real_report.to_dict()["per_class_accuracy"]
                                          if real_report else None),
        # The same, keyed by class name (the keys above are class labels, which MLflow
        # metric names and the plots use): what a person reading the file looks for.
        "per_class_accuracy_by_name": _by_name(
            syn_report.to_dict()["per_class_accuracy"], classes, synthetic.class_names),
        "nonprivate_per_class_accuracy_by_name": (_by_name(
            real_report.to_dict()["per_class_accuracy"], classes, synthetic.class_names)
            if real_report else None),
        "confusion_matrix": syn_report.confusion.tolist(),
        "classes": classes.tolist(), "class_names": synthetic.class_names,
        "classes_without_test_records": [
            synthetic.class_names[int(np.flatnonzero(classes == c)[0])]
            for c in syn_report.classes_without_test_records],
        "classes_without_samples": classes_without_samples(
            classes, synthetic.class_names, ys, prov),
        **noise_dominance_metrics(classes, synthetic.class_names, prov),
        "encoder": synthetic.encoder,
        "encoder_options": synthetic.manifest.get("encoder_options", {}),
        "note": "accuracy: MLP trained only on DP synthetic embeddings, scored on the real "
                "test split. nonprivate_*: the same MLP trained on the real private data; "
                "a ceiling for the data owner, NOT covered by the DP guarantee.",
    }
    if metrics["classes_without_test_records"]:
        metrics["note"] += (" Per-class accuracy is null for classes with no test record "
                            "(nothing to score): "
                            + ", ".join(metrics["classes_without_test_records"]) + ".")
    if metrics["classes_without_samples"]:
        metrics["note"] += (" No synthetic samples (see classes_without_samples for why): "
                            + ", ".join(m["name"] for m in metrics["classes_without_samples"])
                            + ".")
    if metrics["classes_noise_dominated"]:
        metrics["note"] += (" Released but noise-dominated, their synthetic samples mostly "
                            "noise (see classes_noise_dominated for why): "
                            + ", ".join(m["name"] for m in metrics["classes_noise_dominated"])
                            + ".")
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    images = {
        "projection": plot_projection(Xs, ys, Xt, yt, synthetic.class_names,
                                      plots / "projection.png"),
        "per_class_accuracy": plot_per_class_accuracy(
            metrics["per_class_accuracy"], metrics["nonprivate_per_class_accuracy"],
            synthetic.class_names, plots / "per_class_accuracy.png"),
        "confusion_matrix": plot_confusion(syn_report.confusion, synthetic.class_names,
                                           plots / "confusion_matrix.png"),
    }
    if decoded_dir is not None and (Path(decoded_dir) / "grid.png").is_file():
        images["decoded_samples"] = Path(decoded_dir) / "grid.png"
    write_json_atomic(out_dir / "metrics.json", metrics)
    plan_dict = json.loads(Path(plan_path).read_text()) if plan_path else None
    write_html_report(out_dir / "report.html", metrics, plan_dict, images)
    return metrics


def evaluate_run(synthetic_dir: Path, test_dir: Embeddings, out_dir: Path,
                 config: RunConfig, *, train_dir: Embeddings, plan_path: Path,
                 decoded_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate` as ``config.evaluate`` asks: with the non-private baseline on
    ``train_dir`` when it is enabled, and with :func:`evaluate_images` added to
    ``metrics.json`` when ``image_level`` is set. ``dpsynth run`` and the pipeline's
    evaluate task both call this."""
    settings = config.evaluate
    metrics = evaluate(synthetic_dir, test_dir, out_dir, settings=settings,
                       train_dir=train_dir if settings.nonprivate_baseline else None,
                       plan_path=plan_path, decoded_dir=decoded_dir, progress=progress)
    if settings.image_level:
        metrics.update(evaluate_images(synthetic_dir, test_dir, config,
                                       max_images=settings.image_level_max,
                                       progress=progress))
        write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    return metrics
