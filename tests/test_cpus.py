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
