"""The optimizer over a model's trainable parameters, and its learning-rate schedule."""
from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Iterable

import torch

from captioning.io import InputError
from captioning.run_config import OptimOptions


class Schedule:
    """lr(step) = lr * factor(step), after a linear warm-up over `warmup_steps`:

    * cosine:   min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * progress)) / 2, progress over the run
    * constant: 1
    * step:     decay_rate ** (epoch // decay_every)  (self-critical.pytorch's learning_rate_decay_every/_rate)
    * plateau:  decay_rate ** (the times validation went `plateau_patience` epochs without a better score)

    A callable object, so LambdaLR's state_dict carries its fields: a resumed run takes the plateau's count of
    decays from the checkpoint and its settings from its own configuration (`configure`). The step decay counts
    epochs in optimizer steps taken (a skipped non-finite step does not count).
    """

    def __init__(self, *settings) -> None:
        """`configure`'s arguments."""
        self.configure(*settings)
        self.decays = 0

    def configure(self, kind: str, total_steps: int, steps_per_epoch: int, warmup_steps: int, min_lr_ratio: float,
                  decay_every: int, decay_rate: float, plateau_patience: int) -> None:
        self.kind, self.total_steps, self.steps_per_epoch = kind, total_steps, max(1, steps_per_epoch)
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.decay_every, self.decay_rate, self.plateau_patience = decay_every, decay_rate, plateau_patience

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.decay_rate ** (step // self.steps_per_epoch // self.decay_every)
        if self.kind == "plateau":
            return self.decay_rate ** self.decays
        return 1.0

    def validated(self, stale: int) -> None:
        """After each epoch's validation, given the epochs since the best one (the run's early-stopping count):
        the plateau schedule decays every `plateau_patience` of them."""
        if self.kind == "plateau" and stale and stale % self.plateau_patience == 0:
            self.decays += 1


def warmup_warning(options: OptimOptions, total_steps: int, steps_per_epoch: int) -> str | None:
    """Said when the warm-up takes half the run or more: a small dataset at the default batch size (40 images of
    5 captions are 2 steps an epoch at 128) never leaves the first, tiny learning rates, and learns nothing."""
    warmup = options.warmup_steps
    if not warmup or 2 * warmup < total_steps:
        return None
    return (f"the learning-rate warm-up (optim.warmup_steps={warmup}) takes {min(warmup, total_steps)} of this run's "
            f"{total_steps} optimizer steps ({steps_per_epoch} an epoch): for data this small, lower "
            f"trainer.batch_size or optim.warmup_steps")


def _settings(o: OptimOptions, total_steps: int, steps_per_epoch: int) -> tuple:
    return (o.scheduler, total_steps, steps_per_epoch, o.warmup_steps, o.min_lr_ratio, o.decay_every, o.decay_rate,
            o.plateau_patience)


def param_groups(model: torch.nn.Module, encoder_lr: float | None) -> list[dict]:
    """Two groups: the decoder's parameters, and the encoder's with their own learning rate (neuraltalk2's
    cnn_learning_rate; None: the decoder's). A frozen parameter has no gradient and torch's optimizers skip it,
    so the CNN's group costs nothing until the CNN trains, and every run's optimizer has the same groups: a frozen
    run can be resumed with encoder.finetune_from_epoch set."""
    return [{"params": list(model.decoder.parameters())},
            {"params": list(model.encoder.parameters()), **({"lr": encoder_lr} if encoder_lr else {})}]


def with_fused_update(make_optimizer: Callable[[Iterable], torch.optim.Optimizer]
                      ) -> Callable[[Iterable], torch.optim.Optimizer]:
    """`make_optimizer` with its `fused=None` (optim.optimizer.fused's default) resolved: torch's fused update (one
    kernel for every parameter: Adam, AdamW, SGD, Adagrad) where the class has one, the class's own default where it
    has none (RMSprop, NAdam, ...); true or false are passed as they are."""
    if not isinstance(make_optimizer, functools.partial) or make_optimizer.keywords.get("fused", False) is not None:
        return make_optimizer
    keywords = {k: v for k, v in make_optimizer.keywords.items() if k != "fused"}
    if "fused" in inspect.signature(make_optimizer.func).parameters:
        keywords["fused"] = True
    return functools.partial(make_optimizer.func, *make_optimizer.args, **keywords)


def build_optimizer(options: OptimOptions, params: Iterable, make_optimizer: Callable[[Iterable], torch.optim.Optimizer],
                    total_steps: int, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`make_optimizer` (Hydra's partial of cfg.optim.optimizer) over `params` (parameters or `param_groups`), and
    the schedule, one factor for every group (`scheduler.lr_lambdas[0]` is the `Schedule`; options as in
    conf/optim/adam.yaml)."""
    if problems := options.schedule_problems():
        raise InputError("; ".join(problems))
    optimizer = with_fused_update(make_optimizer)(params)
    schedule = Schedule(*_settings(options, total_steps, steps_per_epoch))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def reconfigure(scheduler: torch.optim.lr_scheduler.LambdaLR, options: OptimOptions, total_steps: int,
                steps_per_epoch: int) -> None:
    """After loading a checkpoint's scheduler: this run's settings (epochs, batch, schedule options), the
    checkpoint's step count and plateau progress."""
    scheduler.lr_lambdas[0].configure(*_settings(options, total_steps, steps_per_epoch))


def validated(scheduler: torch.optim.lr_scheduler.LambdaLR, stale: int) -> None:
    """After each epoch's validation (`stale`: epochs since the best one): a plateau decay applies from the next
    step on."""
    schedule = scheduler.lr_lambdas[0]
    schedule.validated(stale)
    factor = schedule(scheduler.last_epoch)
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
