"""Helpers shared by the benchmarks: the machine's description and markdown tables."""
from __future__ import annotations

import functools
import os
import platform
import time
from typing import Callable, Sequence

import torch

from captioning.models.projection import cpuinfo
from captioning.optim import with_fused_update
from captioning.run_config import OptimOptions


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam over `params` with captioning-train's settings (OptimOptions' defaults: the fused update) at `lr`."""
    settings = {k: v for k, v in OptimOptions().optimizer.items() if not k.startswith("_") and k != "lr"}
    return with_fused_update(functools.partial(torch.optim.Adam, lr=lr, **settings))(params)


def machine_description() -> str:
    cpu = cpuinfo("model name") or platform.processor() or platform.machine()
    parts = [f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(f"GPU: {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def markdown_table(rows: Sequence[dict]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def best_time(fn: Callable[[], object], repeats: int = 3, sync: bool = False) -> float:
    """Best wall-clock seconds of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)
