"""PyTorch datasets over a `CocoCaptions` split.

Training sees every (image, caption) pair; evaluation (`per_image=True`) sees each image once,
because a generated caption is scored against all of that image's references at the same time.
With a frozen encoder, `features` replaces the image: row i is the pooled CNN feature of
`coco.image_ids[i]`, so an epoch costs no convolutions at all. While the CNN is trained, training images
can be augmented (`augment`, captioning/data/augment.py), differently in every epoch (`set_epoch`).
"""
from __future__ import annotations

import os
import random
from array import array
from typing import Callable, Collection

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from captioning.data.augment import Augment
from captioning.data.coco import CocoCaptions
from captioning.data.images import open_image, to_tensor
from captioning.io import InputError
from captioning.text import Vocabulary

Transform = Callable[[Image.Image], torch.Tensor]


def load_image(path: str | os.PathLike, transform: Transform | None = None) -> torch.Tensor:
    """`open_image` then `transform` (default: a float tensor in [0, 1], (3, H, W)); ImageError names the file."""
    return (transform or to_tensor)(open_image(path))


class CaptionDataset(Dataset):
    """Items `(image (3, H, W), feature (D,) or grid (L, D), caption ids (T,), image id)`. A grid cache is a
    float16 memory map: each item reads its row from disk and becomes float32.

    caption ids = [BOS] + tokenize(caption)[:max_len] + [EOS]. Captions are tokenized and encoded once here,
    not in every epoch's workers, into one flat tensor of token ids with each item's row and offsets: COCO's
    616,767 captions as separate tensors would be 616,767 Python objects (measured: `captioning-bench scale`).
    """

    def __init__(self, coco: CocoCaptions, vocab: Vocabulary, features: torch.Tensor | np.ndarray | None = None,
                 transform: Transform | None = None, per_image: bool = False, max_len: int | None = None,
                 augment: Augment | None = None, seed: int = 0, image_ids: Collection[int] | None = None):
        if features is not None and len(features) != len(coco.image_ids):
            raise InputError(f"features for {coco.path} have {len(features)} rows but the split has "
                             f"{len(coco.image_ids)} images")
        self.coco, self.vocab, self.features, self.transform = coco, vocab, features, transform
        self.per_image, self.max_len = per_image, max_len
        self.augment, self.seed, self.epoch = augment, seed, 0
        # item k: image row rows[k] in coco.image_ids, caption ids[starts[k]:starts[k + 1]]; per_image keeps only
        # each image's first caption; `image_ids` (None: all) keeps only those images' items
        rows, ids, lengths = array("q"), array("q"), array("q")  # 8 bytes an entry, not a Python int each
        for row, image_id in enumerate(coco.image_ids):
            if image_ids is not None and image_id not in image_ids:
                continue
            for caption in coco.captions[image_id][:1] if per_image else coco.captions[image_id]:
                encoded = vocab.encode_caption(caption, max_len)
                rows.append(row)
                ids.extend(encoded)
                lengths.append(len(encoded))
        self.rows = np.frombuffer(rows, dtype=np.int64).copy()
        self.starts = np.concatenate([[0], np.cumsum(np.frombuffer(lengths, dtype=np.int64))])
        self.ids = torch.from_numpy(np.frombuffer(ids, dtype=np.int64).copy())

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next pass draws (set before the DataLoader's iterator starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row, caption = int(self.rows[i]), self.ids[int(self.starts[i]):int(self.starts[i + 1])]  # (T,), a view
        image_id = self.coco.image_ids[row]
        if isinstance(self.features, np.ndarray):
            image = torch.from_numpy(np.asarray(self.features[row], dtype=np.float32))  # (L, D) from disk
        elif self.features is not None:
            image = self.features[row]                                    # (D,)
        else:
            image = open_image(self.coco.image_path(image_id))
            if self.augment is not None:  # its own generator: the same crops after a resume, in any worker
                image = self.augment(image, random.Random(f"{self.seed}/{self.epoch}/{i}"))
            image = (self.transform or to_tensor)(image)                  # (3, H, W)
        return image, caption, image_id
