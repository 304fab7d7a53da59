"""What every decoder shares: how it reads the image and how it splits a projection into per-layer states."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioning.config import DecoderOptions, check
from captioning.models.cells import State



def _cast(state: State | None, dtype: torch.dtype) -> State | None:
    """A recurrent state (h, or (h, c)) in `dtype`."""
    if state is None:
        return None
    return tuple(s.to(dtype) for s in state) if isinstance(state, tuple) else state.to(dtype)

class Forward(NamedTuple):
    """Teacher forcing's output: logits (B, T-1, V) for captions[:, 1:], and the loss's extra terms (the attention
    decoder's doubly stochastic penalty), each a scalar to add to the cross-entropy."""
    logits: Tensor
    losses: dict[str, Tensor]


class StepOut(NamedTuple):
    """One decoding step: the next word's logits (N, V), the state after it, and where the attention decoder looked
    for it, alpha (N, L) (None for a decoder without attention)."""
    logits: Tensor
    state: State
    alpha: Tensor | None = None


class DecoderBase(nn.Module):
    """The three dropouts, the optional LayerNorm of the image feature, and the steps both decoders take alike:
    `image()`, `_initial_state()` (with the subclass's init_state_proj / init_cell_proj), `_recurrent()` (with its
    rnn) and `_fed_back()`."""

    def __init__(self, config: DecoderOptions):
        super().__init__()
        check(config)
        self.config = c = config
        self.embed_dropout = nn.Dropout(c.embed_dropout)
        self.feature_dropout = nn.Dropout(c.feature_dropout)
        self.output_dropout = nn.Dropout(c.output_dropout)
        if c.feature_norm == "layernorm":
            self.feature_layernorm = nn.LayerNorm(c.feature_dim)

    def image(self, features: Tensor) -> Tensor:
        """The image as the decoder reads it, (..., D): normalised (`feature_norm`: l2 gives every feature vector
        the same length, sqrt(D), so the scale of the CNN's activations no longer matters; layernorm also learns
        a per-feature scale and shift), then `feature_dropout`."""
        if self.config.feature_norm == "l2":
            features = F.normalize(features, dim=-1) * math.sqrt(self.config.feature_dim)
        elif self.config.feature_norm == "layernorm":
            features = self.feature_layernorm(features)
        return self.feature_dropout(features)

    def _layers(self, x: Tensor) -> Tensor:
        """(B, L*H) -> (L, B, H), one initial state per layer."""
        return x.view(x.shape[0], self.config.num_layers, self.config.hidden_dim).transpose(0, 1).contiguous()

    def _initial_state(self, v: Tensor) -> tuple[Tensor, ...]:
        """(h0,) or, for an LSTM, (h0, c0) from an image vector v (B, D): h0 = tanh(W_ih v + b), c0 = tanh(W_ic v + b_c),
        one H-slice per layer."""
        h0 = self._layers(torch.tanh(self.init_state_proj(v)))
        if self.config.cell == "lstm":
            return h0, self._layers(torch.tanh(self.init_cell_proj(v)))
        return (h0,)

    def _recurrent(self, x: Tensor, state: State | None) -> tuple[Tensor, State]:
        """The core on inputs (B, T, E) from `state`. Under autocast torch's fused RNNs cast their
        weights but not their inputs, and oneDNN wants one dtype for all: cast input and state."""
        device = x.device.type
        if device == "cuda" and torch.is_autocast_enabled(device):
            # cuDNN's RNN under autocast runs in fp16 whatever dtype autocast was given (torch's _cudnn_rnn
            # wrapper), and nothing here scales the loss for fp16: the core runs in fp32 on CUDA, the rest in bf16.
            with torch.autocast("cuda", enabled=False):
                return self.rnn(x.float(), _cast(state, torch.float32))
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, state = x.to(dtype), _cast(state, dtype)
        return self.rnn(x, state)

    @staticmethod
    def _fed_back(tokens: Tensor, logits: Tensor, prob: float) -> Tensor:
        """Scheduled sampling (Bengio et al. 2015): each of the reference `tokens` (B,) is replaced, with probability
        `prob`, by a word sampled from the model's own distribution of the step before, softmax(`logits` (B, V)).
        The choice carries no gradient. With prob 1 every input is the model's own, drawn as sampling draws it."""
        own = torch.multinomial(logits.detach().float().softmax(-1), 1)[:, 0]
        if prob >= 1:
            return own
        return torch.where(torch.rand(tokens.shape, device=tokens.device) < prob, own, tokens)
