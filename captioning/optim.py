"""The optimizer over a model's trainable parameters, and its learning-rate schedule."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float, kind: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay from lr to lr * min_lr_ratio (or constant)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(optim_cfg: dict, model: torch.nn.Module,
                    make_optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer],
                    total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`make_optimizer` (Hydra's partial of cfg.optim.optimizer) over the trainable parameters, and the schedule."""
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    return optimizer, warmup_cosine(optimizer, total_steps, optim_cfg["warmup_steps"], optim_cfg["min_lr_ratio"],
                                    optim_cfg["scheduler"])
