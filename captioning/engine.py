"""Optimizer steps over an epoch (`Stepper`), and evaluation: how a split is scored (loss, BLEU, CIDEr-D), with the control and
the retrieval baselines beside the model on the test splits.

Plain functions over plain PyTorch objects (as in DETR's engine.py): the Hydra entry point
and the training loop in `captioning.training` decide what to pass in.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from captioning import distributed, interrupt
from captioning.baselines import FallbackIndex, NearestNeighbourCaptioner
from captioning.config import TrainerOptions
from captioning.data.collate import CaptionBatch
from captioning.data.splits import SplitData
from captioning.finetune import weights_digest
from captioning.io import atomic_write_json
from captioning.metrics import score_captions
from captioning.models.captioner import Captioner
from captioning.objectives import Objective, TeacherForcing, batch_loss
from captioning.precision import autocast
from captioning.progress import Mode, progress as progress_bar
from captioning.run_config import RunConfig
from captioning.run_state import TrainState


class Diverged(RuntimeError):
    """The loss or the gradient stopped being a finite number (trainer.nonfinite=stop)."""


@dataclass
class _Window:
    """The batches since the last optimizer step: how many, their summed loss and item count, summed extras."""
    batches: int = 0
    summed: float = 0.0
    n: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)

    def add(self, summed: float, n: float, extras: dict[str, float]) -> None:
        self.batches, self.summed, self.n = self.batches + 1, self.summed + summed, self.n + n
        for key, value in extras.items():
            self.extras[key] = self.extras.get(key, 0.0) + value


class Stepper:
    """Optimizer steps over batches: the objective's loss, backward, gradient clipping, the optimizer and the
    schedule; `epoch(loader, state)` trains one epoch (or what is left of it).

    Gradient clipping rescales the whole gradient when its norm exceeds `opts.grad_clip`
    (g <- g * grad_clip / ||g||), which keeps an exploding RNN step from wrecking the weights. A loss or
    gradient norm that is not finite never reaches the weights: with opts.nonfinite="stop" it raises
    Diverged naming the step, with "skip" the step is dropped and counted in `state.skipped`.

    With `opts.accumulate` = A, one optimizer step takes the gradients of A consecutive batches: each batch
    backpropagates its summed loss S_i and the step divides the sum by the window's item count N, so the step
    is the one of a single batch A times larger (the last window of an epoch may be shorter). Interruptions,
    deadlines and max_steps act between windows, so a resumed run continues exactly.

    Under DistributedDataParallel (`decoder`/`encoder` wrapped, one shard of the global batch per
    rank) the step is the single-process step on the global batch: its loss is the mean over all
    N = sum_r n_r target tokens, L = sum_r S_r / N with S_r = n_r * loss_r the rank's summed token
    losses. DDP averages gradients over the W ranks, so rank r backpropagates W * S_r, divided by N.
    """

    def __init__(self, decoder: nn.Module, encoder: nn.Module | None, optimizer: torch.optim.Optimizer, scheduler,
                 opts: TrainerOptions, device: torch.device, objective: Objective | None = None):
        self.decoder, self.encoder, self.optimizer, self.scheduler = decoder, encoder, optimizer, scheduler
        self.opts, self.device = opts, device
        self.objective = objective or TeacherForcing(device, opts.label_smoothing, opts.scheduled_sampling)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # with one batch per step its count N is known before the backward, which then takes the mean directly
        self.mean_in_backward = opts.accumulate == 1

    def epoch(self, loader: Iterable[CaptionBatch], state: TrainState, deadline: float | None = None,
              on_step: Callable[[dict], None] | None = None) -> dict:
        """Training over `loader`: the rest of epoch `state.epoch`, whose first `state.batch` batches an
        interrupted run already trained (the loader's sampler skips them). `state` is updated after every step
        (optimizer step, the epoch's batches, loss sums), so a checkpoint written at any interruption continues
        exactly. Stops early at `opts.max_steps` optimizer steps or at `deadline` (time.time()); between steps,
        raises `interrupt.Interrupted` when SIGTERM/SIGINT arrived. `on_step` gets each step's loss, gradient norm
        and learning rate."""
        opts, world = self.opts, distributed.world_size()
        self.objective.start_epoch(state.epoch)
        self.decoder.train()
        if self.encoder is not None:
            self.encoder.train()
        loss_before, tokens_before, t0 = state.loss_sum, state.tokens, time.perf_counter()
        bar = progress_bar(loader, desc=f"epoch {state.epoch}", unit="batch", mode=opts.progress, leave=False)
        window = _Window()
        self.optimizer.zero_grad(set_to_none=True)
        for batch in bar:
            if window.batches == 0 and opts.max_steps is not None and state.step >= opts.max_steps:
                break  # also right after a resume
            with autocast(self.device, opts.precision):
                loss, tokens, extras = self.objective(self.decoder, self.encoder, batch)
            summed, n, extra_sums = loss.item() * tokens, tokens, [v * tokens for v in extras.values()]
            if world > 1:  # the global batch's summed loss, item count and logged sums
                summed, n, *extra_sums = distributed.all_reduce_sum(
                    torch.tensor([summed, n, *extra_sums], dtype=torch.float64, device=self.device)).tolist()
            # also when not finite: under DDP every rank joins the all-reduce. W * S_r / N where N = n is known now
            # (`mean_in_backward`) spares the step a pass over the gradients to divide them.
            (loss * (world * tokens / (n if self.mean_in_backward else 1))).backward()
            window.add(summed, n, dict(zip(extras, extra_sums)))
            state.batch += 1
            if window.batches == opts.accumulate:
                stop = self._step(window, state, deadline, bar, on_step, (tokens_before, t0))
                window = _Window()
                if stop:
                    break
        else:
            if window.batches:  # the epoch's last, shorter window
                self._step(window, state, deadline, bar, on_step, (tokens_before, t0))
        bar.close()
        seconds, tokens = time.perf_counter() - t0, state.tokens - tokens_before
        return {"loss": (state.loss_sum - loss_before) / max(tokens, 1), "seconds": seconds,
                "tokens_per_s": tokens / max(seconds, 1e-9)}

    def _step(self, window: _Window, state: TrainState, deadline: float | None, bar, on_step, since: tuple) -> bool:
        """Scale the window's summed gradients by 1/N and step (or stop or skip), report it; True when the deadline
        says to stop (a signal raises `interrupt.Interrupted`)."""
        # g = the summed gradient times `to_mean` (1 where the backward already divided by N); the division and
        # the clipping are one multiplication, skipped when it is by 1 (clip_grad_norm_ would always make it)
        to_mean = 1.0 if self.mean_in_backward else 1.0 / window.n
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) * to_mean if grads else 0.0
        factor = to_mean * min(1.0, (self.opts.grad_clip or math.inf) / (grad_norm + 1e-6))
        if grads and factor != 1.0 and math.isfinite(factor):
            torch._foreach_mul_(grads, factor)
        where = f"step {state.step + 1} (epoch {state.epoch}, batch {state.batch})"
        loss = window.summed / window.n
        if math.isfinite(window.summed) and math.isfinite(grad_norm):
            try:
                self.optimizer.step()
            except RuntimeError as e:  # e.g. Adam's lr / (1 - beta1^t) overflowing float32 with a huge lr
                if "overflow" not in str(e):
                    raise
                raise Diverged(f"training diverged: the optimizer's update overflowed at {where} ({e})") from None
            if self.scheduler is not None:
                self.scheduler.step()
            state.step, state.loss_sum, state.tokens = state.step + 1, state.loss_sum + window.summed, \
                state.tokens + int(window.n)
            for key, value in window.extras.items():
                state.extras[key] = state.extras.get(key, 0.0) + value
        else:
            what = f"loss {loss}" if not math.isfinite(window.summed) else f"gradient norm {grad_norm}"
            if self.opts.nonfinite == "stop":
                raise Diverged(f"training diverged: non-finite {what} at {where}")
            state.skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        tokens_before, t0 = since
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{(state.tokens - tokens_before) / (time.perf_counter() - t0):.0f}")
        if on_step is not None:
            on_step({"loss": loss, "grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"]})
        return self._stop(deadline is not None and time.time() >= deadline, bar)

    def _stop(self, out_of_time: bool, bar) -> bool:
        """Whether to stop after this step: past the deadline (on any rank), or a signal arrived (raised)."""
        signalled = interrupt.received() is not None
        if distributed.world_size() > 1:  # every rank stops at the same step, or the next all-reduce waits forever
            out_of_time, signalled = (distributed.any_rank(flag, self.device) for flag in (out_of_time, signalled))
        if signalled:
            bar.close()
            raise interrupt.Interrupted(interrupt.received() or signal.SIGTERM)
        return out_of_time


@torch.no_grad()
def evaluate_loss(decoder: nn.Module, encoder: nn.Module | None, loader: Iterable[CaptionBatch], *,
                  device: torch.device, pad_id: int, precision: str = "fp32") -> float:
    """Token-level teacher-forced cross-entropy over every caption of a split (of all ranks' shards)."""
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    total, tokens = 0.0, 0
    for batch in loader:
        if distributed.world_size() == 1:  # under DDP ranks may hold one batch more or less: no early exit
            interrupt.check()
        with autocast(device, precision):
            loss, n, _ = batch_loss(decoder, encoder, batch, device, pad_id)
        total += loss.item() * n
        tokens += n
    total, tokens = distributed.all_reduce_sum(torch.tensor([total, tokens], dtype=torch.float64, device=device)).tolist()
    return total / max(tokens, 1)


def generate_captions(caption_fn: Callable[[torch.Tensor], list[str]], loader: Iterable[CaptionBatch], *,
                      progress: Mode = "auto", desc: str = "decode") -> dict[int, str]:
    """Caption every item of a one-item-per-image loader: {image_id: caption}."""
    results: dict[int, str] = {}
    for batch in progress_bar(loader, desc=desc, unit="batch", mode=progress, leave=False):
        if distributed.world_size() == 1:
            interrupt.check()
        for image_id, caption in zip(batch.image_ids.tolist(), caption_fn(batch.images)):
            results[int(image_id)] = caption
    return results


def caption_scores(results: Mapping[int, str], references: Mapping[int, list[str]]) -> dict:
    """BLEU-1..4 and CIDEr-D with the same code as captioning-eval (official COCO scorer parity)."""
    scores = score_captions(results, {i: references[i] for i in results})
    return {k: float(v) for k, v in scores.items() if k.startswith("bleu") or k == "cider"}


def score_split(model: Captioner, split: SplitData, config: RunConfig, device: torch.device, desc: str
                ) -> tuple[dict, dict[int, str]]:
    """Teacher-forced loss, BLEU-1..4 and CIDEr-D of generated captions on one split.

    Each rank evaluates its round-robin shard; the captions of all ranks are gathered, so every
    rank scores exactly the single-process set of images.
    """
    t, cached, pad_id = config.trainer, split.cached, model.vocab.pad_id
    encoder = None if cached else model.encoder

    def loader(per_image: bool):
        n = len(split.images if per_image else split.captions)
        return split.loader(per_image, t.batch_size // distributed.world_size(), t.num_workers, pad_id,
                            sampler=distributed.shard(n))

    loss = evaluate_loss(model.decoder, encoder, loader(False), device=device, pad_id=pad_id,
                         precision=t.precision)
    decode = asdict(config.decode)
    model.eval()

    def caption_fn(images: torch.Tensor) -> list[str]:
        images = images.to(device)
        with torch.no_grad():
            features = images if cached else model.encoder(images)
        return model.caption_features(features, **decode)

    results = generate_captions(caption_fn, loader(True), desc=desc,
                                progress=t.progress if distributed.is_main() else False)
    results = distributed.gather_dict(results)
    return {"loss": loss, **caption_scores(results, split.coco.references())}, results


def shuffled_control(results: dict[int, str], references: dict[int, list[str]], seed: int) -> dict:
    """BLEU when each image gets the caption generated for another image.

    Equivalent to shuffling image features across the split: if the decoder ignored the
    image, this would score as well as the real captions.
    """
    ids = sorted(results)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = {ids[i]: results[ids[j]] for i, j in enumerate(perm)}
    return caption_scores(shuffled, references)


def score_tests(model: Captioner, splits: dict[str, SplitData], features: dict, config: RunConfig,
                device: torch.device,
                out_dir: Path | None) -> dict:
    """Every test split (`test` and the dataset's extra ones): the model's captions and, beside them, what
    they would score given to the wrong images (the control) and the retrieval baselines on the same
    features (with a frozen encoder): {name: scores, name_shuffled_images, name_knn1, name_knn10 (baseline.k),
    name_fallback (the model's captions, retrieval for the images unlike training: baseline.fallback)}.
    The model's captions go to out_dir/{name}_captions.json; with the fallback, what captioning-caption needs to
    apply it to other images goes to out_dir/retrieval.pt (`FallbackIndex`)."""
    knn = None
    if config.baseline.k and features["train"] is not None:
        knn = NearestNeighbourCaptioner.of_split(splits["train"].coco, features["train"])
    q = config.baseline.fallback  # the threshold from validation's cached features, for every test split and the index
    threshold = knn.threshold(features["val"], q) if knn is not None and q is not None and splits["val"].cached else None
    metrics = {}
    for name in config.dataset.test_names:
        scores, results = score_split(model, splits[name], config, device, desc=name)
        references = splits[name].coco.references()
        metrics[name] = scores
        if config.control:
            metrics[f"{name}_shuffled_images"] = shuffled_control(results, references, config.seed)
        for k in config.baseline.k if knn is not None else []:
            captions = knn.caption_split(splits[name].coco, features[name], k)
            metrics[f"{name}_knn{k}"] = {"k": k, **caption_scores(captions, references)}
        if threshold is not None:  # the splits' cached features (not after the CNN was fine-tuned)
            hybrid = knn.caption_with_fallback(model, features[name], threshold, max(config.baseline.k),
                                               asdict(config.decode))
            metrics[f"{name}_fallback"] = {**hybrid.summary(), **caption_scores(
                dict(zip(splits[name].coco.image_ids, hybrid.captions)), references)}
        if out_dir is not None:
            atomic_write_json(out_dir / f"{name}_captions.json",
                              [{"image_id": i, "caption": c} for i, c in sorted(results.items())])
    if out_dir is not None and threshold is not None:
        FallbackIndex(knn.features, knn.captions, threshold, q, max(config.baseline.k), model.encoder.spec,
                      weights_digest(model.encoder)).save(out_dir / "retrieval.pt")
    return metrics
