"""Numeric precision of training and feature extraction: fp32, or bf16 through torch.autocast.

Under bf16 autocast matrix products and convolutions run in bfloat16 (8 exponent bits, as fp32,
so no loss scaling is needed) while the weights, the optimizer state and the loss stay fp32.
It pays only where the hardware has bf16 units: CUDA GPUs from Ampere on, CPUs with AVX512-BF16
or AMX. Elsewhere torch falls back to slow generic kernels, so we warn.
"""
from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on CPU or CUDA; fp32 runs as is."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether `device` has native bf16 arithmetic (oneDNN's check on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def warn_if_slow(device: torch.device, precision: str) -> None:
    if precision == "bf16" and not has_fast_bf16(device):
        what = f"this CPU ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else str(device)
        warnings.warn(f"precision=bf16 on {what}, which has no native bf16 units: torch falls back to "
                      "generic kernels, many times slower than fp32 (captioning-bench decoder measures it)",
                      stacklevel=2)
