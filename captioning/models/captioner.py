"""The captioner: encoder + decoder + vocabulary + preprocessing, ready to caption images.

    from captioning import load_captioner
    captioner = load_captioner("runs/demo/checkpoints/best.pt")
    captioner.caption(["photo.jpg", pil_image], beam_size=3)
"""
from __future__ import annotations

import os
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from captioning.checkpoint import load_checkpoint
from captioning.data.folder import ImageFolderDataset
from captioning.data.images import ImageError, ImageLike
from captioning.decoding import decode
from captioning.io import InputError
from captioning.models.decoder import DecoderConfig, build_decoder
from captioning.models.encoder import Encoder, encoder_from_spec
from captioning.models.ensemble import EnsembleDecoder, check_ensemble
from captioning.precision import autocast
from captioning.text import Vocabulary



class Captioner(nn.Module):
    def __init__(self, encoder: Encoder, decoder: nn.Module, vocab: Vocabulary):
        super().__init__()
        self.encoder, self.decoder, self.vocab = encoder, decoder, vocab

    @property
    def transform(self):
        return self.encoder.transform

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def describe_features(self, features: Tensor, seed: int | None = None, with_attention: bool = False,
                          precision: str = "fp32", with_scores: bool = True, **options) -> list[dict]:
        """For image features (B, D), or a grid (B, L, D) for the attention decoder: one dict per image,
        {"caption", "score": mean log-probability per token, "words", ["attention": (len(words) + 1, L),
        one map per word and one for <end> (len(words) maps for a caption cut at max_len, which has no <end>)],
        [with num_return > 1: "captions", "scores", best first]}. Options as
        in `caption_features`; `precision` of the decoder's matrix products (auto | fp32 | bf16: autocast; the
        log-probabilities and scores are fp32 either way). `with_scores=False`: greedy rows without "score"."""
        if with_attention:
            self.check_attention("with_attention")
        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        v = self.vocab
        with _evaluating(self.decoder), autocast(self.device, precision):
            out = decode(self.decoder, features.to(self.device, torch.float32), bos_id=v.bos_id, eos_id=v.eos_id,
                         pad_id=v.pad_id, unk_id=v.unk_id, generator=generator, with_attention=with_attention,
                         with_scores=with_scores, **options)
        per_image = len(out.ids) // len(features)  # decode.num_return: that many rows per image, best first
        rows = []
        scores = [None] * len(out.ids) if out.score is None else out.score.tolist()
        for n, (ids, score) in enumerate(zip(out.ids.tolist(), scores)):
            words = self.vocab.decode(ids)
            row = {"caption": " ".join(words), "words": words} | ({} if score is None else {"score": score})
            if with_attention:
                row["attention"] = out.attention[n, :len(words) + 1].cpu()
            if per_image == 1:
                rows.append(row)
            elif n % per_image == 0:  # the best: the image's row, with every caption and score in order
                rows.append({**row, "captions": [row["caption"]], "scores": [score]})
            else:
                rows[-1]["captions"].append(row["caption"])
                rows[-1]["scores"].append(score)
        return rows

    def caption_features(self, features: Tensor, **options) -> list[str]:
        """Captions for pooled image features (B, D) (the validation path on cached features), or a grid.

        Options: any field of `captioning.config.DecodeOptions` (method beam | greedy | sample, beam_size,
        length_penalty, top_p, block_ngram_repeat, ...; its defaults, which `conf/decode/` extends) and `seed`
        for sampling.
        """
        return [row["caption"] for row in self.describe_features(features, with_scores=False, **options)]

    def check_attention(self, asked: str, source: str = "this captioner") -> None:
        """InputError unless this captioner has attention maps to draw (`asked`: the option that asked for them,
        `source`: what the captioner was loaded from)."""
        if isinstance(self.decoder, EnsembleDecoder):
            raise InputError(f"{asked} draws one model's attention maps; an ensemble's members each have their own")
        if self.decoder.config.inject != "attention":
            raise InputError(f"{asked} draws an attention decoder's maps; {source} reads pooled features and has no "
                             f"attention maps (decoder.inject={self.decoder.config.inject}: train one with "
                             "decoder=attention)")

    def describe_images(self, images: ImageFolderDataset, batch_size: int = 64, seed: int | None = None,
                        num_workers: int = 0, precision: str = "auto", with_features: bool = False,
                        **options) -> Iterator[tuple]:
        """The loop that captions images, for `caption` and captioning-caption: the CNN as in feature extraction
        (`encoded_batches`: its inference copy, channels_last; with `num_workers` on CPU, in worker processes that
        also read the images), then `describe_features` on `batch_size` images per call (call n seeded with
        `seed + n`), both in `precision`. Yields (indices, described, bad) per call: the dataset's indices of the
        images described, their rows, and (index, reason) for each image that could not be read. `with_features`:
        each row also holds the image's pooled feature (D,) float32 on the CPU, as "feature"."""
        from captioning.data.features import encoded_batches, in_chunks, pooled  # it imports models

        batches = encoded_batches(self.encoder, images, device=self.device, num_workers=num_workers,
                                  precision=precision)
        with _evaluating(self.encoder), closing(batches):  # closed at once on an error: the threads come back
            for n, (indices, features, bad) in enumerate(in_chunks(batches, batch_size)):
                described = [] if features is None else self.describe_features(
                    features, seed=None if seed is None else seed + n, precision=precision, **options)
                if with_features and features is not None:
                    for row, feature in zip(described, pooled(features.cpu())):
                        row["feature"] = feature
                yield indices, described, bad

    @torch.no_grad()
    def caption(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 64, seed: int | None = None,
                num_workers: int = 0, precision: str = "auto", **decode_options) -> list[str]:
        """Captions for image paths or PIL images (decoding options: `caption_features`).

        The loop is `describe_images`, captioning-caption's (`batch_size` images per decoding call, `precision`
        auto | fp32 | bf16, call n sampled with `seed + n`). An unreadable image is an ImageError naming it. Each
        call builds the CNN's inference copy anew (about 55 ms for EfficientNet-Lite0 on a 2-core CPU), so that
        weights changed since the last call are used: pass many images per call.
        """
        from captioning.data.features import DEFAULT_BATCH  # it imports models

        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        images = list(images)
        described = self.describe_images(ImageFolderDataset(images, self.transform), batch_size, seed,
                                         num_workers if len(images) > DEFAULT_BATCH["cpu"] else 0, precision,
                                         **decode_options)
        captions: list[str] = []
        with closing(described):  # closed at once on an error: the threads come back
            for _, rows, bad in described:
                if bad:
                    i, reason = bad[0]
                    where = i if isinstance(images[i], Image.Image) else repr(os.fsdecode(images[i]))
                    raise ImageError(f"image {where}: {reason}")
                captions += [row["caption"] for row in rows]
        return captions


@contextmanager
def _evaluating(module: nn.Module):
    """Eval mode (no dropout, frozen batch-norm statistics) for the block, then the previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def build_captioner(model_config: dict, vocab: Vocabulary) -> Captioner:
    """The architecture described by a checkpoint's model_config (weights not loaded)."""
    return Captioner(encoder_from_spec(model_config["encoder"]),
                     build_decoder(DecoderConfig.from_dict(model_config["decoder"])), vocab)


def load_captioner(path: str | Path | Sequence[str | Path], device: str | torch.device | None = None) -> Captioner:
    """Rebuild a trained captioner from its checkpoint alone (no network), in eval mode. A list of checkpoints
    gives their ensemble (`captioning.models.ensemble`; one checkpoint in a list is that model)."""
    if not isinstance(path, (str, os.PathLike)):
        paths = list(path)
        if not paths:
            raise InputError("no checkpoint given: pass one path or a list of them (an ensemble)")
        if len(paths) == 1:
            return load_captioner(paths[0], device)
        captioners = [load_captioner(p, device="cpu") for p in paths]
        check_ensemble(captioners, paths)
        first = captioners[0]
        captioner = Captioner(first.encoder, EnsembleDecoder([c.decoder for c in captioners]), first.vocab)
    else:
        ckpt = load_checkpoint(path)
        try:
            captioner = build_captioner(ckpt["model_config"], Vocabulary.from_dict(ckpt["vocab"]))
            captioner.load_state_dict(ckpt["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # RuntimeError: state dict does not fit
            raise InputError(f"checkpoint {path} does not describe a loadable captioner: {str(e)[:500]}") from e
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return captioner.to(device).eval()
