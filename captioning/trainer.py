"""The `Trainer`: what changes while a run trains, and the epoch loop over it.

It owns the model (and its DistributedDataParallel wrappers), the objective, the optimizer and its schedule, the
`TrainState`, the sampler and loader of the training split, and the log; `fit()` runs epochs until `finished()`:

    [validate_start]     a run started from a checkpoint: that checkpoint is epoch 0
    while not finished:  finetune_if_due -> run_epoch -> validate -> end_epoch (row, log, best.pt, last.pt)

An interruption (SIGTERM, Ctrl-C) saves last.pt exactly where the run is, with every process's random-number state;
a non-finite loss stops it before any checkpoint is overwritten (`engine.Diverged`).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Callable

import torch

from captioning import distributed, engine, interrupt
from captioning.config import TrainerOptions
from captioning.data.splits import SplitData
from captioning.engine import Diverged, Stepper
from captioning.finetune import image_splits
from captioning.models import Captioner
from captioning.objectives import Objective, TeacherForcing
from captioning.optim import build_optimizer, param_groups, reconfigure, validated, warmup_warning
from captioning.run_state import TrainState, restore, rng_states, save_run_checkpoint
from captioning.runlog import RunLog
from captioning.scst import CiderReward, SCSTObjective

if TYPE_CHECKING:
    from captioning.training import RunInputs


def build_objective(run: RunInputs, device: torch.device) -> Objective:
    """SCST (rewarded with CIDEr-D against the training references) or teacher forcing, as the config says."""
    if run.config.scst.enabled:
        train = run.cocos["train"]
        reward = CiderReward({i: train.captions[i] for i in train.image_ids})
        max_len = run.config.dataset.max_caption_len
        references = {i: [run.vocab.encode_caption(c, max_len) for c in train.captions[i]] for i in train.image_ids} \
            if run.config.scst.xe_weight else None
        return SCSTObjective(run.config.scst, run.vocab, reward, device, references, run.opts.label_smoothing)
    return TeacherForcing(device, run.opts.label_smoothing, run.opts.scheduled_sampling, run.vocab.pad_id)


def epoch_row(state: TrainState, stats: dict, val: dict, lrs: list[float], opts: TrainerOptions) -> dict:
    """The epoch's line of metrics.csv / metrics.json: training loss and logged means, validation scores, speed,
    learning rates (the CNN's second when it trains), skipped steps, scheduled sampling's probability."""
    return {"epoch": state.epoch, "step": state.step, "train_loss": state.loss_sum / state.tokens,
            **{f"train_{k}": v / state.tokens for k, v in state.extras.items()},
            **{f"val_{k}": v for k, v in val.items()}, "tokens_per_s": stats["tokens_per_s"],
            "train_seconds": stats["seconds"], "lr": lrs[0], **({"encoder_lr": lrs[1]} if len(lrs) > 1 else {}),
            "skipped_steps": state.skipped,
            **({"sampling_prob": opts.scheduled_sampling.prob(state.epoch)}
               if opts.scheduled_sampling.start_epoch is not None else {})}


class Trainer:
    """A run's training: `fit()`, then `model` holds the last weights and `state` the history."""

    def __init__(self, run: RunInputs, model: Captioner, model_config: dict, splits: dict[str, SplitData],
                 make_optimizer: Callable, device: torch.device):
        self.run, self.model, self.model_config, self.splits, self.device = run, model, model_config, splits, device
        opts, optim, world = run.opts, run.config.optim, distributed.world_size()
        self.main, self.ckpt_dir = distributed.is_main(), run.run_dir / "checkpoints"
        self.objective = build_objective(run, device)
        self.local_batch = opts.batch_size // world
        # The same permutation for any number of ranks (torch.randperm seeded with seed + epoch); rank r
        # takes items r, r+W, ..., so the union of the ranks' k-th batches is the one-process k-th batch.
        train = splits["train"]
        self.sampler = distributed.ResumableSampler(train.images if self.objective.per_image else train.captions,
                                                    num_replicas=world, rank=distributed.rank(), shuffle=True,
                                                    seed=run.config.seed * 100_003)
        self.loader = self._train_loader()
        steps_per_epoch = math.ceil(len(self.loader) / opts.accumulate)
        self.total_steps = opts.max_steps or opts.max_epochs * steps_per_epoch
        if self.main and (message := warmup_warning(optim, self.total_steps, steps_per_epoch)):
            warnings.warn(message)
        params = param_groups(model, optim.encoder_lr)
        self.optimizer, self.scheduler = build_optimizer(optim, params, make_optimizer, self.total_steps,
                                                         steps_per_epoch)
        self.state = TrainState()
        if run.ckpt is not None:
            self.state = restore(run.resume, run.ckpt, run.run_dir, model, self.optimizer, self.scheduler, run.config.as_dict(),
                                 copy_best=self.main, rank=distributed.rank(), world_size=world)
            reconfigure(self.scheduler, optim, self.total_steps, steps_per_epoch)
        decoder = distributed.data_parallel(model.decoder, device)
        encoder = None if run.cached else distributed.data_parallel(model.encoder, device)  # the CNN, when it trains
        self.stepper = Stepper(decoder, encoder, self.optimizer, self.scheduler, opts, device, self.objective)
        self.log = RunLog(run.run_dir, tensorboard=opts.tensorboard, history=self.state.history) if self.main else None

    def _train_loader(self):
        return self.splits["train"].loader(self.objective.per_image, self.local_batch, self.run.opts.num_workers,
                                           self.run.vocab.pad_id, self.sampler)

    def finished(self) -> bool:
        state, opts = self.state, self.run.opts
        if state.batch:  # an interrupted epoch: train what is left of it, then validate
            return False
        return state.epoch > opts.max_epochs or state.step >= self.total_steps or state.stale >= opts.patience

    def finetune_if_due(self) -> None:
        """From epoch encoder.finetune_from_epoch on, train the CNN on images (also when a resumed run is there)."""
        enc = self.run.config.encoder
        if enc.finetune_from_epoch is None or self.state.epoch < enc.finetune_from_epoch or \
                self.stepper.encoder is not None:
            return
        self.model.encoder.finetune(enc.finetune_blocks)
        self.stepper.encoder = distributed.data_parallel(self.model.encoder, self.device)
        self.splits = image_splits(self.run.cocos, self.run.vocab, self.model.encoder, self.run.config,
                                   self.run.images_of)
        self.loader = self._train_loader()
        if self.main:
            blocks = enc.finetune_blocks
            what = f"its last {blocks} blocks" if blocks else "the whole CNN"
            print(f"epoch {self.state.epoch}: fine-tuning the CNN from now on ({what})", flush=True)

    def run_epoch(self, deadline: float | None) -> dict:
        """Train the epoch (or its rest): the same data order, augmentations and dropout masks after a resume."""
        state, seed, world = self.state, self.run.config.seed, distributed.world_size()
        self.sampler.set_epoch(state.epoch)
        self.splits["train"].set_epoch(state.epoch)
        self.sampler.skip = state.batch * self.local_batch
        if state.batch == 0:  # mid-epoch, the restored RNG state goes on instead
            torch.manual_seed((seed * 100_003 + state.epoch) * world + distributed.rank())
        on_step = (lambda s: self.log.log_step(state.step, s)) if self.main else None
        stats = self.stepper.epoch(self.loader, state, deadline, on_step)
        if state.tokens == 0:
            raise Diverged(f"training diverged: every step of epoch {state.epoch} was non-finite "
                           f"({state.skipped} skipped)")
        return stats

    def validate(self) -> tuple[dict, bool]:
        """The validation split's scores, and whether they beat the best so far (the same on every rank)."""
        val, _ = engine.score_split(self.model, self.splits["val"], self.run.config, self.device, desc="val")
        select_on, state = self.run.opts.select_on, self.state
        improved = val[select_on] > state.best_score
        if improved:
            state.best_score, state.best_epoch = val[select_on], state.epoch
        validated(self.scheduler, 0 if improved else state.stale + 1)  # epochs since the best, this one included
        return val, improved

    def validate_start(self) -> None:
        """Score the checkpoint a new run starts from (trainer.init_from) as its epoch 0, the best so far: an epoch
        must beat it to replace best.pt, and patience counts from it. So a second stage (SCST) never keeps weights
        that validation scores below those it started from; where no epoch beats them, best.pt holds them."""
        state = self.state
        val, _ = engine.score_split(self.model, self.splits["val"], self.run.config, self.device, desc="val")
        state.best_score, state.best_epoch = val[self.run.opts.select_on], 0
        row = {"epoch": 0, "step": 0, **{f"val_{k}": v for k, v in val.items()}}
        state.history.append(row)
        if self.main:
            self.log.log_epoch(row)
            print(f"epoch   0  (trainer.init_from)  val loss {val['loss']:.3f}  val BLEU-4 {val['bleu4']:.4f}  "
                  f"CIDEr-D {val['cider']:.3f}  *", flush=True)
            self.save("best.pt", score=state.best_score)

    def end_epoch(self, stats: dict, val: dict, improved: bool) -> None:
        """The epoch's row (log, line), best.pt if it improved, then last.pt at the start of the next epoch."""
        state = self.state
        lrs = [g["lr"] for g in self.optimizer.param_groups][:1 + (self.stepper.encoder is not None)]  # the CNN's 2nd
        row = epoch_row(state, stats, val, lrs, self.run.opts)
        state.history.append(row)
        if self.main:
            self.log.log_epoch(row)
            skipped = f"  ({state.skipped} non-finite steps skipped)" if state.skipped else ""
            print(f"epoch {state.epoch:3d}  step {state.step:6d}  train loss {row['train_loss']:.3f}  "
                  f"val loss {val['loss']:.3f}  val BLEU-4 {val['bleu4']:.4f}  CIDEr-D {val['cider']:.3f}"
                  f"{'  *' if improved else ''}{skipped}{self.objective.summary(row)}", flush=True)
            if improved:
                self.save("best.pt", score=val[self.run.opts.select_on])  # before last.pt: see captioning.run_state
        state.next_epoch()
        if self.main:
            self.save("last.pt")

    def save(self, name: str, score: float | None = None, rng_per_rank: list[dict] | None = None) -> None:
        save_run_checkpoint(self.ckpt_dir / name, self.model, self.run.vocab, self.model_config, self.optimizer,
                            self.scheduler, self.state, self.run.config.as_dict(), score, rng_per_rank)

    def fit(self) -> None:
        """Epochs until finished (or trainer.max_minutes), saving last.pt at an interruption."""
        opts, state = self.run.opts, self.state
        self.finetune_if_due()  # a run resumed after the switch trains, and scores its splits, through the trained CNN
        if self.run.resume is not None and self.finished() and self.main:
            print(f"nothing left to train from {self.run.resume} (epoch {state.epoch - 1}, step {state.step}); "
                  f"scoring best.pt on the test split", flush=True)
        deadline = time.time() + 60 * opts.max_minutes if opts.max_minutes else None
        try:
            if self.run.init is not None and not state.history and state.step == 0:  # also when a signal came in it
                self.validate_start()
            while not self.finished() and not (deadline and distributed.any_rank(time.time() >= deadline,
                                                                                 self.device)):
                self.finetune_if_due()
                stats = self.run_epoch(deadline)
                self.end_epoch(stats, *self.validate())
        except interrupt.Interrupted as e:  # every rank is here, at the same step: each one's dropout stream is saved
            states = distributed.gather_dict({distributed.rank(): rng_states()})
            if self.main:
                self.save("last.pt", rng_per_rank=[states[r] for r in range(distributed.world_size())])
            e.checkpoint, e.where = self.ckpt_dir / "last.pt", f"step {state.step} (epoch {state.epoch}, batch {state.batch})"
            raise
        except Diverged as e:  # nothing was saved since the last finite epoch
            last = self.ckpt_dir / "last.pt"
            kept = f"{last} keeps the end of epoch {state.epoch - 1}" if last.is_file() else "no checkpoint was written"
            raise Diverged(f"{e}; {kept}. Try a lower optim.optimizer.lr, a smaller trainer.grad_clip, or "
                           f"trainer.nonfinite=skip") from None

    def close(self) -> None:
        if self.main:
            self.log.plot_curves()
            self.log.close()
