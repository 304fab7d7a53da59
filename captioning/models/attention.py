"""Soft attention over the CNN's spatial grid (Xu et al. 2015, "Show, Attend and Tell"), as one more decoder.

The encoder gives L annotation vectors a_1..a_L (B, L, D): the last convolutional stage's grid, 7 x 7 x 1280
for EfficientNet-Lite0 at 224 px. As in the design's captioner, the image sets the initial state,

    h0 = tanh(W_ih mean_i(a_i) + b)        (and c0 = tanh(W_ic mean_i(a_i) + b_c) for an LSTM)

and then at every step t the decoder looks again, where its previous state points it:

    e_ti  = w^T tanh(W_a a_i + W_h h_{t-1})        alpha_t = softmax_i(e_t)      (sum_i alpha_ti = 1)
    z_t   = sum_i alpha_ti a_i                      the context vector
    beta_t = sigmoid(f_beta(h_{t-1}))               an optional gate on the context (Xu et al. 4.2.1)
    h_t   = RNN([embed(w_{t-1}); beta_t * z_t], h_{t-1})

Training adds the doubly stochastic penalty  lambda * sum_i (1 - sum_t alpha_ti)^2  (`alpha_c`), which asks the
decoder to look at every part of the image over the whole caption. Xu et al. (arctic-captions, capgen.py) add it
once per caption to the caption's cross-entropy summed over its words; our loss is the mean per word, so the
penalty is divided by the same word count (the batch's target tokens): the objective is theirs over the mean
caption length, and alpha_c = 1 weighs the penalty as theirs does. Because alpha_t depends on h_{t-1}, even
teacher forcing runs the core one step at a time.

The interface is the other decoder's (init_state, step, reorder_state, forward), so greedy, sampling, batched
beam search, SCST and checkpoints work unchanged. The state carries the annotation vectors and their
projection W_a a (computed once per image), so reorder_state (beam search) selects them with the rest.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from captioning.models.cells import build_recurrent
from captioning.models.decoder_base import DecoderBase, Forward, StepOut
from captioning.models.projection import vocab_logits
from captioning.text import Vocabulary


class SoftAttention(nn.Module):
    """alpha = softmax(w^T tanh(W_a a + W_h h)), z = sum_i alpha_i a_i."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attention_dim)  # W_a
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)    # W_h
        self.score = nn.Linear(attention_dim, 1)                   # w

    def forward(self, keys: Tensor, values: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """keys W_a a (B, L, A), values a (B, L, D), h (B, H) -> context z (B, D), weights alpha (B, L)."""
        alpha = self.score(torch.tanh(keys + self.hidden_proj(h)[:, None])).squeeze(-1).softmax(-1)  # (B, L)
        return torch.bmm(alpha[:, None], values)[:, 0], alpha


class AttentionDecoder(DecoderBase):
    """p(w_t | w_<t, a): the module docstring. `features` are the encoder's grid (B, L, D)."""

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.attention = SoftAttention(c.feature_dim, c.hidden_dim, c.attention_dim)
        if c.attention_gate:
            self.gate = nn.Linear(c.hidden_dim, c.feature_dim)  # f_beta
        self.rnn = build_recurrent(c.cell, c.impl, c.embed_dim + c.feature_dim, c.hidden_dim, c.num_layers,
                                   c.output_dropout)
        self.init_state_proj = nn.Linear(c.feature_dim, c.num_layers * c.hidden_dim)  # W_ih, b
        if c.cell == "lstm":
            self.init_cell_proj = nn.Linear(c.feature_dim, c.num_layers * c.hidden_dim)  # W_ic, b_c
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)

    def init_state(self, features: Tensor) -> tuple[Tensor, ...]:
        """(B, L, D) -> (h0 (layers, B, H)[, c0 (layers, B, H)], values a (B, L, D), keys W_a a (B, L, A))."""
        a = self.image(features)
        return (*self._initial_state(a.mean(1)), a, self.attention.feature_proj(a))

    def _step(self, tokens: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
        """One step from token ids (N,): the core's output (N, H), the next state, alpha (N, L)."""
        *core, values, keys = state
        h_top = core[0][-1]  # (N, H): the top layer's h_{t-1}
        z, alpha = self.attention(keys, values, h_top)
        if self.config.attention_gate:
            z = torch.sigmoid(self.gate(h_top)) * z  # beta_t * z_t
        x = torch.cat([self.embed_dropout(self.embed(tokens)), z], -1)[:, None]  # (N, 1, E + D)
        out, new = self._recurrent(x, tuple(core) if len(core) == 2 else core[0])
        new = new if isinstance(new, tuple) else (new,)
        return out[:, 0], (*new, values, keys), alpha

    def forward(self, features: Tensor, captions: Tensor, sampling_prob: float = 0.0) -> Forward:
        """Teacher forcing, step by step: logits (B, T-1, V) predicting captions[:, 1:], and the doubly stochastic
        penalty ("attention_penalty"). With `sampling_prob` > 0 (scheduled sampling) each input after <start> may
        be the model's own sample."""
        state, outs, alphas = self.init_state(features), [], []
        for t in range(captions.shape[1] - 1):
            tokens = captions[:, t]
            if t and sampling_prob:
                tokens = self._fed_back(tokens, self.out(outs[-1]), sampling_prob)
            out, state, alpha = self._step(tokens, state)
            outs.append(out)
            alphas.append(alpha)
        alpha = torch.stack(alphas, 1)  # (B, T-1, L)
        counted = (captions[:, 1:] != Vocabulary.pad_id).float()[..., None]  # the caption's steps, <end> included
        per_caption = ((1 - (alpha * counted).sum(1)) ** 2).sum(-1)  # (B,)
        penalty = self.config.alpha_c * per_caption.sum() / counted.sum().clamp(min=1)  # per word: see above
        return Forward(self.out(self.output_dropout(torch.stack(outs, 1))), {"attention_penalty": penalty})

    def step(self, tokens: Tensor, state: tuple[Tensor, ...], features: Tensor) -> StepOut:
        """One decoding step for N sequences: tokens (N,) -> logits (N, V), the next state, alpha (N, L)."""
        out, state, alpha = self._step(tokens, state)
        return StepOut(vocab_logits(self.out, out), state, alpha)

    @staticmethod
    def reorder_state(state: tuple[Tensor, ...], index: Tensor) -> tuple[Tensor, ...]:
        """Select / reorder sequences (beam search): dimension 1 of the core's state, 0 of values and keys."""
        *core, values, keys = state
        return (*(s.index_select(1, index) for s in core), values.index_select(0, index), keys.index_select(0, index))
