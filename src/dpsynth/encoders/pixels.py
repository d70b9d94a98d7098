"""``pixels``: the image itself, flattened and scaled so every embedding has norm <= 1."""

from __future__ import annotations

import numpy as np

from dpsynth.encoders.base import Encoder, EncoderFacts, register_encoder


class PixelEncoder(Encoder):
    """x = image / 255 / sqrt(H*W*C): data-independent, exactly invertible."""

    name = "pixels"
    normalized = False

    def __init__(self, image_shape: tuple[int, ...] = (28, 28)) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)
        self._scale = 255.0 * float(np.sqrt(np.prod(self.image_shape)))

    @property
    def dim(self) -> int:
        return int(np.prod(self.image_shape))

    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"pixels encoder expects images of shape {self.image_shape}, "
                             f"got {tuple(images.shape[1:])}")
        return (images.reshape(len(images), -1).astype(np.float32) / self._scale)

    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        """The inverse: embeddings back to uint8 images (values clipped to [0, 255])."""
        pixels = np.clip(np.asarray(embeddings) * self._scale, 0, 255)
        return pixels.round().astype(np.uint8).reshape((len(pixels), *self.image_shape))


@register_encoder("pixels")
def _make_pixels(**kwargs) -> PixelEncoder:
    return PixelEncoder(**kwargs)
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_pixels.options_of = PixelEncoder


def _pixels_facts(image_shape: tuple[int, ...] = (28, 28)) -> EncoderFacts:
    """Its facts without building it (dpsynth.encoders.base.describe_encoder)."""
    shape = tuple(int(s) for s in image_shape)
    return EncoderFacts(name="pixels", dim=int(np.prod(shape)), modality="image",
                        normalized=False, output_options={"image_shape": shape})


_make_pixels.facts = _pixels_facts
