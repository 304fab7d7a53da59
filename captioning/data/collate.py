"""Batching variable-length captions: pad to the longest, sort longest first.

Sorting by length (descending) is what `torch.nn.utils.rnn.pack_padded_sequence` wants with
`enforce_sorted=True`: the recurrent layers then skip the padded steps entirely.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch


class CaptionBatch(NamedTuple):
    images: torch.Tensor     # (B, 3, H, W) images or (B, D) cached features
    captions: torch.Tensor   # (B, T) long, BOS ... EOS then pad_id
    lengths: torch.Tensor    # (B,) long, tokens per caption including BOS and EOS
    image_ids: torch.Tensor  # (B,) long


def collate_captions(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]], pad_id: int = 0) -> CaptionBatch:
    """Stack dataset items `(image, caption_ids, image_id)` into a padded, length-sorted batch."""
    order = sorted(range(len(batch)), key=lambda i: -len(batch[i][1]))  # stable: ties keep input order
    batch = [batch[i] for i in order]
    lengths = torch.tensor([len(c) for _, c, _ in batch], dtype=torch.long)  # (B,)
    captions = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long)  # (B, T)
    for row, (_, caption, _) in enumerate(batch):
        captions[row, :len(caption)] = caption
    images = torch.stack([image for image, _, _ in batch])  # (B, ...)
    image_ids = torch.tensor([image_id for _, _, image_id in batch], dtype=torch.long)  # (B,)
    return CaptionBatch(images, captions, lengths, image_ids)
