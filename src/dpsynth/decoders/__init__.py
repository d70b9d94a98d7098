"""Decoders: public maps from embeddings back to images, registered by name."""

from dpsynth.decoders import pixels as _pixels  # noqa: F401  (registers)
from dpsynth.decoders.base import (
    Decoder,
    available_decoders,
    decoder_for,
    get_decoder,
    register_decoder,
)
from dpsynth.decoders.pixels import PixelDecoder

__all__ = ["Decoder", "PixelDecoder", "available_decoders", "decoder_for", "get_decoder",
           "register_decoder"]
