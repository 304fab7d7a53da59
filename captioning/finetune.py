"""Training the CNN: end to end from the first epoch, or from a later one (neuraltalk2's finetune_cnn_after).

`encoder.trainable: true` trains the encoder from epoch 1 on images. `encoder.finetune_from_epoch: N` trains
the decoder alone on cached features until epoch N (no convolutions: the cheap part of the run, and the
features are the frozen runs' cache), then from epoch N sends the images through the encoder and trains it
too. Either way `encoder.finetune_blocks: K` trains only the trunk's last K blocks (`Encoder.blocks()`), the
CNN learns with `optim.encoder_lr` (optim.param_groups), and training images are augmented
(`dataset.augment`); validation and test images never are.

The switch holds across resumes and ranks: a run resumed at or after epoch N switches before its first epoch
(the checkpoint holds the encoder's weights and its optimizer moments), and under torchrun every rank
switches at the same epoch and wraps the encoder in DistributedDataParallel then, once its parameters
require gradients.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from captioning.data.augment import Augment
from captioning.data.coco import CocoCaptions
from captioning.data.splits import SplitData
from captioning.models.encoder import Encoder
from captioning.run_config import EncoderOptions, RunConfig
from captioning.text import Vocabulary


def prepare_encoder(encoder: Encoder, options: EncoderOptions) -> None:
    """The encoder as the first epoch trains it: its last finetune_blocks blocks (checked against the CNN now,
    not at epoch N), or frozen until finetune_from_epoch."""
    if options.trains:
        encoder.finetune(options.finetune_blocks)
    if options.finetune_from_epoch is not None:
        encoder.freeze()


def cache_spec(encoder: Encoder, init_encoder_spec: dict | None = None) -> dict:
    """The feature-cache key of a run's frozen-encoder epochs: a frozen run's spec, so that fine-tuning from a
    later epoch reads the frozen runs' cache; when the weights come from a checkpoint whose CNN was trained
    (trainer.init_from, e.g. SCST after fine-tuning), also a digest of those weights, so that their features are
    never mixed with the pretrained CNN's."""
    spec = {**encoder.spec, "trainable": False}
    if init_encoder_spec is not None and init_encoder_spec.get("trainable"):
        spec["weights"] = {"trained in a run": weights_digest(encoder)}
    return spec


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's weights (names and values): two CNNs with the same spec but other weights differ."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def image_splits(cocos: dict[str, CocoCaptions], vocab: Vocabulary, encoder: Encoder, config: RunConfig,
                 images_of: Callable[[str], set[int] | None]) -> dict[str, SplitData]:
    """Every split read as images through the encoder's transform, the training split augmented; `images_of(split)`
    the images each split keeps (None: all)."""
    augment = Augment(config.dataset.augment)
    return {s: SplitData(coco, vocab, None, encoder.transform, config.dataset.max_caption_len,
                         augment=augment if s == "train" else None, seed=config.seed, image_ids=images_of(s))
            for s, coco in cocos.items()}
