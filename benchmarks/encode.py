"""Encoder throughput: dpsynth's encode path against the bare model forward (issue 5).

    .venv/bin/python benchmarks/encode.py [--images 4096] [--repeats 3]

For each encoder, on the same uint8 image batches:
  * ``encode``: images/s of ``Encoder.encode_batch`` over the batches, which includes
    preprocessing (to float, to 3 channels, resize, normalise), the forward pass, L2
    normalisation and the copy back to numpy;
  * ``bare_forward``: images/s of the model forward alone on batches preprocessed
    beforehand, under ``torch.inference_mode`` (the ceiling);
  * ``ratio`` = encode / bare_forward (target: >= 0.9).
Each figure is the best of ``--repeats`` passes over all images, after one warm-up batch.
CPU encoders use Fashion-MNIST images; the GPU row (ViT-H-14, random weights) runs only
where CUDA is available. Writes benchmarks/results/encode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dpsynth.data import load_fashion_mnist
from dpsynth.encoders import get_encoder

ROOT = Path(__file__).resolve().parents[1]


def _best_rate(fn, batches: list, repeats: int) -> float:
    fn(batches[0])  # warm-up
    best = 0.0
    n = sum(len(b) for b in batches)
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - start))
    return best


def measure(name: str, encoder, forward, images: np.ndarray, batch: int,
            repeats: int) -> dict[str, object]:
    batches = [images[i:i + batch] for i in range(0, len(images), batch)]
    encode_rate = _best_rate(encoder.encode_batch, batches, repeats)
    prepared = [encoder.preprocess(b) for b in batches]

    @torch.inference_mode()
    def bare(x):
        return forward(x)

    bare_rate = _best_rate(bare, prepared, repeats)
    row = {"encoder": name, "device": str(getattr(encoder, "device", "cpu")),
           "images": len(images), "batch_size": batch,
           "encode_images_per_s": round(encode_rate, 1),
           "bare_forward_images_per_s": round(bare_rate, 1),
           "ratio": round(encode_rate / bare_rate, 3)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path,
                        default=ROOT / "benchmarks" / "results" / "encode.json")
    args = parser.parse_args()
    images = load_fashion_mnist("train").images[: args.images]
    rows = []
    eff = get_encoder("efficientnet-lite0")
    rows.append(measure(
        "efficientnet-lite0 (64 px)", eff,
        lambda x: eff.model.forward_head(eff.model.forward_features(x), pre_logits=True),
        images, 256, args.repeats))
    clip = get_encoder("open_clip:ViT-B-32", device="cpu", precision="fp32")
    rows.append(measure("open_clip ViT-B-32, random weights (224 px)", clip,
                        clip.model.encode_image, images[: max(256, args.images // 16)], 64,
                        args.repeats))
    gpu_note = "no CUDA device on this machine: the ViT-H-14 GPU row was not measured"
    if torch.cuda.is_available():
        big = get_encoder("open_clip:ViT-H-14", device="cuda")
        rows.append(measure("open_clip ViT-H-14, random weights (224 px, bf16)", big,
                            big.model.encode_image, images, 256, args.repeats))
        gpu_note = torch.cuda.get_device_name()
    result = {
        "command": "benchmarks/encode.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "output"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "gpu": gpu_note},
        "date": time.strftime("%Y-%m-%d"), "target_ratio": 0.9, "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
