"""Generating captions from image features: argmax, sampling and beam search.

All three work on a whole batch at once (beam search on (batch x beam) rows): there is no
Python loop over images, only over time steps. Each returns `Decoded`: token ids (B, L) without the
<start> token, everything after a sequence's <end> <pad>, and each sequence's score, the mean
log-probability per token of its tokens (<end> included) under the model: a low score marks a caption
the model is unsure of, often an image unlike the training data.

The decoder must offer `init_state(features)`, `step(tokens, state, features)` and
`reorder_state(state, index)` (see captioning.models.decoder.CaptionDecoder).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from captioning.config import DecodeOptions

D = DecodeOptions  # the defaults below are its field defaults: one source for the API and the configs


class Decoded(NamedTuple):
    ids: Tensor    # (B, L) token ids, <pad> after <end>
    score: Tensor  # (B,) mean log p per token, <end> included
    attention: Tensor | None = None  # (B, L, grid) with_attention: the attention decoder's weights per token


def _pad_after_eos(seqs: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """Replace every token after the first <end> of each row by <pad>."""
    after = (seqs == eos_id).long().cumsum(1) - (seqs == eos_id).long() > 0  # strictly after first eos
    return seqs.masked_fill(after, pad_id)


def _generate(decoder, features: Tensor, choose: Callable[[Tensor], Tensor], bos_id: int, eos_id: int,
              pad_id: int, max_len: int, with_attention: bool = False) -> Decoded:
    """Feed each step's chosen token back in; stop when every row has produced <end>."""
    B = features.shape[0]
    state = decoder.init_state(features)
    tokens = features.new_full((B,), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=features.device)
    logp_sum, length = torch.zeros(B, device=features.device), torch.zeros(B, device=features.device)
    out, attention = [], []
    for _ in range(max_len):
        logits, state = decoder.step(tokens, state, features)  # (B, V)
        if with_attention:
            attention.append(decoder.last_alpha)  # (B, grid): where the decoder looked for this token
        logits = logits.float()
        tokens = choose(logits).masked_fill(done, pad_id)
        logp_sum += logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0].masked_fill(done, 0.0)
        length += (~done).float()  # tokens up to and including <end>
        out.append(tokens)
        done |= tokens == eos_id
        if done.all():
            break
    return Decoded(_pad_after_eos(torch.stack(out, 1), eos_id, pad_id), logp_sum / length.clamp(min=1),
                   torch.stack(attention, 1) if with_attention else None)


def greedy(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
           with_attention: bool = False) -> Decoded:
    """Argmax decoding: w_t = argmax_w p(w | w_<t, v). Deterministic, but prone to generic captions."""
    return _generate(decoder, features, lambda logits: logits.argmax(-1), bos_id, eos_id, pad_id, max_len,
                     with_attention)


def sample(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
           temperature: float = D.temperature, top_k: int | None = D.top_k,
           generator: torch.Generator | None = None, with_attention: bool = False) -> Decoded:
    """Sampling: w_t ~ softmax(logits / temperature), optionally restricted to the top-k words.

    Temperature < 1 sharpens the distribution towards argmax; > 1 flattens it (more variety).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for argmax)")

    def choose(logits: Tensor) -> Tensor:
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    return _generate(decoder, features, choose, bos_id, eos_id, pad_id, max_len, with_attention)


def beam_search(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
                beam_size: int = D.beam_size, length_norm: float = D.length_norm,
                with_attention: bool = False) -> Decoded:
    """Beam search over (B * K) rows; returns the best sequence per image (B, L).

    Keeps the K highest-scoring prefixes, score = sum_t log p(w_t | w_<t, v). A finished
    beam (ended with <end>) stays in the beam with its score frozen, competing with the
    unfinished ones. Pruning uses the raw log-prob; among the K final beams the winner
    maximises score / length ** length_norm (length counts <end>; 0: raw log-prob, which
    favours short captions; ~0.7 as in Wu et al. 2016 evens that out).
    """
    B, K, device = features.shape[0], beam_size, features.device
    feats = features.repeat_interleave(K, 0)  # (B*K, D)
    state = decoder.reorder_state(decoder.init_state(features), torch.arange(B, device=device).repeat_interleave(K))
    tokens = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, device=device)
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=device)
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    attention = None
    for _ in range(max_len):
        logits, state = decoder.step(tokens, state, feats)
        step_attention = decoder.last_alpha if with_attention else None  # (B*K, grid), per parent row
        logp = logits.float().log_softmax(-1).view(B, K, -1)  # (B, K, V)
        V = logp.shape[-1]
        # A finished beam may only "emit" <end> again, at no cost, so its score stays put.
        logp = logp.masked_fill(finished[..., None], float("-inf"))
        logp[..., eos_id] = logp[..., eos_id].masked_fill(finished, 0.0)
        cand = (scores[..., None] + logp).view(B, K * V)
        scores, idx = cand.topk(K, dim=-1)  # (B, K)
        beam, tokens = idx // V, idx % V
        rows = (offsets + beam).view(-1)  # (B*K,) parent row of each new beam
        state = decoder.reorder_state(state, rows)
        seqs = torch.cat([seqs[rows], tokens.view(-1, 1)], 1)
        if with_attention:  # each new beam inherits its parent's maps and adds the one of this step
            new = step_attention[rows][:, None]
            attention = new if attention is None else torch.cat([attention[rows], new], 1)
        lengths = lengths.gather(1, beam) + (~finished.gather(1, beam)).float()
        finished = finished.gather(1, beam) | (tokens == eos_id)
        tokens = tokens.view(-1)
        if finished.all():
            break
    best = (scores / lengths.clamp(min=1) ** length_norm).argmax(-1)  # (B,)
    winners = offsets[:, 0] + best
    ids = _pad_after_eos(seqs[winners], eos_id, pad_id)
    return Decoded(ids, scores.gather(1, best[:, None])[:, 0] / lengths.gather(1, best[:, None])[:, 0].clamp(min=1),
                   attention[winners] if with_attention else None)


def decode(decoder, features: Tensor, method: str = D.method, *, bos_id: int, eos_id: int, pad_id: int = 0,
           max_len: int = D.max_len, beam_size: int = D.beam_size, length_norm: float = D.length_norm,
           temperature: float = D.temperature, top_k: int | None = D.top_k,
           generator: torch.Generator | None = None, with_attention: bool = False) -> Decoded:
    """Dispatch on `method` (greedy | sample | beam); returns token ids (B, L) and scores (B,), and with
    `with_attention` (the attention decoder only) each token's attention weights over the grid."""
    common = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=max_len, with_attention=with_attention)
    if method == "greedy":
        return greedy(decoder, features, **common)
    if method == "sample":
        return sample(decoder, features, temperature=temperature, top_k=top_k, generator=generator, **common)
    if method == "beam":
        return beam_search(decoder, features, beam_size=beam_size, length_norm=length_norm, **common)
    raise ValueError(f"decode method must be greedy, sample or beam, got {method!r}")
