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
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
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


# Images per CNN call by device type: a small batch's activations stay in the CPU's caches.
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}


class _ConvLeafTracer(fx.Tracer):
    """Keeps every Conv2d subclass (e.g. EfficientNet's same-padding conv) a single graph node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of `module` with each eval-mode BatchNorm folded into the conv before it.

    BN(conv(x)) = gamma * (W x + b - mu) / sqrt(var + eps) + beta is itself a convolution, with
    W' = W * s and b' = (b - mu) * s + beta, s = gamma / sqrt(var + eps): one pass over the
    activations instead of two. A model that torch.fx cannot trace is returned unchanged.
    """
    try:
        graph = _ConvLeafTracer().trace(module)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: run the model as it is
        return module
    folded = fx.GraphModule(module, graph)  # shares the original's submodules until replaced below
    modules = dict(folded.named_modules())
    for node in list(graph.nodes):
        conv = node.args[0] if node.op == "call_module" and node.args else None
        if isinstance(modules[node.target] if node.op == "call_module" else None, nn.BatchNorm2d) and \
                isinstance(conv, fx.Node) and conv.op == "call_module" and len(conv.users) == 1 and \
                isinstance(modules[conv.target], nn.Conv2d):
            parent, _, name = conv.target.rpartition(".")
            setattr(folded.get_submodule(parent), name, fuse_conv_bn_eval(modules[conv.target], modules[node.target]))
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
    folded.delete_all_unused_submodules()
    folded.recompile()
    return folded


class EncodeBatch:
    """Images (B, 3, H, W) -> float32 features (B, D), the fast way: batch-norm folded into the
    convolutions, channels_last memory layout (what oneDNN's and cuDNN's convolutions want), no
    autograd bookkeeping, bf16 autocast if asked.

    Called on a list of images it stacks them first, so it can be a DataLoader's collate_fn:
    then the CNN runs inside the worker process.
    """

    def __init__(self, encoder: nn.Module, device: torch.device, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.encoder = fold_batchnorm(encoder.to(device).eval()).to(memory_format=torch.channels_last)
        self.device, self.bf16 = device, precision == "bf16"

    def __call__(self, images: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.encoder(images).float()  # (B, D)


def extract_features(encoder: nn.Module, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                     num_workers: int = 2, device: str | torch.device = "cpu", precision: str = "fp32",
                     encode_in_workers: bool = True, progress: bool = True,
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
    with tqdm(total=len(out), desc=desc, unit="img", disable=not progress) as bar:
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
