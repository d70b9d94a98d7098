"""The Decoder interface: synthetic embeddings back to images (post-processing only).

A decoder is public (never trained on the private set), so decoding synthetic embeddings
is post-processing of a DP release and spends no budget. Decoders are registered by name;
``decoder_for`` names the decoder that inverts an encoder, when there is one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np


class Decoder(ABC):
    name: str = ""

    @abstractmethod
    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, H, W) or (n, H, W, 3) uint8 images."""


_REGISTRY: dict[str, Callable[..., Decoder]] = {}
#: encoder name -> decoder name that inverts it (options are passed through).
_FOR_ENCODER: dict[str, str] = {}


def register_decoder(name: str, *, inverts: str | None = None
                     ) -> Callable[[Callable[..., Decoder]], Callable[..., Decoder]]:
    """Decorator: register a decoder factory; ``inverts`` names the encoder it inverts."""

    def deco(factory: Callable[..., Decoder]) -> Callable[..., Decoder]:
        _REGISTRY[name] = factory
        if inverts:
            _FOR_ENCODER[inverts] = name
        return factory

    return deco


def _load_plugins() -> None:
    """Decoders other packages declare in the ``dpsynth.decoders`` entry point group:
    ``name = "package.module:factory"``, registered on first lookup."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="dpsynth.decoders"):
        if ep.name not in _REGISTRY:
            _REGISTRY[ep.name] = ep.load()


def available_decoders() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_decoder(name: str, **kwargs: Any) -> Decoder:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown decoder {name!r}; available: {', '.join(available_decoders())}")
    return _REGISTRY[name](**kwargs)


def decoder_for(encoder_name: str, **encoder_options: Any) -> Decoder | None:
    """The decoder that inverts ``encoder_name`` (built with its options), or None."""
    name = _FOR_ENCODER.get(encoder_name)
    return None if name is None else get_decoder(name, **encoder_options)
