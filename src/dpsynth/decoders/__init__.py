"""Decoders: public maps from embeddings back to images, registered by name."""

from dpsynth.decoders import pixels as _pixels  # noqa: F401  (registers)
from dpsynth.decoders import unclip as _unclip  # noqa: F401  (registers)
from dpsynth.decoders.base import (
    Decoder,
    DecoderFacts,
    available_decoders,
    decoder_for,
    decoder_name_for,
    describe_decoder,
    get_decoder,
    register_decoder,
)
from dpsynth.decoders.pixels import PixelDecoder
from dpsynth.decoders.unclip import DecoderLoadError, UnclipDecoder

__all__ = ["Decoder", "DecoderFacts", "DecoderLoadError", "PixelDecoder", "UnclipDecoder",
           "available_decoders", "decoder_for", "decoder_name_for", "describe_decoder",
           "get_decoder", "register_decoder"]
