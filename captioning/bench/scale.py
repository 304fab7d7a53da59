"""scale: COCO's size on one machine: annotations, vocabulary, dataset, feature cache and a decoder epoch.

A synthetic split the size of COCO 2014 train + val (123,287 images, 616,767 captions: one per image, the
rest given to images at random) is made first (not timed): each caption's length is drawn from the Flickr8k
captions' lengths and its words from their word frequencies, so the vocabulary grows as a real one does; the
images' pooled features are random 1280-d vectors. Then, timed, what a training run does with it:
read and index the annotations file (`load_coco_captions`), tokenize every caption and build the
vocabulary (min_count 5), build the training dataset (every caption encoded), save and load the feature
cache in fp32 and in fp16, and train the decoder (hidden 512, batch 128) for one epoch, or for --steps
steps and the epoch projected from them. Peak resident memory is the process's maximum.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from captioning.bench.common import adam
from captioning.bench.eval import DEFAULT_CAPTIONS
from captioning.config import TrainerOptions
from captioning.cpus import keep_freed_memory
from captioning.data.coco import load_coco_captions
from captioning.data.convert import read_flickr8k_numbered
from captioning.data.splits import SplitData
from captioning.engine import Stepper
from captioning.io import InputError
from captioning.models import CaptionDecoder, DecoderConfig
from captioning.precision import resolve_precision
from captioning.run_state import TrainState
from captioning.text import Vocabulary, tokenize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=123_287)
    parser.add_argument("--captions", type=int, default=616_767)
    parser.add_argument("--feature-dim", type=int, default=1280)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="time this many steps and project the epoch")
    parser.add_argument("--epochs", type=int, default=30, help="the run the projection is for")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--flickr8k", type=Path, default=DEFAULT_CAPTIONS,
                        help="Flickr8k.token.txt (plain, .xz or .gz): caption lengths and word frequencies")


def synthetic_annotations(path: Path, n_images: int, n_captions: int, flickr8k: Path, seed: int = 0) -> None:
    """A COCO captions file of `n_images` images and `n_captions` captions drawn from Flickr8k's statistics."""
    if not flickr8k.is_file():
        raise InputError(f"Flickr8k captions file not found: {flickr8k} (pass --flickr8k PATH/Flickr8k.token.txt)")
    if n_captions < n_images:
        raise InputError(f"--captions ({n_captions}) must be at least --images ({n_images}): one per image")
    source = [tokenize(c) for cs in read_flickr8k_numbered(flickr8k).values() for c in cs.values()]
    counts = Counter(w for tokens in source for w in tokens)
    words, freq = list(counts), np.array(list(counts.values()), dtype=np.float64)
    rng = np.random.default_rng(seed)
    lengths = rng.choice(np.array([len(t) for t in source if t]), size=n_captions)
    drawn = rng.choice(len(words), size=int(lengths.sum()), p=freq / freq.sum())
    ends = np.cumsum(lengths)
    owners = np.concatenate([np.arange(n_images), rng.choice(n_images, n_captions - n_images)])
    annotations = [{"id": k + 1, "image_id": int(owners[k]), "caption": " ".join(words[w] for w in drawn[e - n:e])}
                   for k, (n, e) in enumerate(zip(lengths.tolist(), ends.tolist()))]
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(n_images)]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(args: argparse.Namespace) -> list[dict]:
    keep_freed_memory()  # as captioning-train does
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_annotations(tmp / "captions.json", args.images, args.captions, args.flickr8k)
        seconds, coco = timed(lambda: load_coco_captions(tmp / "captions.json"))
        n = sum(len(c) for c in coco.captions.values())
        rows.append({"stage": "read, validate and index the annotations", "seconds": seconds,
                     "result": f"{len(coco):,} images, {n:,} captions"})
        seconds, vocab = timed(lambda: Vocabulary.build((tokenize(c) for cs in coco.captions.values() for c in cs),
                                                        min_count=5))
        rows.append({"stage": "tokenize every caption, build the vocabulary (min_count 5)", "seconds": seconds,
                     "result": f"{len(vocab):,} words"})
        features = torch.randn(len(coco), args.feature_dim)
        seconds, data = timed(lambda: SplitData(coco, vocab, features, None, 20))
        rows.append({"stage": "build the training dataset (every caption encoded)", "seconds": seconds,
                     "result": f"{len(data.captions):,} items"})
        for dtype in (torch.float32, torch.float16):
            path = tmp / f"features-{dtype}.pt"
            save_s, _ = timed(lambda: torch.save({"features": features.to(dtype)}, path))
            load_s, _ = timed(lambda: torch.load(path, weights_only=True)["features"])
            rows.append({"stage": f"feature cache in {str(dtype).split('.')[1]}: save / load", "seconds": load_s,
                         "result": f"{path.stat().st_size / 2**20:,.0f} MiB; saved in {save_s:.1f} s"})
        rows.append(_epoch(args, data, vocab))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kilobytes on Linux
    rows.append({"stage": "peak resident memory of this process", "seconds": "", "result": f"{peak:,.0f} MiB"})
    return rows


def _epoch(args: argparse.Namespace, data: SplitData, vocab: Vocabulary) -> dict:
    """One decoder epoch (or --steps of it) as the training loop runs it on cached features."""
    torch.manual_seed(0)
    precision, _ = resolve_precision(args.precision, torch.device("cpu"))
    decoder = CaptionDecoder(DecoderConfig(vocab_size=len(vocab), feature_dim=args.feature_dim,
                                           embed_dim=args.embed, hidden_dim=args.hidden))
    sampler = torch.randperm(len(data.captions), generator=torch.Generator().manual_seed(0)).tolist()
    loader = data.loader(False, args.batch, 0, vocab.pad_id, sampler=sampler)
    opts = TrainerOptions(precision=precision, max_steps=args.steps, progress=False)
    state = TrainState()
    stats = Stepper(decoder, None, adam(decoder.parameters(), lr=1e-3), None, opts,
                    torch.device("cpu")).epoch(loader, state)
    epoch_s = stats["seconds"] * len(loader) / state.batch
    what = "one decoder epoch" if state.batch == len(loader) else f"one decoder epoch, projected from {state.batch} steps"
    return {"stage": f"{what} (hidden {args.hidden}, batch {args.batch}, {precision})", "seconds": epoch_s,
            "result": f"{len(loader):,} steps, {stats['tokens_per_s']:,.0f} tokens/s; {args.epochs} epochs: "
                      f"{epoch_s * args.epochs / 3600:.1f} h"}
