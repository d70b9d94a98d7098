"""The Decoder interface: synthetic embeddings back to images (post-processing only).

A decoder is public (never trained on the private set), so decoding synthetic embeddings
is post-processing of a DP release and spends no budget. Decoders are registered by name;
``decoder_for`` builds the decoder that inverts an encoder, when there is one.

What a decoder is, is declared as data and asked without building it
(:func:`describe_decoder`, :func:`decoder_name_for`): the encoder it inverts (given to
:func:`register_decoder`) and, from a factory's ``facts(**options)``, the shape of the
images it makes when its options say. Asking whether a run decodes builds nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpsynth.registry import Registry


class Decoder(ABC):
    name: str = ""

    @abstractmethod
    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, dim) embeddings -> (n, H, W) or (n, H, W, 3) uint8 images."""


@dataclass(frozen=True)
class DecoderFacts:
    """The public facts of a decoder with given options, known without building it:
    ``inverts``, the encoder it inverts (the encoder's options are its options), or None;
    ``image_shape``, the (H, W) or (H, W, C) of the images it makes, or None when only the
    loaded model knows it."""

    name: str
    inverts: str | None = None
    image_shape: tuple[int, ...] | None = None


DECODERS = Registry("decoder", "dpsynth.decoders")
available_decoders = DECODERS.names
#: encoder name -> decoder name that inverts it (options are passed through).
_FOR_ENCODER: dict[str, str] = {}
#: decoder name -> the encoder it inverts.
_INVERTS: dict[str, str] = {}


def register_decoder(name: str, *, inverts: str | None = None
                     ) -> Callable[[Callable[..., Decoder]], Callable[..., Decoder]]:
    """Decorator: register a decoder factory; ``inverts`` names the encoder it inverts. A
    factory may declare ``facts(**options) -> DecoderFacts`` (see :func:`describe_decoder`)."""
    if inverts:
        _FOR_ENCODER[inverts] = name
        _INVERTS[name] = inverts
    return DECODERS.register(name)


def describe_decoder(name: str, **options: Any) -> DecoderFacts:
    """The public facts of the decoder ``name`` with ``options``; builds nothing and loads
    no weights. A factory without ``facts`` is described by its registration alone (the
    encoder it inverts; no image shape). Unknown names raise the registry's KeyError."""
    declare = getattr(DECODERS.get(name), "facts", None)
    if declare is not None:
        return declare(**options)
    return DecoderFacts(name=name, inverts=_INVERTS.get(name))


def get_decoder(name: str, **kwargs: Any) -> Decoder:
    return DECODERS.get(name)(**kwargs)


def decoder_name_for(encoder_name: str) -> str | None:
    """The registered decoder that inverts ``encoder_name``, or None. A public fact of the
    registry: nothing is built (ask this, not :func:`decoder_for`, whether one exists)."""
    DECODERS.names()  # plugins register their `inverts` when they load
    return _FOR_ENCODER.get(encoder_name)


def decoder_for(encoder_name: str, **encoder_options: Any) -> Decoder | None:
    """The decoder that inverts ``encoder_name``, built with its options (its weights
    loaded), or None: for decoding. Whether there is one is :func:`decoder_name_for`."""
    name = decoder_name_for(encoder_name)
    return None if name is None else get_decoder(name, **encoder_options)
