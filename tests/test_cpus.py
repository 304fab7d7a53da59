"""The CPUs a job may use (affinity mask, cgroup quota) and the thread count that follows."""
from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch

from captioning import cpus


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_v2_and_v1(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpus.cgroup_cpu_quota(tmp_path) == quota


def test_available_cpus_is_the_affinity_mask_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert cpus.available_cpus(tmp_path) == 4  # no cgroup files: the mask
    (tmp_path / "cpu.max").write_text("150000 100000")
    assert cpus.available_cpus(tmp_path) == 2  # 1.5 CPUs' worth of time: 2 threads, not 4
    (tmp_path / "cpu.max").write_text("10000 100000")
    assert cpus.available_cpus(tmp_path) == 1


def test_threads_asked_then_omp_num_threads_then_the_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cpus.set_threads(1) == (1, "as asked") and torch.get_num_threads() == 1
        assert cpus.set_threads() == (3, "OMP_NUM_THREADS") and torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(cpus, "available_cpus", lambda: 1)
        threads, why = cpus.set_threads()
        assert threads == 1 == torch.get_num_threads() and why.startswith("the CPUs this process may use")
    finally:
        torch.set_num_threads(before)


FREED_BLOCKS = """
import ctypes, json, sys, torch
from captioning.cpus import keep_freed_memory
class MallInfo2(ctypes.Structure):  # glibc's malloc statistics (malloc.h)
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = libc.mallinfo2()
a = torch.ones(30 << 18)  # 30 MiB, the size of a CNN activation
mmapped = libc.mallinfo2().hblkhd - before.hblkhd
b = a * 2
del a, b
print(json.dumps({"mmapped": mmapped, "heap_kept": libc.mallinfo2().arena - before.arena}))
"""


GLIBC_MALLOC = cpus.glibc_mallopt() is not None and hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc 2.33+


@pytest.mark.skipif(not GLIBC_MALLOC, reason="glibc's malloc only (Linux)")
def test_keep_freed_memory_serves_activations_from_the_heap_and_keeps_them():
    """glibc's own statistics in fresh processes: by default a 30 MiB block is mapped for itself and unmapped when
    freed (the next batch page-faults it back in: `captioning-bench allocator`); kept, it comes from the heap and
    stays there for the next batch. (Page-fault counts vary with the kernel's memory reclaim; these do not.)"""
    import json
    import subprocess

    from captioning.bench.allocator import default_malloc_env

    def malloc_stats(mode: str) -> dict:
        run = subprocess.run([sys.executable, "-c", FREED_BLOCKS, mode], capture_output=True, text=True, check=True,
                             env=default_malloc_env())
        return json.loads(run.stdout)

    default, kept = malloc_stats("default"), malloc_stats("keep")
    assert default["mmapped"] >= 30 << 20 and default["heap_kept"] < 30 << 20
    # a and a * 2 kept after they are freed: the heap grew by 60 MiB, less what free space it already had
    assert kept["mmapped"] == 0 and kept["heap_kept"] >= 45 << 20
