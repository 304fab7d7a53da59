"""The caption decoder: word embedding -> recurrent core -> linear layer to the vocabulary.

Where the image feature v (B, D) enters is configurable (`inject`):

* ``init`` (default): it sets the initial state of every layer,
  h0 = tanh(W_ih v + b)  (and c0 = tanh(W_ic v + b_c) for LSTMs);
* ``pre``: the projected image W_ie v is the first input token, before <start> (Show and Tell);
* ``par``: the projected image is added to the word input at every step, as in the lecture's
  h_t = tanh(W_xh x_t + W_hh h_{t-1} + W_ih v);
* ``attention``: the image is the CNN's grid, which sets the initial state through its mean and is
  attended to at every step (`captioning.models.attention.AttentionDecoder`; `build_decoder` picks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioning.config import DecoderOptions, check
from captioning.models.attention import AttentionDecoder
from captioning.models.cells import State, build_recurrent
from captioning.models.decoder_base import DecoderBase, Forward, StepOut
from captioning.models.projection import vocab_logits


@dataclass(kw_only=True)
class DecoderConfig(DecoderOptions):
    """The decoder's hyper-parameters (`DecoderOptions`, defaults there) plus the two sizes that come
    from the data: the vocabulary and the encoder's feature dimension."""

    vocab_size: int
    feature_dim: int

    @classmethod
    def from_dict(cls, config: dict) -> "DecoderConfig":
        """A checkpoint's model_config["decoder"]. One written before the three dropouts were separate options
        gives its single `dropout` rate to the embedding and output dropouts, as it was applied then."""
        config = dict(config)
        if "dropout" in config:
            rate = config.pop("dropout")
            config.update(embed_dropout=rate, output_dropout=rate, feature_dropout=0.0)
        return cls(**config)


class CaptionDecoder(DecoderBase):
    """p(w_t | w_<t, v): embed(w_{t-1}) -> recurrent core -> `out` (H -> V logits).

    With inject="init", `init_state_proj` is W_ih of h0 = tanh(W_ih v + b), one H-slice per
    layer, and LSTMs get c0 = tanh(W_ic v + b_c) from `init_cell_proj`. With "pre"/"par",
    `image_proj` maps v into the word-embedding space (the first token / an extra input).
    """

    def __init__(self, config: DecoderConfig):
        if config.inject == "attention":
            raise ValueError("inject='attention' is AttentionDecoder's: use build_decoder(config)")
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.rnn = build_recurrent(c.cell, c.impl, c.embed_dim, c.hidden_dim, c.num_layers, c.output_dropout)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)
        if c.inject == "init":
            self.init_state_proj = nn.Linear(c.feature_dim, c.num_layers * c.hidden_dim)  # W_ih, b
            if c.cell == "lstm":
                self.init_cell_proj = nn.Linear(c.feature_dim, c.num_layers * c.hidden_dim)  # W_ic, b_c
        else:
            self.image_proj = nn.Linear(c.feature_dim, c.embed_dim)  # W_ie: image -> word-embedding space

    def init_state(self, features: Tensor) -> State:
        """The recurrent state before <start>: (B, D) -> h (L, B, H) or (h, c)."""
        c = self.config
        features = self.image(features)
        if c.inject == "init":
            state = self._initial_state(features)  # h0 = tanh(W_ih v + b)[, c0]
            return state if c.cell == "lstm" else state[0]
        if c.inject == "pre":  # run the image "token" through the core; its output is not scored
            _, state = self._recurrent(self.image_proj(features)[:, None], None)
            return state
        zeros = features.new_zeros(c.num_layers, features.shape[0], c.hidden_dim)  # par: image enters as input
        return (zeros, zeros) if c.cell == "lstm" else zeros

    def _inputs(self, tokens: Tensor, features: Tensor, image_input: Tensor | None = None) -> Tensor:
        """Embedded tokens (B, T, E), plus W_ie v at every step with inject=par (`image_input`: W_ie v, if the
        caller already projected it: one feature-dropout mask for the whole caption)."""
        x = self.embed_dropout(self.embed(tokens))  # (B, T, E)
        if self.config.inject == "par":
            x = x + (self.image_proj(self.image(features)) if image_input is None else image_input)[:, None]
        return x

    def forward(self, features: Tensor, captions: Tensor, sampling_prob: float = 0.0) -> Forward:
        """Teacher forcing: logits (B, T-1, V) predicting captions[:, 1:] from captions[:, :-1], in one call of the
        core, and no extra loss terms. With `sampling_prob` > 0 (scheduled sampling) step by step, each input after <start> replaced with
        that probability by the model's own sample (`_fed_back`)."""
        if not sampling_prob:
            out, _ = self._recurrent(self._inputs(captions[:, :-1], features), self.init_state(features))  # (B, T-1, H)
            return Forward(self.out(self.output_dropout(out)), {})
        state, tokens, logits = self.init_state(features), captions[:, 0], []
        image_input = self.image_proj(self.image(features)) if self.config.inject == "par" else None
        for t in range(captions.shape[1] - 1):
            if t:
                tokens = self._fed_back(captions[:, t], self.out(out[:, 0]), sampling_prob)
            out, state = self._recurrent(self._inputs(tokens[:, None], features, image_input), state)  # (B, 1, H)
            logits.append(self.out(self.output_dropout(out[:, 0])))
        return Forward(torch.stack(logits, 1), {})

    def step(self, tokens: Tensor, state: State, features: Tensor) -> StepOut:
        """One decoding step for N sequences: tokens (N,) -> logits (N, V) and the next state."""
        out, state = self._recurrent(self._inputs(tokens[:, None], features), state)  # (N, 1, H)
        return StepOut(vocab_logits(self.out, out[:, 0]), state)

    @staticmethod
    def reorder_state(state: State, index: Tensor) -> State:
        """Select / reorder sequences (beam search): batch is dim 1 of every state tensor."""
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)
        return state.index_select(1, index)


def build_decoder(config: DecoderConfig) -> nn.Module:
    """The decoder a config describes: CaptionDecoder, or AttentionDecoder for inject="attention"."""
    check(config)
    return AttentionDecoder(config) if config.inject == "attention" else CaptionDecoder(config)


def caption_loss(logits: Tensor, targets: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the non-padding target tokens: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing)
