"""The device a run uses, and its numeric precision: fp32, or bf16 through torch.autocast.

Under bf16 autocast matrix products and convolutions run in bfloat16 (8 exponent bits, as fp32,
so no loss scaling is needed) while the weights, the optimizer state and the loss stay fp32.
It pays only where the hardware has bf16 units: CUDA GPUs from Ampere on, CPUs with AVX512-BF16
or AMX. Elsewhere torch falls back to slow generic kernels, so we warn. `precision=auto` (the default of
training, feature extraction and captioning) picks bf16 where the device has them and fp32 elsewhere.
"""
from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from captioning.config import PRECISION_SETTINGS
from captioning.io import InputError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when there is a GPU, else the CPU. Asking for CUDA without one is an InputError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InputError(f"device={name!r} is not a device torch knows (auto, cpu, cuda, cuda:1, ...): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={name} but torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         f"use device=auto or device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device={name} but there are only {torch.cuda.device_count()} CUDA devices")
    return device


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on CPU or CUDA; fp32 runs as is; auto is `resolve_precision`'s choice for `device`."""
    precision, _ = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether `device` has native bf16 arithmetic (oneDNN's check on CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, why): auto is bf16 where `device` has native bf16 (`has_fast_bf16`), fp32 elsewhere."""
    if setting not in PRECISION_SETTINGS:
        raise InputError(f"precision must be one of {', '.join(PRECISION_SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return setting, "as asked"
    where = f"this CPU ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else str(device)
    if has_fast_bf16(device):
        return "bf16", f"auto: {where} has native bf16; precision=fp32 turns it off"
    return "fp32", f"auto: {where} has no native bf16"


def warn_if_slow(device: torch.device, precision: str) -> None:
    if precision == "bf16" and not has_fast_bf16(device):
        what = f"this CPU ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else str(device)
        warnings.warn(f"precision=bf16 on {what}, which has no native bf16 units: torch falls back to "
                      "generic kernels, many times slower than fp32 (captioning-bench decoder measures it)",
                      stacklevel=2)
