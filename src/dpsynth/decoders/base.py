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

from dpsynth.registry import Registry


class Decoder(ABC):
    name: str = ""

    @abstractmethod
    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, H, W) or (n, H, W, 3) uint8 images."""


DECODERS = Registry("decoder", "dpsynth.decoders")
available_decoders = DECODERS.names
#: encoder name -> decoder name that inverts it (options are passed through).
_FOR_ENCODER: dict[str, str] = {}


def register_decoder(name: str, *, inverts: str | None = None
                     ) -> Callable[[Callable[..., Decoder]], Callable[..., Decoder]]:
    """Decorator: register a decoder factory; ``inverts`` names the encoder it inverts."""
    if inverts:
        _FOR_ENCODER[inverts] = name
    return DECODERS.register(name)


def get_decoder(name: str, **kwargs: Any) -> Decoder:
    return DECODERS.get(name)(**kwargs)


def decoder_name_for(encoder_name: str) -> str | None:
    """The registered decoder that inverts ``encoder_name``, or None. A public fact of the
    registry: nothing is built (ask this, not :func:`decoder_for`, whether one exists)."""
    DECODERS.names()  # plugins register their `inverts` when they load
    return _FOR_ENCODER.get(encoder_name)


def decoder_for(encoder_name: str, **encoder_options: Any) -> Decoder | None:
    """The decoder that inverts ``encoder_name`` (built with its options), or None."""
    name = decoder_name_for(encoder_name)
    return None if name is None else get_decoder(name, **encoder_options)
