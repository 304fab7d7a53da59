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
from tqdm.auto import tqdm

from captioning.data.coco import CocoCaptions
from captioning.data.datasets import ImageDataset
from captioning.io import atomic_path


def cache_key(encoder_spec: dict, coco: CocoCaptions, precision: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(encoder_spec, sort_keys=True, default=str).encode())
    h.update(precision.encode())
    h.update(Path(coco.path).read_bytes())
    h.update(str(Path(coco.images_dir).resolve()).encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def extract_features(encoder: nn.Module, paths: Sequence[str | os.PathLike], *, batch_size: int = 64,
                     num_workers: int = 2, device: str | torch.device = "cpu", precision: str = "fp32",
                     progress: bool = True, desc: str = "features") -> torch.Tensor:
    """Run `encoder` over image files; returns float32 features (N, D) in the order of `paths`.

    Decoding and resizing run in DataLoader workers while the main process runs the CNN;
    channels_last memory layout and bf16 autocast let oneDNN / cuDNN use their fastest kernels.
    """
    device = torch.device(device)
    encoder = encoder.to(device).eval().to(memory_format=torch.channels_last)
    loader = DataLoader(ImageDataset(list(paths), encoder.transform), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = torch.empty(len(loader.dataset), encoder.out_dim)
    i = 0
    with tqdm(total=len(out), desc=desc, unit="img", disable=not progress) as bar:
        for images in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
                feats = encoder(images)  # (B, D)
            out[i:i + len(feats)] = feats.float().cpu()
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
