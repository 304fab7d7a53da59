"""Training-time augmentation of raw images (`dataset.augment`): a random resized crop and an optional mirror.

The crop is torchvision's RandomResizedCrop (Szegedy et al. 2015, "Going deeper with convolutions"): an area
s * W * H with s ~ U(crop_scale) and an aspect ratio r with log r ~ U(log crop_ratio), placed uniformly; the
encoder's transform then resizes it to its square input. Each item draws from its own generator, seeded by
(seed, epoch, item), so an epoch's crops are the same after a resume and for any number of workers or ranks,
and nothing here touches the global random state that drives dropout.
"""
from __future__ import annotations

import math
import random

from PIL import Image

from captioning.config import AugmentOptions


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop; the whole image when ten draws do not fit (as torchvision)."""
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height


class Augment:
    """PIL image, generator -> augmented PIL image (see the module docstring)."""

    def __init__(self, options: AugmentOptions):
        self.options = options

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        scale = self.options.crop_scale
        if scale is not None:
            image = image.crop(crop_box(*image.size, tuple(scale), tuple(self.options.crop_ratio), rng))
        if self.options.hflip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return image
