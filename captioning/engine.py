"""One epoch of teacher-forced training, and evaluation (loss + BLEU) on a split.

Plain functions over plain PyTorch objects (as in DETR's engine.py): the Hydra entry point
and the training loop in `captioning.training` decide what to pass in.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from captioning import distributed
from captioning.data.collate import CaptionBatch
from captioning.metrics import score_captions
from captioning.models.decoder import caption_loss
from captioning.precision import autocast
from captioning.progress import Mode, progress as progress_bar


def batch_loss(decoder: nn.Module, encoder: nn.Module | None, batch: CaptionBatch, device: torch.device,
               pad_id: int, label_smoothing: float = 0.0) -> tuple[torch.Tensor, int]:
    """Mean token cross-entropy of a batch and its number of (non-pad) target tokens.

    `encoder=None` means `batch.images` already holds cached features (B, D).
    """
    images = batch.images.to(device, non_blocking=True)
    captions = batch.captions.to(device, non_blocking=True)  # (B, T)
    features = images if encoder is None else encoder(images)  # (B, D)
    logits = decoder(features, captions)  # (B, T-1, V)
    targets = captions[:, 1:]
    loss = caption_loss(logits, targets, pad_id, label_smoothing)
    return loss, int((targets != pad_id).sum())


def train_one_epoch(decoder: nn.Module, encoder: nn.Module | None, loader: Iterable[CaptionBatch],
                    optimizer: torch.optim.Optimizer, scheduler, *, device: torch.device, pad_id: int,
                    grad_clip: float | None = 5.0, label_smoothing: float = 0.0, precision: str = "fp32",
                    max_steps: int | None = None, deadline: float | None = None, progress: Mode = "auto",
                    desc: str = "train", on_step: Callable[[dict], None] | None = None) -> dict:
    """Teacher-forced training over `loader`; stops early at `max_steps` (global) or `deadline` (time.time()).

    Gradient clipping rescales the whole gradient when its norm exceeds `grad_clip`
    (g <- g * grad_clip / ||g||), which keeps an exploding RNN step from wrecking the weights.

    Under DistributedDataParallel (`decoder`/`encoder` wrapped, one shard of the global batch per
    rank) the step is the single-process step on the global batch: its loss is the mean over all
    N = sum_r n_r target tokens, L = sum_r S_r / N with S_r = n_r * loss_r the rank's summed token
    losses. DDP averages gradients over the W ranks, so rank r backpropagates W * S_r / N.
    """
    decoder.train()
    if encoder is not None:
        encoder.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    world = distributed.world_size()
    total_loss, total_tokens, t0 = 0.0, 0, time.perf_counter()
    bar = progress_bar(loader, desc=desc, unit="batch", mode=progress, leave=False)
    for batch in bar:
        with autocast(device, precision):
            loss, tokens = batch_loss(decoder, encoder, batch, device, pad_id, label_smoothing)
        summed, n = loss.item() * tokens, tokens
        if world > 1:  # the global batch's summed loss and token count
            summed, n = distributed.all_reduce_sum(torch.tensor([summed, n], dtype=torch.float64, device=device)).tolist()
            loss = loss * (world * tokens / n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += summed
        total_tokens += int(n)
        tok_per_s = total_tokens / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{summed / n:.3f}", tok_s=f"{tok_per_s:.0f}")
        if on_step is not None:
            on_step({"loss": summed / n, "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"]})
        if (max_steps is not None and scheduler is not None and scheduler.last_epoch >= max_steps) or \
                (deadline is not None and distributed.any_rank(time.time() >= deadline, device)):
            break
    bar.close()
    seconds = time.perf_counter() - t0
    return {"loss": total_loss / max(total_tokens, 1), "tokens_per_s": total_tokens / max(seconds, 1e-9),
            "seconds": seconds}


@torch.no_grad()
def evaluate_loss(decoder: nn.Module, encoder: nn.Module | None, loader: Iterable[CaptionBatch], *,
                  device: torch.device, pad_id: int, precision: str = "fp32") -> float:
    """Token-level teacher-forced cross-entropy over every caption of a split (of all ranks' shards)."""
    decoder.eval()
    if encoder is not None:
        encoder.eval()
    total, tokens = 0.0, 0
    for batch in loader:
        with autocast(device, precision):
            loss, n = batch_loss(decoder, encoder, batch, device, pad_id)
        total += loss.item() * n
        tokens += n
    total, tokens = distributed.all_reduce_sum(torch.tensor([total, tokens], dtype=torch.float64, device=device)).tolist()
    return total / max(tokens, 1)


def generate_captions(caption_fn: Callable[[torch.Tensor], list[str]], loader: Iterable[CaptionBatch], *,
                      progress: Mode = "auto", desc: str = "decode") -> dict[int, str]:
    """Caption every item of a one-item-per-image loader: {image_id: caption}."""
    results: dict[int, str] = {}
    for batch in progress_bar(loader, desc=desc, unit="batch", mode=progress, leave=False):
        for image_id, caption in zip(batch.image_ids.tolist(), caption_fn(batch.images)):
            results[int(image_id)] = caption
    return results


def bleu_scores(results: Mapping[int, str], references: Mapping[int, list[str]]) -> dict:
    """BLEU-1..4 with the same code as captioning-eval (official COCO scorer parity)."""
    scores = score_captions(results, {i: references[i] for i in results})
    return {k: float(v) for k, v in scores.items() if k.startswith("bleu")}
