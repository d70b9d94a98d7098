"""``pixels`` decoder: the exact inverse of the ``pixels`` encoder."""

from __future__ import annotations

import numpy as np

from dpsynth.decoders.base import Decoder, DecoderFacts, register_decoder
from dpsynth.encoders.pixels import PixelEncoder


class PixelDecoder(Decoder):
    name = "pixels"

    def __init__(self, image_shape: tuple[int, ...] = (28, 28)) -> None:
        self._encoder = PixelEncoder(image_shape)

    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        return self._encoder.decode(embeddings)


@register_decoder("pixels", inverts="pixels")
def _make_pixels(**kwargs) -> PixelDecoder:
    return PixelDecoder(**kwargs)
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_pixels.options_of = PixelDecoder


def _pixels_facts(image_shape: tuple[int, ...] = (28, 28)) -> DecoderFacts:
    """Its facts without building it (dpsynth.decoders.base.describe_decoder)."""
    return DecoderFacts(name="pixels", inverts="pixels",
                        image_shape=tuple(int(s) for s in image_shape))


_make_pixels.facts = _pixels_facts
