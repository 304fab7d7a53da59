"""The CPUs a job may use (affinity mask, cgroup quota) and the thread count that follows."""
from __future__ import annotations

import os

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


PAGE_FAULTS = """
import resource, sys, torch
torch.set_num_threads(1)
from captioning.cpus import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def batch():  # a CNN batch's allocations: blocks of a few MiB, freed and asked for again
    for mib in (1, 8, 20, 12, 3, 20, 8):
        a = torch.ones(mib << 18)
        b = a * 2
        del a, b
for _ in range(3):  # the heap settles
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallopt"), reason="glibc's malloc only")
def test_keep_freed_memory_stops_page_faulting_each_batch_in_again():
    """Page faults are counted, not timed: with glibc's defaults every batch's blocks come back from the kernel."""
    import subprocess
    import sys

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 4096  # 16 MiB of 4 KiB pages back from the kernel (measured: 15K to 204K)
    assert kept < 1024  # 10 batches of 144 MiB each, next to no fault (measured: 0 to 256)
