"""Training the CNN: augmentation, which blocks train, the configuration's checks, and the raw-image step.

Runs that switch from cached features to fine-tuning are in test_train.py (through the CLI), test_resume.py
(interrupted and resumed across the switch) and test_distributed.py (two processes against one).
"""
from __future__ import annotations

import math
import random

import pytest
import torch
from PIL import Image
from torch import nn

from captioning.config import AugmentOptions
from captioning.data.augment import Augment, crop_box
from captioning.data.coco import load_coco_captions
from captioning.data.shapes import make_shapes_dataset
from captioning.data.splits import SplitData
from captioning.finetune import prepare_encoder
from captioning.run_config import EncoderOptions, OptimOptions
from captioning.io import InputError
from captioning.models import build_encoder
from captioning.models.encoder import ImageTransform
from captioning.text import Vocabulary


@pytest.mark.parametrize("seed", range(20))
def test_crops_stay_inside_the_image_with_the_asked_area_and_ratio(seed):
    rng = random.Random(seed)
    width, height = rng.randint(20, 400), rng.randint(20, 400)
    low = rng.uniform(0.3, 1.0)
    scale, ratio = (low, rng.uniform(low, 1.0)), (0.75, 4 / 3)
    for _ in range(50):
        left, top, right, bottom = crop_box(width, height, scale, ratio, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        if (w, h) != (width, height):  # not the fallback: rounding aside, the asked area and ratio
            assert scale[0] - 0.1 <= w * h / (width * height) <= scale[1] + 0.1
            assert ratio[0] - 0.1 <= w / h <= ratio[1] + 0.1


def test_a_crop_that_cannot_fit_falls_back_to_the_whole_image():
    assert crop_box(100, 2, (0.9, 1.0), (0.75, 4 / 3), random.Random(0)) == (0, 0, 100, 2)


def left_red_image() -> Image.Image:
    image = Image.new("RGB", (40, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 40))  # red left half
    return image


def test_no_mirror_by_default_and_about_half_when_asked():
    image = left_red_image()
    assert not AugmentOptions().hflip
    unchanged = Augment(AugmentOptions(crop_scale=None))
    assert all(unchanged(image, random.Random(i)).tobytes() == image.tobytes() for i in range(20))
    mirror = Augment(AugmentOptions(crop_scale=None, hflip=True))
    flipped = sum(mirror(image, random.Random(i)).getpixel((0, 0)) == (0, 0, 255) for i in range(200))
    assert 70 < flipped < 130


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=6, n_val=2, n_test=2, seed=0, image_size=48, demo_images=0)
    return load_coco_captions(root / "captions_train.json", root / "images" / "train")


def augmented_split(coco, seed: int = 0) -> SplitData:
    vocab = Vocabulary(["a"])
    return SplitData(coco, vocab, None, ImageTransform(32), max_len=8, augment=Augment(AugmentOptions()), seed=seed)


def test_augmentations_follow_seed_epoch_and_item_not_workers(shapes):
    split = augmented_split(shapes)
    first = [split.captions[i][0] for i in range(4)]
    assert all(torch.equal(a, split.captions[i][0]) for i, a in enumerate(first))  # the same item, the same crop
    assert not torch.equal(first[0], first[1])
    split.set_epoch(1)
    assert not any(torch.equal(a, split.captions[i][0]) for i, a in enumerate(first))  # a new epoch, new crops
    assert not torch.equal(augmented_split(shapes, seed=1).captions[0][0], first[0])
    split.set_epoch(0)
    in_workers = next(iter(split.loader(False, 4, 2, 0, sampler=range(4)))).images
    assert all(any(torch.equal(row, a) for row in in_workers) for a in first)  # workers draw the same crops


def test_cached_features_and_evaluation_are_never_augmented(shapes):
    vocab = Vocabulary(["a"])
    cached = SplitData(shapes, vocab, torch.randn(len(shapes), 5), None, 8, augment=Augment(AugmentOptions()))
    assert cached.cached and cached.captions.augment is None and cached.images.augment is None
    plain = SplitData(shapes, vocab, None, ImageTransform(32), 8)
    assert not plain.cached and torch.equal(plain.captions[0][0], plain.captions[0][0])
    assert plain.captions.augment is None


def test_the_last_blocks_train_and_batch_norm_keeps_its_statistics():
    encoder = build_encoder("small_cnn")
    blocks = encoder.blocks()
    assert len(blocks) == 4 and not encoder.trainable
    encoder.finetune(2)
    trained = {id(p) for b in blocks[2:] for p in b.parameters()}
    assert all(p.requires_grad == (id(p) in trained) for p in encoder.parameters())
    nn.ModuleList([encoder]).train()
    assert encoder.training and blocks[3][0].training and not blocks[0][0].training
    assert not any(m.training for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # running statistics kept
    assert all((p.grad is not None) == p.requires_grad for p in encoder.parameters())
    with pytest.raises(InputError, match="finetune_blocks must be between 1 and 4"):
        encoder.finetune(5)
    encoder.freeze()
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())


def test_efficientnet_blocks_are_stem_mbconv_and_head():
    encoder = build_encoder("efficientnet_lite0", pretrained=False)
    blocks = encoder.blocks()
    assert len(blocks) == 18
    assert blocks[-1][0] is encoder.trunk.net._conv_head and blocks[0][0] is encoder.trunk.net._conv_stem
    encoder.finetune(1)
    assert {n for n, p in encoder.named_parameters() if p.requires_grad} == {
        "trunk.net._conv_head.weight", "trunk.net._bn1.weight", "trunk.net._bn1.bias"}


@pytest.mark.parametrize("options, message", [
    ({"finetune_from_epoch": 0}, "finetune_from_epoch must be an epoch number (1 or more) or null, got 0"),
    ({"finetune_from_epoch": 3, "trainable": True}, "encoder.trainable=true already trains the CNN"),
    ({"finetune_blocks": 2}, "encoder.finetune_blocks=2 needs a trained CNN"),
])
def test_training_options_that_cannot_work_are_named(options, message):
    problems = EncoderOptions(**options).problems()
    assert len(problems) == 1 and message in problems[0]


def test_prepare_encoder_checks_the_blocks_now_and_freezes_until_the_epoch():
    encoder = build_encoder("small_cnn", trainable=True)
    prepare_encoder(encoder, EncoderOptions(finetune_from_epoch=2, finetune_blocks=1))
    assert not encoder.trainable and not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(InputError, match="between 1 and 4"):
        prepare_encoder(build_encoder("small_cnn", trainable=True), EncoderOptions(finetune_from_epoch=2,
                                                                                 finetune_blocks=9))
    trainable = build_encoder("small_cnn", trainable=True)
    prepare_encoder(trainable, EncoderOptions(trainable=True, finetune_blocks=1))
    assert sum(p.requires_grad for p in trainable.parameters()) == 4  # the last conv and batch norm


def test_augment_options_are_checked():
    assert AugmentOptions().problems() == []
    problems = AugmentOptions(crop_scale=[0.9, 0.5], crop_ratio=[2.0, 1.0]).problems()
    assert len(problems) == 2 and "crop_scale" in problems[0] and "crop_ratio" in problems[1]
    assert math.isclose(AugmentOptions().crop_ratio[1], 4 / 3, rel_tol=1e-4)


def test_learning_rates_are_checked():
    assert OptimOptions().problems() == []
    assert OptimOptions(encoder_lr=0).problems() == ["optim.encoder_lr must be a positive number or null, got 0"]
    assert OptimOptions(optimizer={"lr": -1}).problems() == ["optim.optimizer.lr must be a positive number, got -1"]
