"""Generating captions from image features: argmax, sampling and beam search.

All three work on a whole batch at once (beam search on (batch x beam) rows): there is no
Python loop over images, only over time steps. Each returns `Decoded`: token ids (B, L) without the
<start> token, everything after a sequence's <end> <pad>, and each sequence's score, the mean
log-probability per token of its tokens (<end> included) under the model: a low score marks a caption
the model is unsure of, often an image unlike the training data.

Every method also obeys the same rules on what a step may emit (`TokenRules`): no <end> before `min_len`
words, no <unk> with `suppress_unk`, no repeated n-gram with `block_ngram_repeat`. A banned token's
log-probability is set to -inf after the softmax, so the scores stay the model's own.

The decoder must offer `init_state(features)`, `step(tokens, state, features)` and
`reorder_state(state, index)` (see captioning.models.decoder.CaptionDecoder).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from captioning.config import DecodeOptions, check

D = DecodeOptions  # the defaults below are its field defaults: one source for the API and the configs


class Decoded(NamedTuple):
    ids: Tensor    # (B, L) token ids, <pad> after <end>
    score: Tensor  # (B,) mean log p per token, <end> included
    attention: Tensor | None = None  # (B, L, grid) with_attention: the attention decoder's weights per token


class TokenRules:
    """What the next token may not be, given each row's prefix (N, t) of generated tokens (<start> excluded).

    `block_ngram_repeat` n: a token that would complete an n-gram the prefix already holds (the prefix's last
    n - 1 tokens followed by it) is banned, so no n-gram appears twice. `min_len`: <end> is banned while fewer
    than min_len tokens are out. `unk_id`: <unk> is always banned. <end> completes no n-gram of an unfinished
    prefix, so a row always keeps it; should the rules ban every token, <end> is allowed.
    """

    def __init__(self, eos_id: int, min_len: int = D.min_len, block_ngram_repeat: int = D.block_ngram_repeat,
                 unk_id: int | None = None):
        self.eos_id, self.min_len, self.n, self.unk_id = eos_id, min_len, block_ngram_repeat, unk_id

    def __bool__(self) -> bool:
        return bool(self.min_len or self.n or self.unk_id is not None)

    def __call__(self, logp: Tensor, prefix: Tensor) -> Tensor:
        """logp (N, V) with every banned token at -inf."""
        N, V = logp.shape
        banned = torch.zeros(N, V, dtype=torch.bool, device=logp.device)
        if self.unk_id is not None:
            banned[:, self.unk_id] = True
        if prefix.shape[1] < self.min_len:
            banned[:, self.eos_id] = True
        n = self.n
        if n and prefix.shape[1] >= n:  # every n-gram of the prefix (N, W, n) whose first n-1 tokens end it
            grams = prefix.unfold(1, n, 1)
            repeats = (grams[:, :, :-1] == prefix[:, prefix.shape[1] - n + 1:][:, None]).all(-1)  # (N, W)
            counts = torch.zeros(N, V, dtype=torch.long, device=logp.device)
            banned |= counts.scatter_add_(1, grams[:, :, -1], repeats.long()) > 0
        banned[:, self.eos_id] &= ~banned.all(-1)  # never leave a row without a token
        return logp.masked_fill(banned, float("-inf"))


def _pad_after_eos(seqs: Tensor, eos_id: int, pad_id: int) -> Tensor:
    """Replace every token after the first <end> of each row by <pad>."""
    after = (seqs == eos_id).long().cumsum(1) - (seqs == eos_id).long() > 0  # strictly after first eos
    return seqs.masked_fill(after, pad_id)


def _generate(decoder, features: Tensor, choose: Callable[[Tensor], Tensor], bos_id: int, eos_id: int,
              pad_id: int, max_len: int, with_attention: bool = False, rules: TokenRules | None = None) -> Decoded:
    """Feed each step's chosen token (from the rule-abiding log-probabilities) back in; stop when every row has
    produced <end>."""
    B = features.shape[0]
    state = decoder.init_state(features)
    tokens = features.new_full((B,), bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=features.device)
    logp_sum, length = torch.zeros(B, device=features.device), torch.zeros(B, device=features.device)
    seqs, attention = features.new_empty((B, 0), dtype=torch.long), []
    for _ in range(max_len):
        logits, state = decoder.step(tokens, state, features)  # (B, V)
        if with_attention:
            attention.append(decoder.last_alpha)  # (B, grid): where the decoder looked for this token
        logp = logits.float().log_softmax(-1)
        if rules:
            logp = rules(logp, seqs)
        tokens = choose(logp).masked_fill(done, pad_id)
        logp_sum += logp.gather(1, tokens[:, None])[:, 0].masked_fill(done, 0.0)
        length += (~done).float()  # tokens up to and including <end>
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        done |= tokens == eos_id
        if done.all():
            break
    return Decoded(_pad_after_eos(seqs, eos_id, pad_id), logp_sum / length.clamp(min=1),
                   torch.stack(attention, 1) if with_attention else None)


def greedy(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
           with_attention: bool = False, rules: TokenRules | None = None) -> Decoded:
    """Argmax decoding: w_t = argmax_w p(w | w_<t, v). Deterministic, but prone to generic captions."""
    return _generate(decoder, features, lambda logp: logp.argmax(-1), bos_id, eos_id, pad_id, max_len,
                     with_attention, rules)


def keep_top_k(logits: Tensor, top_k: int | None) -> Tensor:
    """The logits (..., V) with every word below the k-th most likely at -inf (None: unchanged)."""
    if top_k is None:
        return logits
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
           temperature: float = D.temperature, top_k: int | None = D.top_k, top_p: float | None = D.top_p,
           generator: torch.Generator | None = None, with_attention: bool = False,
           rules: TokenRules | None = None) -> Decoded:
    """Sampling: w_t ~ softmax(log p / temperature), optionally restricted to the top-k words and to the nucleus,
    the fewest most likely words whose probabilities sum to at least top_p (Holtzman et al. 2020).

    Temperature < 1 sharpens the distribution towards argmax; > 1 flattens it (more variety).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for argmax)")

    def choose(logp: Tensor) -> Tensor:
        logits = logp / temperature
        logits = keep_top_k(logits, top_k)
        if top_p is not None:  # drop a word when the more likely words before it already reach top_p
            probs, order = logits.softmax(-1).sort(-1, descending=True)
            outside = probs.cumsum(-1) - probs >= top_p
            logits = logits.masked_fill(outside.scatter(1, order, outside), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    return _generate(decoder, features, choose, bos_id, eos_id, pad_id, max_len, with_attention, rules)


def length_divisor(length: Tensor, kind: str = D.length_penalty, alpha: float = D.length_alpha) -> Tensor:
    """What a beam's summed log p is divided by: 1 (none), length ** alpha (avg) or ((5 + length) / 6) ** alpha
    (wu, Wu et al. 2016). Without one, beam search favours short captions, each word costing log p < 0."""
    if kind == "none":
        return torch.ones_like(length)
    if kind == "avg":
        return length.clamp(min=1) ** alpha
    if kind == "wu":
        return ((5 + length) / 6) ** alpha
    raise ValueError(f"length_penalty must be none, avg or wu, got {kind!r}")


def beam_search(decoder, features: Tensor, bos_id: int, eos_id: int, pad_id: int = 0, max_len: int = D.max_len,
                beam_size: int = D.beam_size, length_penalty: str = D.length_penalty,
                length_alpha: float = D.length_alpha, beam_groups: int = D.beam_groups,
                diversity_lambda: float = D.diversity_lambda, num_return: int = D.num_return,
                with_attention: bool = False, rules: TokenRules | None = None) -> Decoded:
    """Beam search over (B * K) rows; returns the best `num_return` sequences per image ((B * n, L), image by
    image, best first).

    Keeps the K best prefixes by score / `length_divisor(length, length_penalty, length_alpha)`, score =
    sum_t log p(w_t | w_<t, v), length counting <end>: the score the final beams are ranked by, at every step. A
    finished beam (ended with <end>) stays in the beam with its score frozen, competing with the unfinished ones.

    With num_return n > 1 the n are distinct captions where the beams hold that many, ranked by that score (the
    scores returned are the mean log p per token, which need not fall in that order).

    Diverse beam search (Vijayakumar et al. 2018) with `beam_groups` G: the K beams form G groups of K / G that
    are pruned one after the other at every step, group g choosing among its continuations by

        log p(prefix, w) - diversity_lambda * (times the groups before g chose w at this step)

    (Hamming diversity), so the groups spread over different captions; the scores kept are the true log p.
    """
    B, K, device = features.shape[0], beam_size, features.device
    G = beam_groups
    feats = features.repeat_interleave(K, 0)  # (B*K, D)
    state = decoder.reorder_state(decoder.init_state(features), torch.arange(B, device=device).repeat_interleave(K))
    tokens = torch.full((B * K,), bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, ::K // G] = 0.0  # all beams start identical: expand only the first of each group
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    lengths = torch.zeros(B, K, device=device)
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=device)
    attention = None
    # An image whose K beams have all ended leaves the batch (its rows are computed no more): `alive` are the
    # images still searched, and `final` receives the others' beams, eos-padded, when they end.
    alive = torch.arange(B, device=device)
    final = _FinalBeams(B, K, max_len, eos_id, device)
    for t in range(max_len):
        n = len(alive)
        logits, state = decoder.step(tokens, state, feats)
        step_attention = decoder.last_alpha if with_attention else None  # (n*K, grid), per parent row
        logp = logits.float().log_softmax(-1)
        if rules:
            logp = rules(logp, seqs)
        logp = logp.view(n, K, -1)  # (n, K, V)
        V = logp.shape[-1]
        # A finished beam may only "emit" <end> again, at no cost, so its score stays put.
        logp = logp.masked_fill(finished[..., None], float("-inf"))
        logp[..., eos_id] = logp[..., eos_id].masked_fill(finished, 0.0)
        cand = scores[..., None] + logp  # (n, K, V)
        # Pruned by the score the final beams are ranked by (OpenNMT-py's way): with raw log p, short captions that
        # ended early keep their high scores and crowd out the longer ones a length penalty would have preferred.
        rank = cand / length_divisor(lengths + (~finished).float(), length_penalty, length_alpha)[..., None]
        if G == 1:
            idx = rank.view(n, K * V).topk(K, dim=-1).indices  # (n, K)
        else:
            idx = _diverse_topk(rank, finished, G, diversity_lambda)
        scores = cand.view(n, K * V).gather(1, idx)  # the true log p
        beam, tokens = idx // V, idx % V
        rows = (torch.arange(n, device=device)[:, None] * K + beam).view(-1)  # (n*K,) parent row of each new beam
        seqs = torch.cat([seqs[rows], tokens.view(-1, 1)], 1)
        if with_attention:  # each new beam inherits its parent's maps and adds the one of this step
            new = step_attention[rows][:, None]
            attention = new if attention is None else torch.cat([attention[rows], new], 1)
        lengths = lengths.gather(1, beam) + (~finished.gather(1, beam)).float()
        finished = finished.gather(1, beam) | (tokens == eos_id)
        ended = finished.all(1) if t < max_len - 1 else torch.ones_like(finished[:, 0])  # (n,)
        if ended.any():
            final.store(alive[ended], scores[ended], lengths[ended], seqs.view(n, K, -1)[ended],
                        attention.view(n, K, *attention.shape[1:])[ended] if with_attention else None)
            if ended.all():
                break
            keep = ~ended
            rows = rows.view(n, K)[keep].view(-1)
            keep_rows = torch.arange(n * K, device=device).view(n, K)[keep].view(-1)  # the kept images' rows
            alive, scores, lengths, finished = alive[keep], scores[keep], lengths[keep], finished[keep]
            seqs, tokens, feats = seqs[keep_rows], tokens[keep], feats[keep_rows]
            attention = attention[keep_rows] if with_attention else None
        state = decoder.reorder_state(state, rows)
        tokens = tokens.reshape(-1)
    scores, lengths, seqs, attention = final.scores, final.lengths, final.seqs, final.attention
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    best = (scores / length_divisor(lengths, length_penalty, length_alpha)).sort(dim=-1, descending=True,
                                                                                  stable=True).indices  # (B, K)
    if num_return > 1:  # distinct captions first: beam groups may end on the same one
        ranked = _pad_after_eos(seqs[(offsets + best).view(-1)], eos_id, pad_id).view(B, K, -1)
        same = (ranked[:, :, None] == ranked[:, None]).all(-1).tril(-1).any(-1)  # (B, K): equals a better beam
        best = best.gather(1, same.long().sort(dim=-1, stable=True).indices)
    best = best[:, :num_return]  # (B, n)
    winners = (offsets + best).view(-1)
    ids = _pad_after_eos(seqs[winners], eos_id, pad_id)
    return Decoded(ids, (scores.gather(1, best) / lengths.gather(1, best).clamp(min=1)).view(-1),
                   attention[winners] if with_attention else None)


class _FinalBeams:
    """The K final beams of every image, stored as its search ends: scores and lengths (B, K), token ids
    (B*K, longest) padded with <end>, attention maps (B*K, longest, grid) padded with zeros."""

    def __init__(self, B: int, K: int, max_len: int, eos_id: int, device: torch.device):
        self.K, self.longest = K, 0
        self.scores = torch.empty(B, K, device=device)
        self.lengths = torch.empty(B, K, device=device)
        self._seqs = torch.full((B * K, max_len), eos_id, dtype=torch.long, device=device)
        self._attention = None

    def store(self, images: Tensor, scores: Tensor, lengths: Tensor, seqs: Tensor, attention: Tensor | None) -> None:
        """Images (m,), their scores and lengths (m, K), token ids (m, K, t) and attention maps (m, K, t, grid)."""
        rows = (images[:, None] * self.K + torch.arange(self.K, device=images.device)).view(-1)
        self.scores[images], self.lengths[images] = scores, lengths
        t = seqs.shape[-1]
        self._seqs[rows, :t] = seqs.reshape(-1, t)
        self.longest = max(self.longest, t)
        if attention is not None:
            if self._attention is None:
                self._attention = attention.new_zeros(self._seqs.shape[0], self._seqs.shape[1], attention.shape[-1])
            self._attention[rows, :t] = attention.reshape(-1, t, attention.shape[-1])

    @property
    def seqs(self) -> Tensor:
        return self._seqs[:, :self.longest]

    @property
    def attention(self) -> Tensor | None:
        return None if self._attention is None else self._attention[:, :self.longest]


def _diverse_topk(rank: Tensor, finished: Tensor, groups: int, diversity_lambda: float) -> Tensor:
    """Each group's K / G best continuations, groups in turn, by their rank score (log p, length-penalised) minus
    diversity_lambda times the number of earlier groups' choices of the same word at this step; returns their flat
    indices into (K * V), (B, K)."""
    B, K, V = rank.shape
    size = K // groups
    chosen = rank.new_zeros(B, V)  # how often each word was chosen at this step by the groups so far
    picked = []
    for g in range(groups):
        part = rank[:, g * size:(g + 1) * size]  # (B, K/G, V)
        penalty = diversity_lambda * chosen[:, None] * (~finished[:, g * size:(g + 1) * size, None]).float()
        idx = (part - penalty).reshape(B, size * V).topk(size, dim=-1).indices
        picked.append(idx + g * size * V)
        chosen.scatter_add_(1, idx % V, torch.ones_like(idx, dtype=chosen.dtype))
    return torch.cat(picked, 1)


def decode(decoder, features: Tensor, method: str = D.method, *, bos_id: int, eos_id: int, pad_id: int = 0,
           unk_id: int | None = None, generator: torch.Generator | None = None, with_attention: bool = False,
           **options) -> Decoded:
    """Dispatch on `method` (greedy | sample | beam) with `options`, any fields of DecodeOptions (checked, defaults
    there); returns token ids (B, L) and scores (B,), and with `with_attention` (the attention decoder only) each
    token's attention weights over the grid. `unk_id` is needed for suppress_unk."""
    o = DecodeOptions(method=method, **options)
    check(o)
    if o.suppress_unk and unk_id is None:
        raise ValueError("suppress_unk needs the vocabulary's unk_id")
    rules = TokenRules(eos_id, o.min_len, o.block_ngram_repeat, unk_id if o.suppress_unk else None)
    common = dict(bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_len=o.max_len, with_attention=with_attention,
                  rules=rules)
    if method == "greedy":
        return greedy(decoder, features, **common)
    if method == "sample":
        return sample(decoder, features, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p, generator=generator,
                      **common)
    return beam_search(decoder, features, beam_size=o.beam_size, length_penalty=o.length_penalty,
                       length_alpha=o.length_alpha, beam_groups=o.beam_groups, diversity_lambda=o.diversity_lambda,
                       num_return=o.num_return, **common)
