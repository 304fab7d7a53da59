"""Retrieval baselines (Devlin et al. 2015, "Exploring Nearest Neighbor Approaches for Image Captioning"):
caption an image with a caption of the training images whose features are most like its own.

* k = 1 copies the nearest training image's (first) caption;
* consensus over k neighbours gathers the captions of the k nearest training images and returns the one
  with the highest mean CIDEr-D against the others (document frequencies from the training references),
  the caption the neighbourhood agrees on most.

Similarity is the cosine of the encoder's pooled features, the same features the captioner's decoder
reads: one (Q, D) x (D, N) matrix product per chunk of queries, so thousands of images take seconds. A
model that does not beat this has learned little more than a lookup.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from captioning.data.coco import CocoCaptions
from captioning.data.features import pooled
from captioning.metrics.cider import CiderD
from captioning.text import joined_tokens


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (Q, k) of the k gallery rows most cosine-similar to each query row, most similar first."""
    gallery = F.normalize(gallery.float(), dim=1)
    out = []
    for start in range(0, len(queries), chunk):
        sims = F.normalize(queries[start:start + chunk].float(), dim=1) @ gallery.T  # (q, N)
        out.append(sims.topk(min(k, len(gallery)), dim=1).indices)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long)


class NearestNeighbourCaptioner:
    """k-NN captioning over a training split's features (N, D) and captions (N lists of raw strings)."""

    def __init__(self, features: torch.Tensor, captions: Sequence[Sequence[str]]):
        if len(features) != len(captions) or not len(captions):
            raise ValueError(f"{len(features)} feature rows for {len(captions)} captioned images")
        self.features, self.captions = features, [list(c) for c in captions]
        self.tokenized = [[joined_tokens(c) for c in caps] for caps in self.captions]
        self.cider = CiderD(self.tokenized)

    @classmethod
    def of_split(cls, coco: CocoCaptions, features) -> "NearestNeighbourCaptioner":
        """Over a split (the training one): its features as the cache holds them, pooled vectors or an attention
        encoder's grids (compared by their mean, the pooled feature), and its images' captions."""
        return cls(pooled(features), [coco.captions[i] for i in coco.image_ids])

    def caption_split(self, coco: CocoCaptions, features, k: int) -> dict[int, str]:
        """{image_id: caption} for every image of a split, from its cached features (as in `of_split`)."""
        return dict(zip(coco.image_ids, self.caption(pooled(features), k=k)))

    def caption(self, features: torch.Tensor, k: int = 1) -> list[str]:
        """k = 1: the nearest image's first caption; k > 1: the consensus caption of the k nearest images."""
        neighbours = nearest(features, self.features, k).tolist()
        if k == 1:
            return [self.captions[row[0]][0] for row in neighbours]
        out = []
        for row in neighbours:
            raw = [c for i in row for c in self.captions[i]]
            scores = self.cider.consensus([c for i in row for c in self.tokenized[i]])
            out.append(raw[int(scores.argmax())])
        return out
