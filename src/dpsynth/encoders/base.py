"""The Encoder interface and the registry of encoders by name.

An encoder is public and data-independent: its weights were never trained on the private
set, so encoding is a per-record transform, not a release.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dpsynth.registry import Registry


class Encoder(ABC):
    """Maps records to embeddings (n, dim) float32: images (n, H, W) or (n, H, W, C) uint8,
    or, for a text encoder (``modality = "text"``), a sequence of strings. Each encoder
    checks its own inputs (:meth:`check_inputs`)."""

    #: Registry name, recorded with every embedding set.
    name: str = ""
    #: What it encodes: "image" or "text" (a data source's records must match).
    modality: str = "image"
    #: Whether embeddings are L2-normalised (unit norm) by construction.
    normalized: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @abstractmethod
    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        """Encode one batch; the whole batch fits in memory."""

    def encode(self, images: np.ndarray, batch_size: int = 256, progress: bool = False,
               on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Encode all images in batches, optionally with a progress bar of its own or an
        ``on_batch(n_images)`` callback (e.g. a caller's progress bar)."""
        images = self.check_inputs(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start, batch in tqdm(self.batches(images, batch_size), disable=not progress,
                                 total=-(-len(images) // batch_size), desc=f"encode {self.name}",
                                 unit="batch"):
            out[start : start + len(batch)] = self.encode_batch(batch)
            if on_batch is not None:
                on_batch(len(batch))
        return out

    def check_inputs(self, inputs):
        """The inputs as :meth:`encode_batch` takes them, or a ValueError saying what this
        encoder takes (here: images; a text encoder overrides it)."""
        if isinstance(inputs, str) or (isinstance(inputs, list | tuple) and inputs
                                       and isinstance(inputs[0], str)) or (
                isinstance(inputs, np.ndarray) and inputs.dtype.kind in "OUS"):
            raise ValueError(f"encoder {self.name!r} encodes images, not text; for a text "
                             "source use a text encoder (e.g. sentence-transformers:<model "
                             "folder or package>)")
        return _check_images(inputs)

    @staticmethod
    def batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(images), batch_size):
            yield start, images[start : start + batch_size]


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (n, H, W) or (n, H, W, C), got shape {images.shape}")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels last, got shape {images.shape}")
    return images


ENCODERS = Registry("encoder", "dpsynth.encoders")
#: Decorator: make an encoder factory available to :func:`get_encoder` by name.
register_encoder = ENCODERS.register
available_encoders = ENCODERS.names


def _factory_name(name: str) -> str:
    prefix, sep, _ = name.partition(":")
    return prefix if sep and name not in ENCODERS and prefix in ENCODERS.names() else name


def encoder_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` with the encoder's output-shaping defaults filled in (a factory declares
    them as its ``default_options``, e.g. EfficientNet-Lite0's input ``image_size``).

    This is what the embedding cache keys and what the manifest, the report and MLflow
    show: a run with no options still says which input size it encoded at, and a default
    changed later never matches a cache entry made with the old one."""
    defaults = getattr(ENCODERS.get(_factory_name(name)), "default_options", {})
    return {**defaults, **(options or {})}


def get_encoder(name: str, **kwargs) -> Encoder:
    """Build the encoder registered under ``name``.

    Parametrised names call the prefix's factory with the rest as ``spec``:
    ``"open_clip:ViT-H-14:laion2b_s32b_b79k"`` -> ``open_clip`` factory, spec
    ``"ViT-H-14:laion2b_s32b_b79k"``.
    """
    prefix, sep, spec = name.partition(":")
    if sep and name not in ENCODERS and prefix in ENCODERS.names():
        return ENCODERS.get(prefix)(spec=spec, **kwargs)
    return ENCODERS.get(name)(**kwargs)
