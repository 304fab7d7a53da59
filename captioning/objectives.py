"""What a training step minimises. Every objective has one interface, so the step loop (`captioning.engine.Stepper`)
asks the objective instead of testing decoder classes:

    objective(decoder, encoder, batch) -> (loss, n, extras)

the mean loss over n items (target tokens, sampled captions) and further per-item means to log (the attention
penalty, SCST's reward); `per_image` says whether it trains on one item per image (SCST: the image's references are
the reward's) or one per caption; `start_epoch(epoch)` lets it follow a schedule; `summary(row)` is what the epoch's
line adds. The objectives: `TeacherForcing` (with scheduled sampling and label smoothing) here, and
`captioning.scst.SCSTObjective`.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from captioning.config import ScheduledSamplingOptions
from captioning.data.collate import CaptionBatch
from captioning.models.decoder import caption_loss
from captioning.text import Vocabulary


class Objective(Protocol):
    per_image: bool

    def start_epoch(self, epoch: int) -> None: ...

    def __call__(self, decoder: nn.Module, encoder: nn.Module | None, batch: CaptionBatch
                 ) -> tuple[Tensor, int, dict[str, float]]: ...

    def summary(self, row: dict) -> str: ...


def batch_loss(decoder: nn.Module, encoder: nn.Module | None, batch: CaptionBatch, device: torch.device,
               pad_id: int = Vocabulary.pad_id, label_smoothing: float = 0.0, sampling_prob: float = 0.0
               ) -> tuple[Tensor, int, dict[str, Tensor]]:
    """Mean token cross-entropy of a batch (plus, in training mode, the decoder's extra terms), its number of
    (non-pad) target tokens, and those extra terms.

    `encoder=None` means `batch.images` already holds cached features (B, D). `sampling_prob`: scheduled
    sampling's probability of feeding the model's own word instead of the reference.
    """
    images = batch.images.to(device, non_blocking=True)
    captions = batch.captions.to(device, non_blocking=True)  # (B, T)
    features = images if encoder is None else encoder(images)  # (B, D)
    logits, terms = decoder(features, captions, sampling_prob)  # (B, T-1, V)
    targets = captions[:, 1:]
    loss = caption_loss(logits, targets, pad_id, label_smoothing)
    if decoder.training:  # the doubly stochastic attention penalty is the attention decoder's term
        loss = loss + sum(terms.values())
    return loss, int((targets != pad_id).sum()), terms


class TeacherForcing:
    """Cross-entropy of each reference word given the reference words before it, -1/N sum_t log p(w_t | w_<t, v)
    over the batch's N target tokens, plus the decoder's extra terms (logged apart as well). With label smoothing
    eps the target is (1 - eps) on the reference word and eps / V on every word; with scheduled sampling, from its
    start epoch on, each input word may be the model's own sample (`ScheduledSamplingOptions.prob`)."""

    per_image = False

    def __init__(self, device: torch.device, label_smoothing: float = 0.0,
                 scheduled_sampling: ScheduledSamplingOptions | None = None, pad_id: int = Vocabulary.pad_id):
        self.device, self.label_smoothing, self.pad_id = device, label_smoothing, pad_id
        self.scheduled_sampling = scheduled_sampling or ScheduledSamplingOptions()
        self.sampling_prob = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.sampling_prob = self.scheduled_sampling.prob(epoch)

    def __call__(self, decoder: nn.Module, encoder: nn.Module | None, batch: CaptionBatch
                 ) -> tuple[Tensor, int, dict[str, float]]:
        loss, n, terms = batch_loss(decoder, encoder, batch, self.device, self.pad_id, self.label_smoothing,
                                    self.sampling_prob)
        return loss, n, {k: v.item() for k, v in terms.items()}

    def summary(self, row: dict) -> str:
        return ""
