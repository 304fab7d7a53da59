"""An ensemble of captioners that share one encoder: every decoding method averages the models' log-probabilities
at every step,

    log p(w_t | w_<t, v) = log_softmax( 1/M sum_m log p_m(w_t | w_<t, v) )

(the normalised geometric mean of the M distributions), so beam search, greedy and sampling work unchanged.
The models must share the vocabulary (word ids mean the same words) and the encoder (its features are computed
once per image): typically decoders trained with different seeds or settings on the same frozen CNN.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from captioning.io import InputError
from captioning.models.decoder_base import StepOut


class EnsembleDecoder(nn.Module):
    """The decoders' interface (init_state, step, reorder_state) over M decoders; the state is a tuple of theirs."""

    def __init__(self, decoders: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(decoders)
        self.config = decoders[0].config  # what callers read (e.g. inject): the first member's

    def init_state(self, features: Tensor) -> tuple:
        return tuple(d.init_state(features) for d in self.members)

    def step(self, tokens: Tensor, state: tuple, features: Tensor) -> StepOut:
        """tokens (N,) -> the mean of the members' log-probabilities (N, V), and their next states; no attention
        maps (the members would each have their own)."""
        outs = [d.step(tokens, s, features) for d, s in zip(self.members, state)]
        logp = torch.stack([out.logits.float().log_softmax(-1) for out in outs]).mean(0)
        return StepOut(logp, tuple(out.state for out in outs))

    def reorder_state(self, state: tuple, index: Tensor) -> tuple:
        return tuple(d.reorder_state(s, index) for d, s in zip(self.members, state))


def check_ensemble(captioners: Sequence[nn.Module], paths: Sequence[str | Path]) -> None:
    """InputError unless every captioner has the first one's vocabulary, encoder and encoder weights."""
    first, first_path = captioners[0], paths[0]
    for captioner, path in zip(captioners[1:], paths[1:]):
        grid = {c.decoder.config.inject == "attention" for c in (first, captioner)}
        if len(grid) > 1:
            raise InputError(f"checkpoints {first_path} and {path} read different image features (one the attention "
                             "decoder's grid, the other the pooled vector): an ensemble's members read the same")
        if captioner.vocab.to_dict() != first.vocab.to_dict():
            raise InputError(f"checkpoints {first_path} and {path} have different vocabularies: an ensemble averages "
                             "the probabilities of the same words, so every model needs the same vocabulary")
        a, b = first.encoder.state_dict(), captioner.encoder.state_dict()
        if first.encoder.spec != captioner.encoder.spec or a.keys() != b.keys() or \
                not all(torch.equal(a[k], b[k]) for k in a):
            raise InputError(f"checkpoints {first_path} and {path} have different encoders: an ensemble shares one "
                             "encoder (decoders trained on the same frozen CNN)")
