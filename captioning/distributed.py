"""Data-parallel training over processes with torch.distributed (launched by torchrun).

torchrun starts one process per device and tells each, through its environment, who it is:
RANK (0 .. WORLD_SIZE-1 over all nodes), LOCAL_RANK (its device on this node) and where the
rendezvous is (MASTER_ADDR / MASTER_PORT; `init_process_group("env://")` reads them). Every
helper below also works without a process group (one process is rank 0 of 1), so the
single-process run takes exactly the same code path.

How `captioning.training` divides the work:

* training: a DistributedSampler deals each epoch's permutation to the ranks, each rank runs
  global_batch / world_size captions per step, and DistributedDataParallel sums the gradients;
* the feature cache: rank 0 fills it, the others wait at a barrier and then read it;
* evaluation: images are dealt round-robin (no padding, so none is scored twice), the
  {image_id: caption} dicts are gathered, and every rank scores the same union.
"""
from __future__ import annotations

import itertools
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

# Rank 0 may extract features for a long time while the others wait at a barrier.
TIMEOUT = timedelta(hours=2)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that logs, shows progress bars and writes files."""
    return rank() == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1; yields this process's device.

    nccl on CUDA (device cuda:LOCAL_RANK), gloo on CPU. A group the caller already
    initialised is used as is and left open.
    """
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda" and device.index is not None:  # the "current" device of RNG states and bf16 checks
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield device
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://", timeout=TIMEOUT)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over ranks, in place (on the training device: nccl only reduces CUDA tensors)."""
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on one: ranks must take the same branch (e.g. stop
    at a deadline together), or the next collective waits forever."""
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


def gather_dict(part: dict) -> dict:
    """The union of every rank's dict (each rank gets all of it), keys sorted."""
    if not dist.is_initialized():
        return part
    parts: list[dict] = [{} for _ in range(world_size())]
    dist.all_gather_object(parts, part)
    merged = {k: v for p in parts for k, v in p.items()}
    return {k: merged[k] for k in sorted(merged)}


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can begin an epoch part-way: it leaves out the first `skip` items of this
    rank's share (the batches a preempted run already trained), so a resumed epoch goes on where it stopped."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def shard(n: int) -> list[int]:
    """This rank's share of items 0..n-1, dealt round-robin: every item exactly once over all ranks."""
    return list(range(rank(), n, world_size()))


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers into every rank's `module`."""
    if dist.is_initialized():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src)


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` under DistributedDataParallel when this is one of several processes (which all-reduces its
    gradients during backward and, now, broadcasts rank 0's weights), else `module` itself."""
    if world_size() == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
