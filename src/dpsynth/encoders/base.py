"""The Encoder interface and the registry of encoders by name.

An encoder is public and data-independent: its weights were never trained on the private
set, so encoding is a per-record transform, not a release.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm


class Encoder(ABC):
    """Maps images (n, H, W) or (n, H, W, C) uint8 to embeddings (n, dim) float32."""

    #: Registry name, recorded with every embedding set.
    name: str = ""
    #: Whether embeddings are L2-normalised (unit norm) by construction.
    normalized: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @abstractmethod
    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        """Encode one batch; the whole batch fits in memory."""

    def encode(self, images: np.ndarray, batch_size: int = 256,
               progress: bool = False) -> np.ndarray:
        """Encode all images in batches (optionally with a progress bar)."""
        images = _check_images(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start, batch in tqdm(self.batches(images, batch_size), disable=not progress,
                                 total=-(-len(images) // batch_size), desc=f"encode {self.name}",
                                 unit="batch"):
            out[start : start + len(batch)] = self.encode_batch(batch)
        return out

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


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Decorator: make an encoder factory available to :func:`get_encoder` by ``name``."""

    def deco(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_plugins() -> None:
    """Encoders other packages declare in the ``dpsynth.encoders`` entry point group:
    ``name = "package.module:factory"``, registered on first lookup."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="dpsynth.encoders"):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available_encoders() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_encoder(name: str, **kwargs) -> Encoder:
    """Build the encoder registered under ``name``."""
    if name not in _REGISTRY:
        _load_plugins()
    prefix, sep, spec = name.partition(":")
    if name not in _REGISTRY and sep and prefix in _REGISTRY:
        # Parametrised names: "open_clip:ViT-H-14:laion2b_s32b_b79k" -> factory(spec=...).
        return _REGISTRY[prefix](spec=spec, **kwargs)
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}")
    return _REGISTRY[name](**kwargs)
