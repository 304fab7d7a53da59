"""decoder: the training step's tokens/s and GFLOP/s next to the matmul peak of the same run.

The step is `captioning.engine.Stepper` (teacher-forced forward, cross-entropy, backward,
gradient clipping, Adam) on cached features and random captions of exactly --seq-len tokens (no
padding: every target token counts). FLOPs come from the layer sizes: a matmul of an (M, K) by a
(K, N) matrix is 2MKN, and its backward pass computes two such products (the gradients of the
input and of the weights), so a training step is 3x the forward's matmuls (elementwise work is
not counted). The peak is
the best --peak-size^3 matmul of each precision, timed in the same rounds as the steps.
"""
from __future__ import annotations

import argparse

import torch

from captioning.bench.common import adam, best_time
from captioning.config import TrainerOptions
from captioning.cpus import keep_freed_memory
from captioning.data.collate import CaptionBatch
from captioning.engine import Stepper
from captioning.models import CaptionDecoder, DecoderConfig
from captioning.run_state import TrainState

BOS, EOS, PAD = 1, 2, 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embed", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=3000, help="vocabulary (Flickr8k's words seen >= 5 times: ~3000)")
    parser.add_argument("--feature-dim", type=int, default=1280, help="encoder feature size (EfficientNet-Lite0)")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per caption, <start> and <end> included")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--impls", nargs="+", default=["fused", "explicit"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the fastest counts")
    parser.add_argument("--peak-size", type=int, default=1024, help="the peak is an N x N by N x N matmul")
    parser.add_argument("--device", default="cpu")


def step_flops(c: DecoderConfig, batch: int, seq_len: int) -> float:
    """Matmul FLOPs of one training step on `batch` captions of `seq_len` tokens (forward + backward)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[c.cell]
    steps = seq_len - 1 + (c.inject == "pre")  # teacher forcing reads tokens 0..T-2; "pre" adds the image step
    recurrent = c.num_layers * gates * c.hidden_dim * c.hidden_dim  # W_hh h_{t-1}, every layer
    per_step = recurrent + sum(gates * c.hidden_dim * (c.embed_dim if k == 0 else c.hidden_dim)
                               for k in range(c.num_layers))  # + W_ih x_t
    per_token = c.hidden_dim * c.vocab_size  # the output layer, on the T-1 predicted tokens
    if c.inject == "init":
        per_caption = c.feature_dim * c.num_layers * c.hidden_dim * (2 if c.cell == "lstm" else 1)  # h0 (and c0)
    else:
        per_caption = c.feature_dim * c.embed_dim  # the image projection W_ie v
    forward = 2 * batch * (steps * per_step + (seq_len - 1) * per_token + per_caption)
    # No input gradient for the image features, nor (with "pre"/"par") for the constant h_0 = 0.
    no_input_grad = per_caption + (recurrent if c.inject != "init" else 0)
    return 3.0 * forward - 2 * batch * no_input_grad


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device) -> float:
    """GFLOP/s of one size^3 matmul (best of 3 calls)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up
    return 2 * size ** 3 / best_time(lambda: a @ b, repeats=3, sync=True) / 1e9


def run(args: argparse.Namespace) -> list[dict]:
    keep_freed_memory()  # as captioning-train does
    torch.manual_seed(0)
    device = torch.device(args.device)
    features = torch.randn(args.batch, args.feature_dim)  # (B, D)
    captions = torch.randint(EOS + 2, args.vocab, (args.batch, args.seq_len))  # (B, T), no padding
    captions[:, 0], captions[:, -1] = BOS, EOS
    batch = CaptionBatch(features, captions, torch.arange(args.batch))
    runs = {}
    for impl in args.impls:
        for precision in args.precisions:
            config = DecoderConfig(vocab_size=args.vocab, feature_dim=args.feature_dim, embed_dim=args.embed,
                                   hidden_dim=args.hidden, cell=args.cell, impl=impl)
            decoder = CaptionDecoder(config).to(device)
            runs[(impl, precision)] = (config, decoder, adam(decoder.parameters(), lr=1e-4))

    def train_steps(key: tuple[str, str], n: int) -> float:
        _, decoder, optimizer = runs[key]
        stepper = Stepper(decoder, None, optimizer, None, TrainerOptions(precision=key[1], progress=False), device)
        return stepper.epoch([batch] * n, TrainState())["seconds"] / n

    for key in runs:
        train_steps(key, 1)  # warm-up: first-call allocations and kernel selection
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    step_s = {key: float("inf") for key in runs}
    peak = {p: 0.0 for p in args.precisions}
    for _ in range(args.repeats):  # take turns, so a burst of load elsewhere hits every row alike
        for key in runs:
            step_s[key] = min(step_s[key], train_steps(key, args.steps))
        for p in peak:
            peak[p] = max(peak[p], matmul_peak(args.peak_size, dtypes[p], device))

    rows = []
    tokens = args.batch * (args.seq_len - 1)
    for (impl, precision), (config, _, _) in runs.items():
        gflops = step_flops(config, args.batch, args.seq_len) / step_s[(impl, precision)] / 1e9
        rows.append({"impl": impl, "precision": precision, "batch": args.batch, "hidden": args.hidden,
                     "ms/step": 1e3 * step_s[(impl, precision)], "tokens/s": round(tokens / step_s[(impl, precision)]),
                     "GFLOP/s": gflops, "matmul peak GFLOP/s": peak[precision],
                     "% of peak": f"{100 * gflops / peak[precision]:.0f}%"})
    return rows
