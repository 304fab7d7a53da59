"""beam: batched beam search (batch x beam rows per step) vs a per-image beam search loop.

Both run the same decoder over the same image features and must return the same captions. By default a
realistic LSTM (hidden 512, embedding 256, a 2,000-word vocabulary) with random weights on random features:
its captions never end before --max-len, the slowest case. With --checkpoint, a trained captioner's decoder on
its own CNN's features of the images in --folder, whose captions end when the model says so: an image whose
beams have all ended leaves the batch. The batched search is timed at each of --batch-sizes images per call
(captioning-caption's default is 64); the per-image loop makes one call per image.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from captioning.config import DecodeOptions
from captioning.decoding import SpecialIds, beam_search
from captioning.precision import autocast, resolve_precision
from captioning.models import CaptionDecoder, DecoderConfig

BOS, EOS = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=300, help="number of images (feature vectors)")
    parser.add_argument("--beam-sizes", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 300],
                        help="images per batched beam search call (the captioner uses 32)")
    parser.add_argument("--vocab", type=int, default=2000, help="vocabulary size")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--feature-dim", type=int, default=1280, help="encoder feature size (EfficientNet-Lite0)")
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method; the fastest counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                        help="of the decoder's matrix products, both methods (captioning-caption's default: auto)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained captioner (see above)")
    parser.add_argument("--folder", type=Path, default=None, help="with --checkpoint: the images to caption")


def _captions(seqs: torch.Tensor, eos: int = EOS) -> list[tuple[int, ...]]:
    """Token ids up to the first <end>: what the caption is made of (padding and length may differ)."""
    rows = [row.tolist() for row in seqs]
    return [tuple(r[: r.index(eos)] if eos in r else r) for r in rows]


def _trained(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """A checkpoint's decoder, its CNN's fp32 features of the first --images images of --folder, its token ids."""
    from captioning.data.features import extract_features
    from captioning.data.folder import find_images
    from captioning.io import InputError
    from captioning.models import load_captioner

    if args.folder is None or not args.folder.is_dir():
        raise InputError(f"--checkpoint needs --folder, a folder of images (got {args.folder})")
    paths = find_images(args.folder)[0][:args.images]
    if not paths:
        raise InputError(f"no images in {args.folder}")
    captioner = load_captioner(args.checkpoint, device=args.device)
    if getattr(captioner.encoder, "grid", False):
        raise InputError(f"{args.checkpoint} is an attention captioner: this benchmark takes pooled-feature decoders")
    features = extract_features(captioner.encoder, paths, precision="fp32", device=args.device, progress=False)
    v = captioner.vocab
    return captioner.decoder, features.to(args.device), SpecialIds(v.bos_id, v.eos_id, v.pad_id)


def _timed(fn: Callable[[], list], repeats: int) -> tuple[float, list]:
    """(best wall-clock seconds of `repeats` calls, the captions of the last call)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@torch.no_grad()
def run(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    if args.checkpoint is None:
        config = DecoderConfig(vocab_size=args.vocab, feature_dim=args.feature_dim, embed_dim=args.embed,
                               hidden_dim=args.hidden)
        decoder = CaptionDecoder(config).to(args.device).eval()
        features = torch.randn(args.images, args.feature_dim, device=args.device)  # (N, D)
        ids = SpecialIds(BOS, EOS)
    else:
        decoder, features, ids = _trained(args)
    beam_search(decoder, features[:2], DecodeOptions(beam_size=2, max_len=args.max_len), ids)  # warm-up: allocations
    precision, _ = resolve_precision(args.precision, torch.device(args.device))
    rows = []
    for k in args.beam_sizes:
        eos, opts = ids.eos_id, DecodeOptions(beam_size=k, max_len=args.max_len)
        methods = {"per-image loop": lambda: [c for f in features for c in _captions(
            beam_search(decoder, f[None], opts, ids).ids, eos)]}
        for b in args.batch_sizes:
            methods[f"batched, {b} images/call"] = lambda b=b: [
                c for chunk in features.split(b) for c in _captions(beam_search(decoder, chunk, opts, ids).ids, eos)]
        with autocast(torch.device(args.device), args.precision):
            results = {name: _timed(fn, args.repeats) for name, fn in methods.items()}
        loop_s, loop_out = results["per-image loop"]
        for name, (seconds, out) in results.items():
            n = len(features)
            rows.append({"beam": k, "precision": precision, "method": name, "images": n, "seconds": seconds,
                         "images/s": n / seconds, "speedup": f"{loop_s / seconds:.1f}x",
                         "words per caption": sum(map(len, out)) / n,
                         "same captions as loop": f"{sum(a == b for a, b in zip(out, loop_out))}/{n}"})
    return rows
