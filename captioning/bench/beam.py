"""beam: batched beam search (batch x beam rows per step) vs a per-image beam search loop.

Both run the same realistic decoder (LSTM, hidden 512, embedding 256, a 2,000-word vocabulary;
random weights: the speed does not depend on what was learnt) over the same image features,
and must return the same captions. The batched search is timed at each of --batch-sizes images
per call (the captioner's default is 32); the per-image loop makes one call per image.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from captioning.decoding import beam_search
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


def _captions(seqs: torch.Tensor) -> list[tuple[int, ...]]:
    """Token ids up to the first <end>: what the caption is made of (padding and length may differ)."""
    rows = [row.tolist() for row in seqs]
    return [tuple(r[: r.index(EOS)] if EOS in r else r) for r in rows]


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
    config = DecoderConfig(vocab_size=args.vocab, feature_dim=args.feature_dim, embed_dim=args.embed,
                           hidden_dim=args.hidden)
    decoder = CaptionDecoder(config).to(args.device).eval()
    features = torch.randn(args.images, args.feature_dim, device=args.device)  # (N, D)
    search = dict(bos_id=BOS, eos_id=EOS, max_len=args.max_len)
    beam_search(decoder, features[:2], beam_size=2, **search)  # warm-up: first-call allocations
    rows = []
    for k in args.beam_sizes:
        methods = {"per-image loop": lambda: [c for f in features
                                              for c in _captions(beam_search(decoder, f[None], beam_size=k, **search).ids)]}
        for b in args.batch_sizes:
            methods[f"batched, {b} images/call"] = lambda b=b: [
                c for chunk in features.split(b) for c in _captions(beam_search(decoder, chunk, beam_size=k, **search).ids)]
        results = {name: _timed(fn, args.repeats) for name, fn in methods.items()}
        loop_s, loop_out = results["per-image loop"]
        for name, (seconds, out) in results.items():
            rows.append({"beam": k, "method": name, "images": args.images, "seconds": seconds,
                         "images/s": args.images / seconds, "speedup": f"{loop_s / seconds:.1f}x",
                         "same captions as loop": f"{sum(a == b for a, b in zip(out, loop_out))}/{args.images}"})
    return rows
