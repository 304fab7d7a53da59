"""Pooled encoder features, computed once per split and cached on disk.

With a frozen encoder every epoch would push the same images through the same CNN, so we
compute the (N, D) feature matrix once and reuse it across epochs and runs. The cache key
covers everything that changes the numbers: the encoder's spec (name, weights,
preprocessing), the numeric precision, the annotation file's bytes (which images, in which
order) and the images directory.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from captioning.data.coco import CocoCaptions
from captioning.data.datasets import ImageDataset
from captioning.io import atomic_path
from captioning.models.inference import inference_copy
from captioning.precision import autocast, check_precision
from captioning.progress import Mode, progress as progress_bar


def cache_key(encoder_spec: dict, coco: CocoCaptions, precision: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(encoder_spec, sort_keys=True, default=str).encode())
    h.update(precision.encode())
    h.update(Path(coco.path).read_bytes())
    h.update(str(Path(coco.images_dir).resolve()).encode())
    return h.hexdigest()[:24]


# Images per CNN call by device type: a small batch's activations stay in the CPU's caches.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}


class EncodeBatch:
    """Images (B, 3, H, W) -> float32 features (B, D), the fast way: the encoder's inference copy
    (batch-norm and padding folded into the convolutions), channels_last memory layout (what
    oneDNN's and cuDNN's convolutions want), no autograd bookkeeping, bf16 autocast if asked.

    Called on a list of images it stacks them first, so it can be a DataLoader's collate_fn:
    then the CNN runs inside the worker process.
    """

    def __init__(self, encoder: nn.Module, device: torch.device, precision: str = "fp32"):
        check_precision(precision)
        self.encoder = inference_copy(encoder.to(device).eval()).to(memory_format=torch.channels_last)
        self.device, self.precision = device, precision

    def __call__(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.encoder(images).float()  # (B, D)


def extract_features(encoder: nn.Module, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                     num_workers: int = 2, device: str | torch.device = "cpu", precision: str = "fp32",
                     encode_in_workers: bool = True, progress: Mode = "auto",
                     desc: str = "features") -> torch.Tensor:
    """Run `encoder` over image files; returns float32 features (N, D) in the order of `paths`.

    DataLoader workers decode and resize the images while the CNN runs. On CPU (unless
    `encode_in_workers=False`) the workers run the CNN too, one single-threaded CNN per worker
    (so give it as many workers as cores): an EfficientNet is ~100 small layers, each ending in
    an OpenMP barrier that waits for its slowest thread (a descheduled one, on a busy machine),
    while separate processes never wait for each other. (A forked worker must stay at one
    thread: starting an OpenMP pool after fork can hang.) On CUDA the main process runs the CNN
    on batches from pinned memory. The default batch (DEFAULT_BATCH) is 8 images on CPU,
    measured faster than 32 or 64, and 64 on CUDA.
    `captioning-bench encoder` measures this against a plain loop.
    """
    device = torch.device(device)
    in_workers = encode_in_workers and device.type == "cpu" and num_workers > 0
    batch_size = batch_size or DEFAULT_BATCH.get(device.type, 64)
    encode = EncodeBatch(encoder, device, precision)
    loader = DataLoader(ImageDataset(list(paths), encoder.transform), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=encode if in_workers else None,
                        pin_memory=device.type == "cuda")
    out = torch.empty(len(loader.dataset), encoder.out_dim)
    i = 0
    with progress_bar(total=len(out), desc=desc, unit="img", mode=progress) as bar:
        for batch in loader:
            feats = batch if in_workers else encode(batch)  # (B, D)
            out[i:i + len(feats)] = feats.cpu()
            i += len(feats)
            bar.update(len(feats))
    return out


def cached_features(encoder: nn.Module, coco: CocoCaptions, cache_dir: str | os.PathLike, *,
                    precision: str = "fp32", build: bool = True, **extract_kwargs) -> torch.Tensor:
    """Features for every image of `coco` (rows follow `coco.image_ids`), from the cache if present.

    `build=False` only reads (used by non-zero ranks, which wait for rank 0 to build the cache).
    """
    path = Path(cache_dir) / f"{encoder.spec['name']}-{cache_key(encoder.spec, coco, precision)}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    if not build:
        raise FileNotFoundError(f"feature cache {path} was not built")
    paths = [coco.image_path(i) for i in coco.image_ids]
    feats = extract_features(encoder, paths, precision=precision,
                             desc=f"features {Path(coco.path).name}", **extract_kwargs)
    with atomic_path(path) as tmp:
        torch.save({"features": feats, "image_ids": torch.tensor(coco.image_ids),
                    "encoder": json.dumps(encoder.spec, sort_keys=True, default=str)}, tmp)
    return feats
