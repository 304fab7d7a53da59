"""How many CPUs this process may really use, and the thread count torch gets from it.

torch's default thread count is the machine's core count. A job often has fewer: a SLURM or taskset CPU
mask (`os.sched_getaffinity`), or a container's CPU quota (cgroup `cpu.max`: 200000 100000 is two CPUs'
worth of time). Every parallel region of a CPU kernel ends in an OpenMP barrier that waits for its slowest
thread, so one thread too many, waiting for a CPU another process holds, stalls every layer: a decoder
epoch with 2 threads ran 7x slower than with 1 while another process held one of the machine's two cores.

Memory too: `keep_freed_memory` stops glibc's malloc handing every large freed tensor back to the kernel.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

CGROUP = Path("/sys/fs/cgroup")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def cgroup_cpu_quota(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time the cgroup may use (quota / period), or None when unlimited or unknown.
    cgroup v2 `cpu.max` ("200000 100000", or "max 100000"), else v1 `cpu/cpu.cfs_quota_us` and `cfs_period_us`."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def set_threads(threads: int | None = None) -> tuple[int, str]:
    """torch's intra-op threads: `threads` if given, else OMP_NUM_THREADS if set (torchrun sets 1 per process),
    else `available_cpus()`. Returns (threads, where the number came from)."""
    if threads is not None:
        why = "as asked"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        threads, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        threads = available_cpus()
        why = f"the CPUs this process may use, of {os.cpu_count()} on the machine"
    torch.set_num_threads(threads)
    return threads, why


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let glibc's malloc keep freed blocks of up to `mmap_threshold` bytes for reuse, instead of returning them to
    the kernel; returns whether it could (False without glibc: macOS, Windows, musl).

    A CNN allocates the same activations, a few MB each, for every batch. By default glibc serves a large block
    with mmap and unmaps it when freed, and gives the top of its heap back once more than its trim threshold is
    free there, so the next batch's block comes back from the kernel one zeroed 4 KiB page fault at a time.
    32 MiB is glibc's largest mmap threshold on 64-bit; up to `trim_threshold` bytes of free heap stay in the
    process. `captioning-bench allocator` (EfficientNet-Lite0's inference copy, one thread, 224 px, fp32): 25.1 ms
    per image at batch 4 with glibc's defaults, 17.8 ms with these. Forked processes (DataLoader workers) inherit
    the setting.
    """
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def glibc_mallopt() -> Callable[[int, int], int] | None:
    """The C library's mallopt on Linux, else None (macOS and Windows have none; ctypes.CDLL(None) raises on
    Windows). musl's accepts the call and changes nothing (it returns 0)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return None
