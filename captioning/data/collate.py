"""Batching variable-length captions: pad each to the longest of the batch, in the order the sampler gave.

Nothing packs sequences (`pack_padded_sequence`): the recurrent layers run over the padded steps too, and the
loss leaves them out (targets equal to pad_id are ignored), so the batch needs neither a sort nor the lengths.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class CaptionBatch(NamedTuple):
    images: torch.Tensor     # (B, 3, H, W) images or (B, D) cached features
    captions: torch.Tensor   # (B, T) long, BOS ... EOS then pad_id
    image_ids: torch.Tensor  # (B,) long


def collate_captions(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]], pad_id: int = 0) -> CaptionBatch:
    """Stack dataset items `(image, caption_ids, image_id)` into a padded batch, in their order."""
    captions = torch.full((len(batch), max(len(c) for _, c, _ in batch)), pad_id, dtype=torch.long)  # (B, T)
    for row, (_, caption, _) in enumerate(batch):
        captions[row, :len(caption)] = caption
    images = torch.stack([image for image, _, _ in batch])  # (B, ...)
    image_ids = torch.tensor([image_id for _, _, image_id in batch], dtype=torch.long)  # (B,)
    return CaptionBatch(images, captions, image_ids)
