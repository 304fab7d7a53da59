"""Retrieval baselines (Devlin et al. 2015, "Exploring Nearest Neighbor Approaches for Image Captioning"):
caption an image with a caption of the training images whose features are most like its own.

* k = 1 copies the nearest training image's (first) caption;
* consensus over k neighbours gathers the captions of the k nearest training images and returns the one
  with the highest mean CIDEr-D against the others (document frequencies from the training references),
  the caption the neighbourhood agrees on most;
* the fallback hybrid keeps a captioner's caption where the image is as like the training images as the
  validation images are, and elsewhere takes the consensus of a pool, the captioner's beams and the k
  neighbours' captions: an image unlike anything the decoder was trained on (a new drawing style) is one whose
  caption the decoder cannot be trusted with, while its nearest training images may still be its twins.

Similarity is the cosine of the encoder's pooled features, the same features the captioner's decoder
reads: one (Q, D) x (D, N) matrix product per chunk of queries, so thousands of images take seconds. A
model that does not beat this has learned little more than a lookup.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from captioning.checkpoint import load_plain
from captioning.data.coco import CocoCaptions
from captioning.data.features import pooled
from captioning.io import InputError, atomic_path, existing_file
from captioning.metrics.cider import CiderD
from captioning.text import joined_tokens


def most_similar(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices (Q, k) of the k gallery rows most similar to each query row, most
    similar first."""
    gallery, k = F.normalize(gallery.float(), dim=1), min(k, len(gallery))
    sims, idx = [torch.empty(0, k)], [torch.empty(0, k, dtype=torch.long)]
    for start in range(0, len(queries), chunk):
        top = (F.normalize(queries[start:start + chunk].float(), dim=1) @ gallery.T).topk(k, 1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (Q, k) of the k gallery rows most cosine-similar to each query row, most similar first."""
    return most_similar(queries, gallery, k, chunk)[1]


class FallbackCaptions(NamedTuple):
    """The fallback hybrid's captions, the captioner's own (its best beam), the familiarity threshold, and which
    images fell back to retrieval ((Q,) bool)."""
    captions: list[str]
    model: list[str]
    threshold: float
    fell_back: torch.Tensor

    def summary(self) -> dict:
        return {"threshold": self.threshold, "fell_back": int(self.fell_back.sum()), "images": len(self.fell_back)}


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

    def familiarity(self, features: torch.Tensor) -> torch.Tensor:
        """(Q,): each image's cosine similarity to its nearest training image."""
        return most_similar(features, self.features, 1)[0][:, 0]

    def threshold(self, val_features, quantile: float) -> float:
        """The familiarity below which `quantile` of the validation images fall (their cached features)."""
        return float(torch.quantile(self.familiarity(pooled(val_features)), quantile))

    def fallback(self, features: torch.Tensor, model_captions: Sequence[Sequence[str]], threshold: float,
                 k: int = 10) -> tuple[list[str], torch.Tensor]:
        """The fallback hybrid: per image, its first model caption where `familiarity` >= `threshold`; elsewhere
        the caption of the pool (its model captions, then its k nearest images' captions) with the highest mean
        CIDEr-D against those neighbours' captions (one copy of itself left out). Returns the captions and which
        images fell back (Q,) bool."""
        similarity, neighbours = most_similar(features, self.features, k)
        fell_back = similarity[:, 0] < threshold
        out = []
        for own, row, back in zip(model_captions, neighbours.tolist(), fell_back.tolist()):
            if not back:
                out.append(own[0])
                continue
            pool = list(own) + [c for i in row for c in self.captions[i]]
            references = [c for i in row for c in self.tokenized[i]]
            vectors = [self.cider.vector(r) for r in references]
            support = []
            for caption in map(joined_tokens, pool):
                others = list(vectors)
                if caption in references:
                    del others[references.index(caption)]
                support.append(self.cider.image_score(caption, others or vectors))
            out.append(pool[max(range(len(pool)), key=support.__getitem__)])
        return out, fell_back

    def caption_with_fallback(self, captioner, features, threshold: float, k: int, decode: dict) -> FallbackCaptions:
        """`fallback` for a captioner (its `decode` options, all its beams in the pool) on a split's cached
        features (pooled, or an attention encoder's grids), with a familiarity threshold (`threshold`)."""
        beams = decode["beam_size"] if decode.get("method", "beam") == "beam" else 1
        own = []
        for start in range(0, len(features), 256):
            chunk = torch.as_tensor(np.asarray(features[start:start + 256], dtype=np.float32))  # a grid: a memmap
            rows = captioner.describe_features(chunk, **{**decode, "num_return": beams})
            own += [row.get("captions", [row["caption"]]) for row in rows]
        captions, fell_back = self.fallback(pooled(features), own, threshold, k)
        return FallbackCaptions(captions, [c[0] for c in own], threshold, fell_back)


@dataclass
class FallbackIndex:
    """What the fallback needs besides the captioner, written by a training run as retrieval.pt so that
    captioning-caption applies it to new images: the training images' pooled features (float32, 4 bytes x D per
    image) and captions, the familiarity threshold and the k of its neighbourhood, and the spec and a digest of the
    weights of the encoder that made the features (only a captioner with that encoder may use them)."""
    features: torch.Tensor
    captions: list[list[str]]
    threshold: float
    quantile: float
    k: int
    encoder: dict
    encoder_weights: str  # captioning.finetune.weights_digest

    @property
    def knn(self) -> NearestNeighbourCaptioner:
        return NearestNeighbourCaptioner(self.features, self.captions)

    def save(self, path: str | Path) -> None:
        with atomic_path(Path(path)) as tmp:
            torch.save({"retrieval_index": 1, **asdict(self)}, tmp)

    @classmethod
    def load(cls, path: str | Path) -> "FallbackIndex":
        """InputError naming the file where it is missing or not a retrieval.pt of this project."""
        path = existing_file(path, "retrieval index")
        payload = load_plain(path, "a retrieval index (a training run's retrieval.pt)")
        if not isinstance(payload, dict) or payload.pop("retrieval_index", None) != 1 or \
                payload.keys() != cls.__dataclass_fields__.keys():
            raise InputError(f"{path} is not a retrieval index of this version (a training run's retrieval.pt)")
        return cls(**payload)
