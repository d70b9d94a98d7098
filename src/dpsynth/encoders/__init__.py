"""Encoders: public, frozen maps from images or texts to embeddings, registered by name."""

from dpsynth.encoders import efficientnet as _efficientnet  # noqa: F401  (registers)
from dpsynth.encoders import openclip as _openclip  # noqa: F401  (registers)
from dpsynth.encoders import pixels as _pixels  # noqa: F401  (registers)
from dpsynth.encoders import sentence_transformers as _sentence_transformers  # noqa: F401
from dpsynth.encoders.base import (
    Encoder,
    EncoderFacts,
    available_encoders,
    describe_encoder,
    encoder_options,
    get_encoder,
    register_encoder,
)
from dpsynth.encoders.efficientnet import EfficientNetLite0Encoder
from dpsynth.encoders.openclip import EncoderLoadError, OpenClipEncoder
from dpsynth.encoders.pixels import PixelEncoder
from dpsynth.encoders.sentence_transformers import SentenceTransformerEncoder

__all__ = ["EfficientNetLite0Encoder", "Encoder", "EncoderFacts", "EncoderLoadError",
           "OpenClipEncoder", "PixelEncoder", "SentenceTransformerEncoder", "available_encoders",
           "describe_encoder", "encoder_options", "get_encoder", "register_encoder"]
