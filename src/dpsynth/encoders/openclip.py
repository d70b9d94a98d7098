"""``open_clip:<model>:<pretrained>``: OpenCLIP image embeddings (L2-normalised).

``pretrained`` is one of
- a hub tag known to open_clip for the model (``laion2b_s32b_b79k``), downloaded into
  ``cache_dir`` (a PVC on the cluster) on a connected machine, read from it offline;
- a checkpoint file (``/models/vit-h-14.safetensors``, ``.pt``, ``.bin``);
- ``local-dir:/path``: a folder with ``open_clip_config.json`` and the weights, as
  open_clip writes it (the ``<model>`` part is then ignored);
- empty: random weights (tests and speed measurements only).

Loading never waits on a network that is not there: offline (``HF_HUB_OFFLINE=1``, as the
images and the tests set it) a missing weight is an immediate :class:`EncoderLoadError`
that says where the weights must be.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dpsynth.encoders.base import Encoder, EncoderFacts, register_encoder

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class EncoderLoadError(RuntimeError):
    """The encoder's weights or configuration cannot be loaded; says what to do."""


def _pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_open_clip(model: str, pretrained: str, *, cache_dir: str | None = None,
                   device: torch.device | None = None) -> torch.nn.Module:
    """The open_clip model for ``model``/``pretrained`` (see the module docstring)."""
    import open_clip

    device = device or torch.device("cpu")
    name, tag = model, pretrained or None
    if tag and tag.startswith("local-dir:"):
        folder = Path(tag.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderLoadError(f"{folder} is not an open_clip model folder (no "
                                   "open_clip_config.json)")
        name, tag = tag, None
    elif tag and (tag.endswith(CHECKPOINT_SUFFIXES) or os.sep in tag):
        if not Path(tag).is_file():
            raise EncoderLoadError(f"open_clip checkpoint {tag} does not exist")
        if name not in open_clip.list_models():
            raise EncoderLoadError(f"unknown open_clip model {name!r} for checkpoint {tag}")
    else:
        if name not in open_clip.list_models():
            raise EncoderLoadError(f"unknown open_clip model {name!r}; see "
                                   "open_clip.list_models()")
        known = open_clip.list_pretrained_tags_by_model(name)
        if tag and tag not in known:
            raise EncoderLoadError(f"open_clip has no pretrained tag {tag!r} for {name}; "
                                   f"known: {', '.join(known) or 'none'}")
    try:
        net = open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir, device=device)
    except Exception as exc:  # noqa: BLE001 - every failure here is "cannot load"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (" This machine is offline (HF_HUB_OFFLINE=1): download the weights on a "
                f"connected machine into cache_dir={cache_dir or '~/.cache'} (or give a "
                "checkpoint file or local-dir: folder)." if offline and tag else "")
        raise EncoderLoadError(f"cannot load open_clip {name} ({tag or 'random weights'}): "
                               f"{type(exc).__name__}: {str(exc)[:300]}.{hint}") from None
    return net.eval()


class OpenClipEncoder(Encoder):
    """Images -> L2-normalised OpenCLIP image embeddings.

    On CUDA: bf16 (or fp16) autocast and channels_last; everywhere: inference mode,
    batched. Preprocessing is the model's own (resize to its input size, its mean/std),
    done as tensor ops so it batches; grayscale images are repeated to 3 channels.
    """

    normalized = True

    def __init__(self, spec: str = "ViT-B-32:", *, cache_dir: str | None = None,
                 device: str | None = None, precision: str = "auto") -> None:
        model, _, pretrained = spec.partition(":")
        if not model:
            raise ValueError(f"open_clip encoder spec must be <model>[:<pretrained>], "
                             f"got {spec!r}")
        self.name = f"open_clip:{spec}"
        self.device = _pick_device(device)
        cache_dir = cache_dir or os.environ.get("DPSYNTH_MODEL_CACHE")
        self.model = load_open_clip(model, pretrained, cache_dir=cache_dir, device=self.device)
        visual = self.model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, tuple | list) else (size, size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self._dim = int(self.model.visual.output_dim)
        cuda = self.device.type == "cuda"
        if precision == "auto":
            precision = ("bf16" if cuda and torch.cuda.is_bf16_supported() else
                         "fp16" if cuda else "fp32")
        self.precision = precision
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device)
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = F.interpolate(x.float().div_(255.0), size=self.image_size, mode="bicubic",
                          align_corners=False, antialias=True).clamp_(0, 1)
        if x.shape[1] == 1:  # grey: resized once, then repeated to RGB
            x = x.expand(-1, 3, -1, -1)
        x = (x - self._mean) / self._std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocess(images)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            z = self.model.encode_image(x)
        return F.normalize(z.float(), dim=-1).cpu().numpy()


@register_encoder("open_clip")
def _make_open_clip(spec: str = "ViT-B-32:", **kwargs) -> OpenClipEncoder:
    return OpenClipEncoder(spec, **kwargs)
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_open_clip.options_of = OpenClipEncoder


def _open_clip_facts(spec: str = "ViT-B-32:", *, cache_dir: str | None = None,
                     device: str | None = None, precision: str = "auto"
                     ) -> EncoderFacts | None:
    """Its facts from the model's configuration, not its weights: ``embed_dim`` of
    open_clip's config for ``<model>`` (``open_clip.get_model_config``), or of the
    ``open_clip_config.json`` of a ``local-dir:`` folder. None (so it is built, and building
    says what is wrong) for a model whose configuration open_clip does not hold here: an
    unknown name, an ``hf-hub:`` model (its configuration is on the hub), a malformed spec."""
    model, _, pretrained = spec.partition(":")
    if not model:
        return None
    if pretrained.startswith("local-dir:"):
        file = Path(pretrained.removeprefix("local-dir:")) / "open_clip_config.json"
        try:
            config = json.loads(file.read_text()).get("model_cfg")
        except (OSError, ValueError, AttributeError):
            return None
    else:
        import open_clip

        config = open_clip.get_model_config(model)
    if not isinstance(config, dict) or not isinstance(config.get("embed_dim"), int):
        return None
    return EncoderFacts(name=f"open_clip:{spec}", dim=config["embed_dim"], modality="image",
                        normalized=True, output_options={"precision": precision})


_make_open_clip.facts = _open_clip_facts
