"""The three splits of a training run: read and checked before any long work starts, then wrapped as
datasets over the vocabulary and (with a frozen encoder) the cached features."""
from __future__ import annotations

import random

import torch
from torch.utils.data import DataLoader

from captioning.data.augment import Augment
from captioning.data.coco import CocoCaptions, id_list, load_coco_captions
from captioning.data.collate import collate_captions
from captioning.data.datasets import CaptionDataset
from captioning.data.images import check_image_files
from captioning.io import InputError
from captioning.run_config import DatasetOptions
from captioning.text import Vocabulary

def load_splits(dataset: DatasetOptions) -> dict[str, CocoCaptions]:
    """The annotations of `dataset.{train,val,test}` and `dataset.extra_tests.*`; InputError for a split
    without a captioned image."""
    cocos = {s: load_coco_captions(files.annotations, files.images, check_images=False)
             for s, files in dataset.splits.items()}
    for split, coco in cocos.items():
        if len(coco) == 0:
            use = "train on" if split == "train" else "score"
            raise InputError(f"the {split} split ({coco.path}) has no captioned images: nothing to {use}")
    return cocos


def check_images(coco: CocoCaptions) -> None:
    """InputError listing every image of the split that is missing, empty, not an image or too large
    (headers only: seconds for thousands of files), so a bad file fails the run before the first epoch."""
    coco.require_images_dir()
    problems = check_image_files(coco.image_path(i) for i in coco.image_ids)
    if problems:
        raise InputError(f"annotations file {coco.path}: {len(problems)} of {len(coco)} images in {coco.images_dir} "
                         f"cannot be used: {id_list(problems)}")


def stage_images(train: CocoCaptions, holdout: float, scst: bool) -> set[int] | None:
    """The training images a stage trains on when `scst.holdout` sets a share of them aside for SCST (None: all).

    SCST rewards what the model says about an image. On images cross-entropy has fitted, the model already
    says their references, and the reward only teaches which reference scores more; on images it has not seen it
    teaches what carries to new ones. So with holdout h the cross-entropy stage trains on the other images and
    SCST on round(h N) of the N training images, the same ones in both stages (a fixed shuffle of the sorted
    ids, whatever the seed). The vocabulary, the reward's n-gram statistics and the retrieval baselines use all."""
    if not holdout:
        return None
    ids = sorted(train.image_ids)
    n = round(holdout * len(ids))
    if not 0 < n < len(ids):
        raise InputError(f"scst.holdout={holdout} sets aside {n} of the {len(ids)} training images of {train.path}: "
                         f"choose a share that leaves images to both stages")
    random.Random(0).shuffle(ids)
    held = set(ids[:n])
    return held if scst else set(ids) - held


class SplitData:
    """One split's annotations with its datasets: all captions (loss) and one item per image (BLEU); their
    items are cached features (`cached`) or images read through `transform` (augmented first, with `augment`);
    `image_ids` (None: all) keeps only those images (the training split under `scst.holdout`)."""

    def __init__(self, coco: CocoCaptions, vocab: Vocabulary, features: torch.Tensor | None, transform,
                 max_len: int, augment: Augment | None = None, seed: int = 0, image_ids: set[int] | None = None):
        self.coco, self.cached = coco, features is not None
        kw = dict(features=features, transform=None if self.cached else transform, max_len=max_len,
                  augment=None if self.cached else augment, seed=seed, image_ids=image_ids)
        self.captions = CaptionDataset(coco, vocab, **kw)
        self.images = CaptionDataset(coco, vocab, per_image=True, **kw)

    def set_epoch(self, epoch: int) -> None:
        self.captions.set_epoch(epoch)
        self.images.set_epoch(epoch)

    def loader(self, per_image: bool, batch_size: int, num_workers: int, pad_id: int,
               sampler=None) -> DataLoader:
        # Its own generator: creating the loader's iterator must not draw from the global RNG, which
        # drives dropout (a resumed epoch's masks would shift by one draw).
        return DataLoader(self.images if per_image else self.captions, batch_size=batch_size,
                          sampler=sampler, num_workers=num_workers, generator=torch.Generator(),
                          collate_fn=lambda b: collate_captions(b, pad_id=pad_id))
