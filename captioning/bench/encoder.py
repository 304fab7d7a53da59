"""encoder: feature extraction images/s, a plain loop vs captioning.data.features.extract_features.

The plain loop is what one writes first: decode each image with PIL in the main process, stack
a batch of 32, run the fp32 CNN under no_grad. The next row adds DataLoader workers that decode,
the inference copy of the CNN (batch-norm and padding folded into the convolutions),
channels_last and inference_mode, the CNN still in the main process (batch 64); then come our
defaults (on CPU the workers also run the CNN, one thread each, batch 4) in fp32 and bf16. All
rows process the same images in one run, taking turns (best of --repeats); "min cosine" is the
smallest cosine similarity between an image's features and the plain loop's.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from captioning.data.datasets import load_image
from captioning.data.shapes import make_shapes_dataset
from captioning.data.features import DEFAULT_BATCH, extract_features
from captioning.data.folder import find_images
from captioning.io import InputError
from captioning.models import build_encoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images (default: --limit synthetic 128-px shapes images, made for the run)")
    parser.add_argument("--limit", type=int, default=300, help="use at most this many images")
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of our pipeline")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--device", default="cpu")


def plain_loop(encoder: torch.nn.Module, paths: list[Path], device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """The baseline: inline PIL decoding, NCHW fp32, no_grad."""
    encoder = encoder.to(device, memory_format=torch.contiguous_format)
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            images = torch.stack([load_image(p, encoder.transform) for p in paths[i:i + batch_size]])
            out.append(encoder(images.to(device)).cpu())  # (B, D)
    return torch.cat(out)


def run(args: argparse.Namespace) -> list[dict]:
    if args.images is None:
        with tempfile.TemporaryDirectory() as tmp:
            make_shapes_dataset(tmp, n_train=0, n_val=args.limit, n_test=0, demo_images=0)
            return run(argparse.Namespace(**{**vars(args), "images": Path(tmp) / "images" / "val"}))
    if not args.images.is_dir():
        raise InputError(f"image folder {args.images} not found")
    paths = find_images(args.images)[0][:args.limit]  # as captioning-caption finds them
    if not paths:
        raise InputError(f"no images in {args.images}")
    device = torch.device(args.device)
    encoder = build_encoder(args.encoder).eval()
    ours = dict(num_workers=args.workers, device=device, progress=False)
    methods = {  # (method, precision, batch) -> features (N, D)
        ("plain loop: inline PIL decoding, NCHW, no_grad", "fp32", 32): lambda: plain_loop(encoder, paths, device),
        ("workers decode; folded CNN, channels_last, inference_mode, in the main process", "fp32", 64):
            lambda: extract_features(encoder, paths, batch_size=64, encode_in_workers=False, precision="fp32", **ours),
    }
    for precision in ("fp32", "bf16"):
        methods[("ours: extract_features defaults", precision, DEFAULT_BATCH.get(device.type, 64))] = \
            lambda precision=precision: extract_features(encoder, paths, precision=precision, **ours)

    seconds, outputs = {key: float("inf") for key in methods}, {}
    for _ in range(args.repeats):  # take turns, so a burst of load elsewhere hits every method alike
        for key, fn in methods.items():
            t0 = time.perf_counter()
            outputs[key] = fn()
            seconds[key] = min(seconds[key], time.perf_counter() - t0)

    plain_key = next(iter(methods))
    rows = []
    for (method, precision, batch), s in seconds.items():
        cosine = F.cosine_similarity(outputs[(method, precision, batch)], outputs[plain_key]).min().item()
        rows.append({"method": method, "precision": precision, "batch": batch, "images": len(paths),
                     "seconds": s, "images/s": len(paths) / s, "speedup": f"{seconds[plain_key] / s:.1f}x",
                     "min cosine vs plain": f"{cosine:.5f}"})
    return rows
