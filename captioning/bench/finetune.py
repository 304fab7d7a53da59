"""finetune: images/s of the raw-image training step: the CNN frozen, its last K blocks trained, all of it.

The step is `captioning.engine.Stepper` (forward through the encoder and the decoder, cross-entropy,
backward, gradient clipping, Adam) on --batch random images of --image-size pixels, already decoded (image
decoding and resizing, which DataLoader workers overlap with the step, are not counted), each with one
random caption of --seq-len tokens. The first row is the decoder alone on cached features, what an epoch of
a frozen run costs; the others set `encoder.finetune_blocks` (frozen: none, the images still go through the
CNN). Rows take turns, best of --repeats.
"""
from __future__ import annotations

import argparse

import torch

from captioning.bench.common import adam, best_time
from captioning.config import TrainerOptions
from captioning.cpus import keep_freed_memory
from captioning.data.collate import CaptionBatch
from captioning.engine import Stepper
from captioning.models import CaptionDecoder, DecoderConfig, build_encoder
from captioning.run_state import TrainState


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, nargs="+", default=[3], help="rows that train the last K blocks")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per caption, <start> and <end> included")
    parser.add_argument("--vocab", type=int, default=3000)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the fastest counts")


def run(args: argparse.Namespace) -> list[dict]:
    keep_freed_memory()  # as captioning-train does
    torch.manual_seed(0)
    encoder = build_encoder(args.encoder, image_size=args.image_size)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=args.vocab, feature_dim=encoder.out_dim))
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    captions = torch.randint(3, args.vocab, (args.batch, args.seq_len))
    captions[:, 0], captions[:, -1] = 1, 2
    with torch.no_grad():
        features = encoder.eval()(images)
    ids = torch.arange(args.batch)
    opts = TrainerOptions(precision=args.precision, progress=False)
    n_blocks = len(encoder.blocks())
    rows = {"cached features (decoder only)": None, "images, CNN frozen": 0,  # name -> blocks trained
            **{f"images, last {k} of {n_blocks} blocks trained": k for k in args.blocks},
            f"images, whole CNN trained ({n_blocks} blocks)": n_blocks}

    def step(blocks: int | None) -> None:
        if blocks:
            encoder.finetune(blocks)
        else:
            encoder.freeze()
        params = list(decoder.parameters()) + [p for p in encoder.parameters() if p.requires_grad]
        batch = CaptionBatch(features if blocks is None else images, captions, ids)
        Stepper(decoder, None if blocks is None else encoder, adam(params, lr=1e-5), None, opts,
                torch.device("cpu")).epoch([batch] * args.steps, TrainState())

    for blocks in rows.values():  # warm-up: allocator, oneDNN kernel choice
        step(blocks)
    seconds = {name: float("inf") for name in rows}
    for _ in range(args.repeats):  # take turns, so a burst of load elsewhere hits every row alike
        for name, blocks in rows.items():
            seconds[name] = min(seconds[name], best_time(lambda: step(blocks), repeats=1) / args.steps)
    frozen = seconds["images, CNN frozen"]
    return [{"training step": name, "trained CNN parameters": _trained(encoder, rows[name]),
             "precision": args.precision, "batch": args.batch, "seconds/step": s, "images/s": args.batch / s,
             "vs frozen CNN": f"{frozen / s:.2f}x"} for name, s in seconds.items()]


def _trained(encoder, blocks: int | None) -> int:
    if not blocks:
        return 0
    encoder.finetune(blocks)
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)
