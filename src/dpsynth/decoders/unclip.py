"""``unclip``: Stable unCLIP (diffusers' StableUnCLIPImg2ImgPipeline) fed with synthetic
CLIP image embeddings, so no image conditioning is needed.

Stable unCLIP 2.1 takes OpenCLIP ViT-H-14 image embeddings (1024-d): pair this decoder
with ``open_clip:ViT-H-14:<pretrained>``. dpsynth's embeddings are L2-normalised; the
pipeline was trained on the unnormalised projection, so ``embed_scale`` multiplies them
back to the typical norm of the encoder's raw embeddings (a public constant of the
encoder, measured on public images, never on the private set).

Weights load with ``from_pretrained`` from a hub id or a local folder (the same code
path); offline, a missing model is an immediate :class:`DecoderLoadError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dpsynth.decoders.base import Decoder, DecoderFacts, register_decoder

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-unclip"


class DecoderLoadError(RuntimeError):
    """The decoder's weights cannot be loaded; says what to do."""


def load_unclip(model: str, *, cache_dir: str | None = None, device: torch.device,
                dtype: torch.dtype):
    from diffusers import StableUnCLIPImg2ImgPipeline

    # "org/name" is a hub id; an absolute or ./-relative path is a folder.
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise DecoderLoadError(f"unCLIP model folder {model} does not exist")
    try:
        pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
            model, cache_dir=cache_dir, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - every failure here is "cannot load"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (" This machine is offline (HF_HUB_OFFLINE=1): download the model on a "
                f"connected machine into cache_dir={cache_dir or '~/.cache/huggingface'} or "
                "give a local folder saved with save_pretrained." if offline else "")
        raise DecoderLoadError(f"cannot load the unCLIP pipeline {model!r}: "
                               f"{type(exc).__name__}: {str(exc)[:300]}.{hint}") from None
    return pipe.to(device)


class UnclipDecoder(Decoder):
    """Synthetic image embeddings -> images with Stable unCLIP.

    Parameters: ``model`` (hub id or local folder) or a ready ``pipeline``; ``noise_level``
    (unCLIP's augmentation of the embedding, 0 keeps it), ``guidance_scale``, ``steps``,
    ``batch_size``, ``seed`` (public randomness of the sampler), ``prompt``, output
    ``height``/``width`` (default: the model's), ``embed_scale`` (see module doc); fp16 on
    CUDA, fp32 on CPU.
    """

    name = "unclip"

    def __init__(self, model: str = DEFAULT_MODEL, *, pipeline=None, device: str | None = None,
                 noise_level: int = 0, guidance_scale: float = 10.0, steps: int = 20,
                 batch_size: int = 8, seed: int = 0, prompt: str = "",
                 height: int | None = None, width: int | None = None,
                 embed_scale: float = 1.0, cache_dir: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.pipeline = pipeline.to(self.device) if pipeline is not None else load_unclip(
            model, cache_dir=cache_dir or os.environ.get("DPSYNTH_MODEL_CACHE"),
            device=self.device, dtype=dtype)
        self.pipeline.set_progress_bar_config(disable=True)
        self.noise_level, self.guidance_scale, self.steps = noise_level, guidance_scale, steps
        self.batch_size, self.seed, self.prompt = batch_size, seed, prompt
        self.height, self.width, self.embed_scale = height, width, embed_scale

    @torch.inference_mode()
    def decode(self, embeddings: np.ndarray) -> np.ndarray:
        pipe = self.pipeline
        dtype = next(pipe.unet.parameters()).dtype
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        out = []
        for start in range(0, len(embeddings), self.batch_size):
            emb = torch.as_tensor(np.asarray(embeddings[start:start + self.batch_size]),
                                  dtype=dtype, device=self.device) * self.embed_scale
            images = pipe(image_embeds=emb, prompt=[self.prompt] * len(emb),
                          noise_level=self.noise_level, guidance_scale=self.guidance_scale,
                          num_inference_steps=self.steps, generator=generator,
                          height=self.height, width=self.width, output_type="np").images
            out.append(np.clip(np.round(images * 255), 0, 255).astype(np.uint8))
        return np.concatenate(out)


@register_decoder("unclip")
def _make_unclip(**kwargs) -> UnclipDecoder:
    return UnclipDecoder(**kwargs)
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_unclip.options_of = UnclipDecoder


def _unclip_facts(model: str = DEFAULT_MODEL, *, height: int | None = None,
                  width: int | None = None, **_: object) -> DecoderFacts:
    """Its facts without the pipeline: it inverts no registered encoder by name (pair it
    with ``open_clip:ViT-H-14:<pretrained>``); its image size when ``height`` and
    ``width`` are given (else the model's, known once it is loaded)."""
    shape = (int(height), int(width), 3) if height and width else None
    return DecoderFacts(name="unclip", inverts=None, image_shape=shape)


_make_unclip.facts = _unclip_facts
