"""Decoders: which encoders have one that inverts them, and the pixels decoder's inverse."""

from __future__ import annotations

import numpy as np

from dpsynth.decoders import decoder_for
from dpsynth.encoders import get_encoder


def test_only_invertible_encoders_have_a_decoder():
    assert decoder_for("pixels", image_shape=(8, 8)) is not None
    assert decoder_for("efficientnet-lite0") is None


def test_the_pixels_decoder_inverts_the_pixels_encoder():
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    encoder = get_encoder("pixels", image_shape=(8, 8))
    decoder = decoder_for("pixels", image_shape=(8, 8))
    np.testing.assert_array_equal(decoder.decode(encoder.encode(images)), images)
