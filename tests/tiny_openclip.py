"""A tiny random-weight open_clip model built in code (no hub here), for the tests that
need one: its config registered under a name, its weights saved as a checkpoint file and
as a ``local-dir:`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                       "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                     "layers": 1}}


def save_tiny(root: Path, name: str) -> Path:
    """Register the model config ``name`` and save seeded random weights as
    ``root/tiny.pt`` and ``root/folder`` (open_clip_config.json + weights); returns root."""
    (root / f"{name}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(root / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    torch.save(model.state_dict(), root / "tiny.pt")
    folder = root / "folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return root
