"""The vocabulary projection of a decoding step, logits = W h + b (W: V x H), on the faster of two CPU GEMMs.

The projection is most of a decoding step (V = 10,000 words, H = 512: 10 MFLOP per caption per step, against
about 1.6 for an LSTM step). torch computes an fp32 nn.Linear with MKL's sgemm, which takes its fastest code
paths on Intel CPUs only: on an AMD EPYC (AVX2) it ran W h at 3 GFLOP/s for one caption and 95 GFLOP/s for 512,
where oneDNN's fp32 GEMM (the library torch already ships for its convolutions and RNNs) ran 9 and 127: 1.3x
to 3x faster at every decoding batch size up to 512, and level at training's 2,000-row batches.

So decoding steps (no gradient, CPU, fp32, no autocast) call oneDNN where the CPU's vendor is not Intel, and
keep torch's default elsewhere; `CAPTIONING_GEMM=mkl|onednn` overrides the choice (for A/B timings). Both are
exact fp32 GEMMs that sum in different orders: logits agree to rounding (a few ulps), and a caption can differ
only where two words' logits tie to that precision. Training and everything with a gradient use nn.Linear.
"""
from __future__ import annotations

import functools
import os
import platform

import torch
from torch import Tensor, nn


def cpuinfo(field: str) -> str:
    """The first value of `field` in Linux's /proc/cpuinfo ("vendor_id": "AuthenticAMD", "model name": ...), ""
    where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU vendor string on Linux ("GenuineIntel", "AuthenticAMD", ...), "" where it is not known."""
    return cpuinfo("vendor_id")


@functools.cache
def onednn_gemm() -> bool:
    """Whether decoding's projection calls oneDNN on this machine (see the module docstring)."""
    asked = os.environ.get("CAPTIONING_GEMM", "").lower()
    if asked not in ("", "mkl", "onednn"):
        raise ValueError(f"CAPTIONING_GEMM must be 'mkl' or 'onednn', got {asked!r}")
    available = platform.machine() in ("x86_64", "AMD64") and torch.backends.mkldnn.is_available() \
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if asked:
        return asked == "onednn" and available
    return available and cpu_vendor() not in ("GenuineIntel", "")


def vocab_logits(layer: nn.Linear, h: Tensor) -> Tensor:
    """layer(h) for a decoding step, h (N, H) -> (N, V): on oneDNN where `onednn_gemm()` and the call allows it."""
    if (h.device.type != "cpu" or h.dtype != torch.float32 or layer.weight.dtype != torch.float32
            or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or not onednn_gemm()):
        return layer(h)
    return torch.ops.mkldnn._linear_pointwise(h.contiguous(), layer.weight, layer.bias, "none", [], "")
