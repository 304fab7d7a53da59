"""projection: decoding's vocabulary projection, torch's nn.Linear vs oneDNN's GEMM, and which this machine uses.

logits = W h + b with W (V x H), on N rows: a greedy step's N images, a beam step's images x beams. Both run in
fp32 on the same random W, b and h, taking turns over --repeats rounds (the fastest counts), at each of
--batch-sizes; "largest difference" is the largest |logit difference| between the two (rounding: they sum in
different orders). `captioning.models.projection` says why and when decoding uses oneDNN; CAPTIONING_GEMM
overrides the choice.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from captioning.models.projection import cpu_vendor, onednn_gemm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 150, 512, 2560])
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the fastest counts")


def run(args: argparse.Namespace) -> list[dict]:
    if not hasattr(torch.ops.mkldnn, "_linear_pointwise") or not torch.backends.mkldnn.is_available():
        return [{"note": "this torch build has no oneDNN linear: decoding uses nn.Linear"}]
    torch.manual_seed(0)
    layer = nn.Linear(args.hidden, args.vocab)
    used = "oneDNN" if onednn_gemm() else "nn.Linear"
    rows = []
    with torch.no_grad():
        for n in args.batch_sizes:
            h = torch.randn(n, args.hidden)
            ways = {"nn.Linear": lambda: layer(h),
                    "oneDNN": lambda: torch.ops.mkldnn._linear_pointwise(h, layer.weight, layer.bias, "none", [], "")}
            calls = max(1, 2048 // n)  # about the same work per timing at every size
            best = {name: float("inf") for name in ways}
            for fn in ways.values():
                fn()  # warm-up: oneDNN picks its kernel on the first call
            for _ in range(args.repeats):
                for name, fn in ways.items():
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    best[name] = min(best[name], (time.perf_counter() - t0) / calls)
            flop = 2 * n * args.hidden * args.vocab
            rows.append({"rows": n, "nn.Linear ms": 1e3 * best["nn.Linear"], "oneDNN ms": 1e3 * best["oneDNN"],
                         "nn.Linear GFLOP/s": flop / best["nn.Linear"] / 1e9,
                         "oneDNN GFLOP/s": flop / best["oneDNN"] / 1e9,
                         "oneDNN speedup": f"{best['nn.Linear'] / best['oneDNN']:.2f}x",
                         "largest difference": float((ways["nn.Linear"]() - ways["oneDNN"]()).abs().max()),
                         "decoding uses": f"{used} (CPU vendor {cpu_vendor() or 'unknown'})"})
    return rows
