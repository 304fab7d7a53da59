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

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from captioning.config import DecodeOptions, check
from captioning.text import Vocabulary

D = DecodeOptions  # the defaults below are its field defaults: one source for the API and the configs


class Decoded(NamedTuple):
    ids: Tensor    # (B, L) token ids, <pad> after <end>
    score: Tensor | None  # (B,) mean log p per token, <end> included (None: greedy with_scores=False)
    attention: Tensor | None = None  # (B, L, grid) with_attention: the attention decoder's weights per token


class SpecialIds(NamedTuple):
    """The token ids decoding needs (a `Vocabulary` has the same attributes)."""
    bos_id: int
    eos_id: int
    pad_id: int = 0
    unk_id: int | None = None


SPECIAL_IDS = SpecialIds(Vocabulary.bos_id, Vocabulary.eos_id, Vocabulary.pad_id, Vocabulary.unk_id)


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

    @classmethod
    def of(cls, opts: DecodeOptions, ids: SpecialIds) -> "TokenRules":
        """The rules `opts` set: min_len, block_ngram_repeat, suppress_unk (with `ids.unk_id`)."""
        return cls(ids.eos_id, opts.min_len, opts.block_ngram_repeat, ids.unk_id if opts.suppress_unk else None)

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


def _generate(decoder, features: Tensor, choose: Callable[[Tensor], Tensor], opts: DecodeOptions, ids: SpecialIds,
              with_attention: bool = False, with_scores: bool = True) -> Decoded:
    """Feed each step's chosen token (from the rule-abiding log-probabilities) back in; stop when every row has
    produced <end>. Without scores `choose` gets the rule-abiding logits: log p = logits - log sum exp(logits) is
    the same shift for every word of a row, so their argmax is log p's (but where two logits differ by less than log
    p's rounding), and the log-softmax over the vocabulary, about a tenth of a greedy step on CPU, is skipped."""
    B, rules = features.shape[0], TokenRules.of(opts, ids)
    state = decoder.init_state(features)
    tokens = features.new_full((B,), ids.bos_id, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=features.device)
    logp_sum, length = torch.zeros(B, device=features.device), torch.zeros(B, device=features.device)
    seqs, attention = features.new_empty((B, 0), dtype=torch.long), []
    for _ in range(opts.max_len):
        logits, state, alpha = decoder.step(tokens, state, features)  # (B, V)
        if with_attention:
            attention.append(alpha)  # (B, grid): where the decoder looked for this token
        logits = logits.float()
        logp = logits.log_softmax(-1) if with_scores else logits
        if rules:
            logp = rules(logp, seqs)
        tokens = choose(logp).masked_fill(done, ids.pad_id)
        if with_scores:
            logp_sum += logp.gather(1, tokens[:, None])[:, 0].masked_fill(done, 0.0)
            length += (~done).float()  # tokens up to and including <end>
        seqs = torch.cat([seqs, tokens[:, None]], 1)
        done |= tokens == ids.eos_id
        if done.all():
            break
    return Decoded(_pad_after_eos(seqs, ids.eos_id, ids.pad_id),
                   logp_sum / length.clamp(min=1) if with_scores else None,
                   torch.stack(attention, 1) if with_attention else None)


def greedy(decoder, features: Tensor, opts: DecodeOptions = DecodeOptions(method="greedy"),
           ids: SpecialIds = SPECIAL_IDS, with_attention: bool = False, with_scores: bool = True) -> Decoded:
    """Argmax decoding: w_t = argmax_w p(w | w_<t, v). Deterministic, but prone to generic captions.
    `with_scores=False` returns the same ids without their scores (score None), at less cost per step."""
    # max(-1).indices: the same first maximal index as argmax(-1), at half its cost on an AVX512 CPU and 1.2x it on
    # an AVX2-only one (torch 2.14.1, 512 x 10,000 log-probabilities: 6.2 ms against 5.1 on a 2-core AMD EPYC)
    return _generate(decoder, features, lambda logp: logp.max(-1).indices, opts, ids, with_attention, with_scores)


def keep_top_k(logits: Tensor, top_k: int | None) -> Tensor:
    """The logits (..., V) with every word below the k-th most likely at -inf (None: unchanged)."""
    if top_k is None:
        return logits
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def sample(decoder, features: Tensor, opts: DecodeOptions = DecodeOptions(method="sample"),
           ids: SpecialIds = SPECIAL_IDS, generator: torch.Generator | None = None,
           with_attention: bool = False) -> Decoded:
    """Sampling: w_t ~ softmax(log p / temperature), optionally restricted to the top-k words and to the nucleus,
    the fewest most likely words whose probabilities sum to at least top_p (Holtzman et al. 2020).

    Temperature < 1 sharpens the distribution towards argmax; > 1 flattens it (more variety).
    """
    if opts.temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for argmax)")

    def choose(logp: Tensor) -> Tensor:
        logits = keep_top_k(logp / opts.temperature, opts.top_k)
        if opts.top_p is not None:  # drop a word when the more likely words before it already reach top_p
            probs, order = logits.softmax(-1).sort(-1, descending=True)
            outside = probs.cumsum(-1) - probs >= opts.top_p
            logits = logits.masked_fill(outside.scatter(1, order, outside), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    return _generate(decoder, features, choose, opts, ids, with_attention)


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


def beam_search(decoder, features: Tensor, opts: DecodeOptions = DecodeOptions(), ids: SpecialIds = SPECIAL_IDS,
                with_attention: bool = False) -> Decoded:
    """Beam search over (B * K) rows; returns the best `num_return` sequences per image ((B * n, L), image by
    image, best first).

    Keeps the K best prefixes by score / `length_divisor(length, length_penalty, length_alpha)`, score =
    sum_t log p(w_t | w_<t, v), length counting <end>: the score the final beams are ranked by, at every step. A
    finished beam (ended with <end>) stays in the beam with its score frozen, competing with the unfinished ones.
    An image whose K beams have all ended leaves the batch (its rows are computed no more).

    With num_return n > 1 the n are distinct captions where the beams hold that many, ranked by that score (the
    scores returned are the mean log p per token, which need not fall in that order).

    Diverse beam search (Vijayakumar et al. 2018) with `beam_groups` G: the K beams form G groups of K / G that
    are pruned one after the other at every step, group g choosing among its continuations by

        log p(prefix, w) - diversity_lambda * (times the groups before g chose w at this step)

    (Hamming diversity), so the groups spread over different captions; the scores kept are the true log p.
    """
    B, K, device = features.shape[0], opts.beam_size, features.device
    rules = TokenRules.of(opts, ids)
    state = decoder.reorder_state(decoder.init_state(features), torch.arange(B, device=device).repeat_interleave(K))
    beams = _Beams.start(features, K, opts.beam_groups, ids.bos_id)
    final = _FinalBeams(B, K, opts.max_len, ids.eos_id, device)
    for t in range(opts.max_len):
        logits, state, alpha = decoder.step(beams.tokens, state, beams.feats)  # alpha (n*K, grid): per parent row
        logp = logits.float().log_softmax(-1)
        if rules:
            logp = rules(logp, beams.seqs)
        rows = beams.select(*_continuations(beams, logp, opts, ids.eos_id), alpha if with_attention else None,
                            ids.eos_id)
        ended = beams.finished.all(1) if t < opts.max_len - 1 else torch.ones_like(beams.finished[:, 0])  # (n,)
        if ended.any():
            final.store(beams, ended)
            if ended.all():
                break
            rows = beams.drop(~ended, rows)
        state = decoder.reorder_state(state, rows)
    return final.best(opts, ids)


def _continuations(beams: "_Beams", logp: Tensor, opts: DecodeOptions, eos_id: int) -> tuple[Tensor, Tensor]:
    """Every continuation's summed log p (n, K, V), and the K kept per image as flat indices into K * V (n, K)."""
    n, K = beams.scores.shape
    logp = logp.view(n, K, -1)  # (n, K, V)
    V, finished = logp.shape[-1], beams.finished
    # A finished beam may only "emit" <end> again, at no cost, so its score stays put.
    logp = logp.masked_fill(finished[..., None], float("-inf"))
    logp[..., eos_id] = logp[..., eos_id].masked_fill(finished, 0.0)
    cand = beams.scores[..., None] + logp  # (n, K, V)
    # Pruned by the score the final beams are ranked by (OpenNMT-py's way): with raw log p, short captions that
    # ended early keep their high scores and crowd out the longer ones a length penalty would have preferred.
    rank = cand / length_divisor(beams.lengths + (~finished).float(), opts.length_penalty,
                                 opts.length_alpha)[..., None]
    if opts.beam_groups == 1:
        return cand, rank.view(n, K * V).topk(K, dim=-1).indices
    return cand, _diverse_topk(rank, finished, opts.beam_groups, opts.diversity_lambda)


@dataclass
class _Beams:
    """The K live beams of each of the n images still searched (`alive`, their indices): summed log p, lengths
    counting <end>, whether each ended (n, K); token ids (n*K, t); the features each row reads (n*K, ...); the
    last tokens (n*K,); with attention, the maps so far (n*K, t, grid)."""
    alive: Tensor
    scores: Tensor
    lengths: Tensor
    finished: Tensor
    seqs: Tensor
    feats: Tensor
    tokens: Tensor
    attention: Tensor | None = None

    @classmethod
    def start(cls, features: Tensor, K: int, groups: int, bos_id: int) -> "_Beams":
        B, device = features.shape[0], features.device
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, ::K // groups] = 0.0  # all beams start identical: expand only the first of each group
        return cls(torch.arange(B, device=device), scores, torch.zeros(B, K, device=device),
                   torch.zeros(B, K, dtype=torch.bool, device=device),
                   torch.empty(B * K, 0, dtype=torch.long, device=device), features.repeat_interleave(K, 0),
                   torch.full((B * K,), bos_id, dtype=torch.long, device=device))

    def select(self, cand: Tensor, idx: Tensor, alpha: Tensor | None, eos_id: int) -> Tensor:
        """Go on with the continuations `idx` (n, K) of the candidates `cand` (n, K, V); returns each new beam's
        parent row (n*K,)."""
        n, K, V = cand.shape
        self.scores = cand.view(n, K * V).gather(1, idx)  # the true log p
        beam, tokens = idx // V, idx % V
        rows = (torch.arange(n, device=idx.device)[:, None] * K + beam).view(-1)
        self.seqs = torch.cat([self.seqs[rows], tokens.view(-1, 1)], 1)
        if alpha is not None:  # each new beam inherits its parent's maps and adds the one of this step
            new = alpha[rows][:, None]
            self.attention = new if self.attention is None else torch.cat([self.attention[rows], new], 1)
        self.lengths = self.lengths.gather(1, beam) + (~self.finished.gather(1, beam)).float()
        self.finished = self.finished.gather(1, beam) | (tokens == eos_id)
        self.tokens = tokens.reshape(-1)
        return rows

    def drop(self, keep: Tensor, rows: Tensor) -> Tensor:
        """Keep the images where `keep` (n,) is true; returns their parent rows, of `rows` (n*K,)."""
        n, K = self.scores.shape
        kept = torch.arange(n * K, device=keep.device).view(n, K)[keep].view(-1)
        self.alive, self.scores, self.lengths, self.finished = (self.alive[keep], self.scores[keep],
                                                                self.lengths[keep], self.finished[keep])
        self.seqs, self.feats, self.tokens = self.seqs[kept], self.feats[kept], self.tokens[kept]
        self.attention = None if self.attention is None else self.attention[kept]
        return rows.view(n, K)[keep].view(-1)


class _FinalBeams:
    """The K final beams of every image, stored as its search ends: scores and lengths (B, K), token ids
    (B*K, longest) padded with <end>, attention maps (B*K, longest, grid) padded with zeros."""

    def __init__(self, B: int, K: int, max_len: int, eos_id: int, device: torch.device):
        self.K, self.longest = K, 0
        self.scores = torch.empty(B, K, device=device)
        self.lengths = torch.empty(B, K, device=device)
        self._seqs = torch.full((B * K, max_len), eos_id, dtype=torch.long, device=device)
        self._attention = None

    def store(self, beams: _Beams, ended: Tensor) -> None:
        """The beams of the images where `ended` (n,) is true."""
        images, K, t = beams.alive[ended], self.K, beams.seqs.shape[-1]
        rows = (images[:, None] * K + torch.arange(K, device=images.device)).view(-1)
        self.scores[images], self.lengths[images] = beams.scores[ended], beams.lengths[ended]
        self._seqs[rows, :t] = beams.seqs.view(-1, K, t)[ended].reshape(-1, t)
        self.longest = max(self.longest, t)
        if beams.attention is not None:
            grid = beams.attention.shape[-1]
            if self._attention is None:
                self._attention = beams.attention.new_zeros(*self._seqs.shape, grid)
            self._attention[rows, :t] = beams.attention.view(-1, K, t, grid)[ended].reshape(-1, t, grid)

    def best(self, opts: DecodeOptions, ids: SpecialIds) -> Decoded:
        """The best `num_return` beams of every image, by their length-penalised score."""
        B, K = self.scores.shape
        scores, lengths, seqs = self.scores, self.lengths, self._seqs[:, :self.longest]
        offsets = (torch.arange(B, device=scores.device) * K)[:, None]  # (B, 1)
        best = (scores / length_divisor(lengths, opts.length_penalty, opts.length_alpha)).sort(
            dim=-1, descending=True, stable=True).indices  # (B, K)
        if opts.num_return > 1:  # distinct captions first: beam groups may end on the same one
            ranked = _pad_after_eos(seqs[(offsets + best).view(-1)], ids.eos_id, ids.pad_id).view(B, K, -1)
            same = (ranked[:, :, None] == ranked[:, None]).all(-1).tril(-1).any(-1)  # (B, K): equals a better beam
            best = best.gather(1, same.long().sort(dim=-1, stable=True).indices)
        best = best[:, :opts.num_return]  # (B, n)
        winners = (offsets + best).view(-1)
        attention = None if self._attention is None else self._attention[winners, :self.longest]
        return Decoded(_pad_after_eos(seqs[winners], ids.eos_id, ids.pad_id),
                       (scores.gather(1, best) / lengths.gather(1, best).clamp(min=1)).view(-1), attention)


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
    token's attention weights over the grid. `unk_id` is needed for suppress_unk. One more option,
    `with_scores=False`, lets greedy skip its scores (None); sampling and beam search need log p to choose, and
    always return them."""
    with_scores = options.pop("with_scores", True)
    o = DecodeOptions(method=method, **options)
    check(o)
    if o.suppress_unk and unk_id is None:
        raise ValueError("suppress_unk needs the vocabulary's unk_id")
    ids = SpecialIds(bos_id, eos_id, pad_id, unk_id)
    if method == "greedy":
        return greedy(decoder, features, o, ids, with_attention, with_scores)
    if method == "sample":
        return sample(decoder, features, o, ids, generator, with_attention)
    return beam_search(decoder, features, o, ids, with_attention)
