"""The Encoder interface and the registry of encoders by name.

An encoder is public and data-independent: its weights were never trained on the private
set, so encoding is a per-record transform, not a release.

What an encoder is (its dimension, modality, whether it normalises, the options that change
its output, the decoder that inverts it) is public too, and a registered factory declares it
as data: ``factory.facts(**options)`` (``spec=`` first for a parametrised name) returns an
:class:`EncoderFacts` without building a network or loading weights, and
:func:`describe_encoder` asks it. The plan needs only these facts, so planning a run (and
the pipeline's plan pod) loads no weights. A factory without ``facts`` (a third-party
plugin written before them), or whose ``facts`` returns None (a fact it cannot know without
the weights), still works: :func:`describe_encoder` builds the encoder and reads the facts
off the instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dpsynth.registry import Registry


class Encoder(ABC):
    """Maps records to embeddings (n, dim) float32: images (n, H, W) or (n, H, W, C) uint8,
    or, for a text encoder (``modality = "text"``), a sequence of strings. Each encoder
    checks its own inputs (:meth:`check_inputs`)."""

    #: Registry name, recorded with every embedding set.
    name: str = ""
    #: What it encodes: "image" or "text" (a data source's records must match).
    modality: str = "image"
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
        images = self.check_inputs(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start, batch in tqdm(self.batches(images, batch_size), disable=not progress,
                                 total=-(-len(images) // batch_size), desc=f"encode {self.name}",
                                 unit="batch"):
            out[start : start + len(batch)] = self.encode_batch(batch)
            if on_batch is not None:
                on_batch(len(batch))
        return out

    def check_inputs(self, inputs):
        """The inputs as :meth:`encode_batch` takes them, or a ValueError saying what this
        encoder takes (here: images; a text encoder overrides it)."""
        if isinstance(inputs, str) or (isinstance(inputs, list | tuple) and inputs
                                       and isinstance(inputs[0], str)) or (
                isinstance(inputs, np.ndarray) and inputs.dtype.kind in "OUS"):
            raise ValueError(f"encoder {self.name!r} encodes images, not text; for a text "
                             "source use a text encoder (e.g. sentence-transformers:<model "
                             "folder or package>)")
        return _check_images(inputs)

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


@dataclass(frozen=True)
class EncoderFacts:
    """The public facts of an encoder with given options, known without building it.

    ``name``: the name its embedding sets record (``Encoder.name``); ``dim``, ``modality``
    and ``normalized`` as on :class:`Encoder`; ``output_options``: the options that change
    its embeddings, defaults filled in (not the device or a cache folder); ``decoder``: the
    registered decoder that inverts it, or None (filled in by :func:`describe_encoder` from
    the decoders' declarations, :func:`dpsynth.decoders.decoder_name_for`)."""

    name: str
    dim: int
    modality: str = "image"
    normalized: bool = False
    output_options: Mapping[str, Any] = field(default_factory=dict)
    decoder: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in ("image", "text"):
            raise ValueError(f"encoder modality must be 'image' or 'text', got "
                             f"{self.modality!r}")
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "output_options",
                           MappingProxyType(dict(self.output_options)))

    @classmethod
    def of(cls, encoder: Encoder) -> EncoderFacts:
        """The facts of a built encoder (for a factory that declares none)."""
        return cls(name=encoder.name, dim=encoder.dim,
                   modality=getattr(encoder, "modality", "image"),
                   normalized=bool(getattr(encoder, "normalized", False)))


ENCODERS = Registry("encoder", "dpsynth.encoders")
#: Decorator: make an encoder factory available to :func:`get_encoder` by name.
register_encoder = ENCODERS.register
available_encoders = ENCODERS.names


def _factory_name(name: str) -> str:
    prefix, sep, _ = name.partition(":")
    return prefix if sep and name not in ENCODERS and prefix in ENCODERS.names() else name


def describe_encoder(name: str, options: Mapping[str, Any] | None = None, *,
                     build: Callable[[], Encoder] | None = None) -> EncoderFacts:
    """The public facts of the encoder ``name`` with ``options``, from its factory's
    declaration (``factory.facts``): no network is built and no weight is read.

    A factory that declares no facts, or whose ``facts`` returns None, is built instead
    (``build()``, default :func:`get_encoder`; a caller that keeps the built encoder, as
    :func:`dpsynth.steps.make_encoder` does, passes its own so the run still builds it once)
    and described from the instance. Unknown names raise the registry's KeyError; options
    that do not fit raise what building with them would (TypeError, ValueError)."""
    from dpsynth.decoders import decoder_name_for

    options = dict(options or {})
    key = _factory_name(name)
    declare = getattr(ENCODERS.get(key), "facts", None)
    facts = None
    if declare is not None:
        facts = (declare(spec=name.partition(":")[2], **options) if key != name
                 else declare(**options))
    if facts is None:
        facts = EncoderFacts.of(build() if build is not None else get_encoder(name, **options))
    if facts.decoder is None and (decoder := decoder_name_for(facts.name)) is not None:
        facts = replace(facts, decoder=decoder)
    return facts


def encoder_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` with the encoder's output-shaping defaults filled in (a factory declares
    them as its ``default_options``, e.g. EfficientNet-Lite0's input ``image_size``).

    This is what the embedding cache keys and what the manifest, the report and MLflow
    show: a run with no options still says which input size it encoded at, and a default
    changed later never matches a cache entry made with the old one."""
    defaults = getattr(ENCODERS.get(_factory_name(name)), "default_options", {})
    return {**defaults, **(options or {})}


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
