"""The captioner: encoder + decoder + vocabulary + preprocessing, ready to caption images.

    from captioning import load_captioner
    captioner = load_captioner("runs/demo/checkpoints/best.pt")
    captioner.caption(["photo.jpg", pil_image], beam_size=3)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from captioning.checkpoint import load_checkpoint
from captioning.decoding import decode
from captioning.models.decoder import CaptionDecoder, DecoderConfig
from captioning.models.encoder import Encoder, encoder_from_spec
from captioning.text import Vocabulary

ImageLike = str | os.PathLike | Image.Image


class Captioner(nn.Module):
    def __init__(self, encoder: Encoder, decoder: CaptionDecoder, vocab: Vocabulary):
        super().__init__()
        self.encoder, self.decoder, self.vocab = encoder, decoder, vocab

    @property
    def transform(self):
        return self.encoder.transform

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def caption_features(self, features: Tensor, method: str = "beam", beam_size: int = 3, max_len: int = 20,
                         length_norm: float = 0.0, temperature: float = 1.0, top_k: int | None = None,
                         seed: int | None = None) -> list[str]:
        """Captions for pooled image features (B, D)."""
        was_training = self.decoder.training
        self.decoder.eval()
        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        ids = decode(self.decoder, features.to(self.device).float(), method, bos_id=self.vocab.bos_id,
                     eos_id=self.vocab.eos_id, pad_id=self.vocab.pad_id, max_len=max_len, beam_size=beam_size,
                     length_norm=length_norm, temperature=temperature, top_k=top_k, generator=generator)
        self.decoder.train(was_training)
        return [" ".join(self.vocab.decode(row)) for row in ids.tolist()]

    @torch.no_grad()
    def caption(self, images: Sequence[ImageLike], batch_size: int = 32, **decode_kwargs) -> list[str]:
        """Captions for image paths or PIL images (see `caption_features` for decoding options)."""
        self.encoder.eval()
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = [self.transform(_open(im)) for im in images[start:start + batch_size]]
            features = self.encoder(torch.stack(batch).to(self.device))  # (B, D)
            captions += self.caption_features(features, **decode_kwargs)
        return captions


def _open(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as im:
        return im.convert("RGB")


def build_captioner(model_config: dict, vocab: Vocabulary) -> Captioner:
    """The architecture described by a checkpoint's model_config (weights not loaded)."""
    return Captioner(encoder_from_spec(model_config["encoder"]),
                     CaptionDecoder(DecoderConfig(**model_config["decoder"])), vocab)


def load_captioner(path: str | Path, device: str | torch.device | None = None) -> Captioner:
    """Rebuild a trained captioner from its checkpoint alone (no network), in eval mode."""
    ckpt = load_checkpoint(path)
    captioner = build_captioner(ckpt["model_config"], Vocabulary.from_dict(ckpt["vocab"]))
    captioner.load_state_dict(ckpt["model"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return captioner.to(device).eval()
