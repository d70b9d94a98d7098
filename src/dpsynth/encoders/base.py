"""The Encoder interface and the registry of encoders by name.

An encoder is public and data-independent: its weights were never trained on the private
set, so encoding is a per-record transform, not a release.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from dpsynth.registry import Registry


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

    def encode(self, images: np.ndarray, batch_size: int = 256, progress: bool = False,
               on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Encode all images in batches, optionally with a progress bar of its own or an
        ``on_batch(n_images)`` callback (e.g. a caller's progress bar)."""
        images = _check_images(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start, batch in tqdm(self.batches(images, batch_size), disable=not progress,
                                 total=-(-len(images) // batch_size), desc=f"encode {self.name}",
                                 unit="batch"):
            out[start : start + len(batch)] = self.encode_batch(batch)
            if on_batch is not None:
                on_batch(len(batch))
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


ENCODERS = Registry("encoder", "dpsynth.encoders")
#: Decorator: make an encoder factory available to :func:`get_encoder` by name.
register_encoder = ENCODERS.register
available_encoders = ENCODERS.names


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
