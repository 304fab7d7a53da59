"""Batched greedy / sampling / beam search, checked against independent references."""
from __future__ import annotations

import itertools

import pytest
import torch

from captioning.config import DecodeOptions as D
from captioning.decoding import SpecialIds, beam_search, decode, greedy, length_divisor, sample
from captioning.models import CaptionDecoder, DecoderConfig
from captioning.models.decoder_base import StepOut

PAD, BOS, EOS = 0, 1, 2
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)
SIDS = SpecialIds(BOS, EOS, PAD)  # the same, as greedy, sample and beam_search take them


def make(vocab_size=12, cell="lstm", inject="init", seed=2, eos_bias=0.25) -> CaptionDecoder:
    """A random decoder; `eos_bias` makes <end> likely enough that captions end at varied lengths."""
    torch.manual_seed(seed)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=vocab_size, feature_dim=5, embed_dim=8, hidden_dim=16,
                                           cell=cell, inject=inject)).eval()
    with torch.no_grad():
        decoder.out.weight.mul_(4)  # peakier distributions, as in a trained model
        decoder.out.bias[EOS] += eos_bias
    return decoder


def features(n=8, seed=1) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))


def strip(seqs: torch.Tensor) -> list[tuple[int, ...]]:
    """Rows -> token tuples up to and including the first <end> (what a caption is made of)."""
    out = []
    for row in seqs.tolist():
        out.append(tuple(row[: row.index(EOS) + 1] if EOS in row else row))
    return out


def sequence_scores(decoder, feats: torch.Tensor, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log p, length) of each row of `seqs` (N, L) for image rows `feats` (N, D), computed with
    the teacher-forced forward(): tokens count up to and including the first <end>."""
    captions = torch.cat([torch.full((len(seqs), 1), BOS), seqs], 1)
    logp = decoder(feats, captions).logits.log_softmax(-1).gather(2, seqs[..., None])[..., 0]  # (N, L)
    is_eos = seqs == EOS
    counted = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to and including the first <end>
    return (logp * counted).sum(1), counted.sum(1).float()


@pytest.mark.parametrize("cell,inject,eos_bias", [("lstm", "init", 0.5), ("gru", "pre", 1.0), ("rnn", "par", 1.5)])
def test_greedy_takes_the_argmax_at_every_step(cell, inject, eos_bias):
    decoder, feats = make(cell=cell, inject=inject, eos_bias=eos_bias), features()
    with torch.no_grad():
        seqs = greedy(decoder, feats, D(max_len=10), SIDS).ids
        logits = decoder(feats, torch.cat([torch.full((len(feats), 1), BOS), seqs], 1)).logits  # (B, L, V)
    for row, (tokens, argmax) in enumerate(zip(seqs.tolist(), logits.argmax(-1).tolist())):
        n = tokens.index(EOS) + 1 if EOS in tokens else len(tokens)
        assert tokens[:n] == argmax[:n], row
        assert all(t == PAD for t in tokens[n:])  # padded after <end>
    assert seqs.shape[1] <= 10 and any(EOS in r for r in seqs.tolist())


@pytest.mark.parametrize("cell,inject", [("lstm", "init"), ("gru", "pre"), ("rnn", "par")])
def test_beam_size_one_is_greedy(cell, inject):
    decoder, feats = make(cell=cell, inject=inject), features(16)
    with torch.no_grad():
        one, g = beam_search(decoder, feats, D(beam_size=1, max_len=12), SIDS), greedy(decoder, feats, D(max_len=12), SIDS)
    assert torch.equal(one.ids, g.ids) and torch.allclose(one.score, g.score)


@pytest.mark.parametrize("beam_size,options", [(3, dict(length_penalty="none")), (5, {}),
                                                (4, dict(length_penalty="wu", length_alpha=1.0)),
                                                (3, dict(block_ngram_repeat=2, min_len=3))])
def test_batched_beam_search_equals_one_image_at_a_time(beam_size, options):
    decoder, feats = make(), features(10)
    with torch.no_grad():
        batched = strip(decode(decoder, feats, "beam", beam_size=beam_size, max_len=12, **options, **IDS).ids)
        alone = [strip(decode(decoder, f[None], "beam", beam_size=beam_size, max_len=12, **options, **IDS).ids)[0]
                 for f in feats]
    assert batched == alone
    assert len({len(s) for s in batched}) > 1  # captions of different lengths were in one batch


@pytest.mark.parametrize("penalty,alpha", [("none", 0.0), ("avg", 1.0), ("wu", 0.8)])
def test_wide_beam_finds_the_exhaustive_optimum(penalty, alpha):
    """Vocabulary of 5, at most 4 tokens: score all 5**4 continuations with forward() and compare."""
    V, L = 5, 4
    decoder, feats = make(vocab_size=V, seed=3, eos_bias=0.5), features(12)
    every = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (V**L, L)
    optimum, greedy_is_optimal = [], []
    with torch.no_grad():
        greedy_out = strip(greedy(decoder, feats, D(max_len=L), SIDS).ids)
        for i, f in enumerate(feats):
            score, length = sequence_scores(decoder, f.expand(len(every), -1), every)
            best = strip(every[(score / length_divisor(length, penalty, alpha)).argmax()][None])[0]
            optimum.append(best)
            greedy_is_optimal.append(greedy_out[i] == best)
        beam = strip(beam_search(decoder, feats, D(beam_size=V ** L, length_penalty=penalty, length_alpha=alpha,
                                                     max_len=L), SIDS).ids)
    assert beam == optimum
    assert not all(greedy_is_optimal)  # the toy problem is hard enough that greedy misses the optimum


def test_beam_search_scores_at_least_as_well_as_greedy_on_average():
    decoder, feats = make(), features(32)
    with torch.no_grad():
        g = greedy(decoder, feats, D(max_len=12), SIDS)
        b = beam_search(decoder, feats, D(beam_size=5, max_len=12, length_penalty="none"), SIDS)  # raw log p, as scored
        g_score, g_length = sequence_scores(decoder, feats, g.ids)
        b_score, b_length = sequence_scores(decoder, feats, b.ids)
    assert b_score.mean() > g_score.mean()
    # the reported score is the mean log p per token of the returned caption, as the forward pass computes it
    assert torch.allclose(g.score, g_score / g_length, atol=1e-5) and torch.allclose(b.score, b_score / b_length, atol=1e-5)


def test_sampling_is_seeded_and_follows_the_distribution():
    decoder = make(vocab_size=6)
    feats = features(1).expand(4000, -1)

    def run(seed, **kw):
        return sample(decoder, feats, D(max_len=3, **kw), SIDS, generator=torch.Generator().manual_seed(seed)).ids

    with torch.no_grad():
        a, b, c = run(0), run(0), run(1)
        probs = decoder.step(torch.full((1,), BOS), decoder.init_state(feats[:1]), feats[:1])[0].softmax(-1)[0]
        top2 = run(2, top_k=2)
        hot = run(3, temperature=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    freq = torch.bincount(a[:, 0], minlength=6).float() / len(a)
    assert torch.allclose(freq, probs, atol=0.03)  # 4000 draws: std of each frequency <= 0.008
    allowed = set(probs.topk(2).indices.tolist())
    assert set(top2[:, 0].tolist()) == allowed
    renorm = probs[sorted(allowed)] / probs[sorted(allowed)].sum()
    assert torch.allclose(torch.bincount(top2[:, 0], minlength=6).float()[sorted(allowed)] / len(a), renorm, atol=0.03)
    sharp = (probs.log() / 0.5).softmax(-1)  # temperature 0.5 squares and renormalises p
    assert torch.allclose(torch.bincount(hot[:, 0], minlength=6).float() / len(a), sharp, atol=0.03)


def test_top_k_one_and_tiny_temperature_are_greedy():
    decoder, feats = make(), features()
    with torch.no_grad():
        expected = greedy(decoder, feats, D(max_len=8), SIDS).ids
        assert torch.equal(sample(decoder, feats, D(max_len=8, top_k=1), SIDS).ids, expected)
        assert torch.equal(sample(decoder, feats, D(max_len=8, temperature=1e-4), SIDS).ids, expected)


def test_decode_dispatches_and_validates():
    decoder, feats = make(), features(4)
    with torch.no_grad():
        assert torch.equal(decode(decoder, feats, "beam", beam_size=2, max_len=6, **IDS).ids,
                           beam_search(decoder, feats, D(beam_size=2, max_len=6), SIDS).ids)
        assert torch.equal(decode(decoder, feats, "greedy", max_len=6, **IDS).ids,
                           greedy(decoder, feats, D(max_len=6), SIDS).ids)
        out = decode(decoder, feats, "sample", max_len=6, generator=torch.Generator().manual_seed(0), **IDS).ids
    assert out.shape[0] == 4 and out.shape[1] <= 6
    with pytest.raises(ValueError, match="decode.method must be one of"):
        decode(decoder, feats, "nucleus", **IDS)
    with pytest.raises(ValueError, match="temperature"):
        sample(decoder, feats, D(temperature=0), SIDS)


class EndsOrNot(torch.nn.Module):
    """A stub decoder: image feature 1.0 makes <end> (id 2) almost certain at every step, 0.0 makes it almost
    impossible; the other words' log-probabilities depend on the previous token, so beams differ."""

    def __init__(self):
        super().__init__()
        self.rows = []  # rows of every step call

    def init_state(self, features):
        return torch.zeros(1, len(features), 1)

    @staticmethod
    def reorder_state(state, index):
        return state.index_select(1, index)

    def step(self, tokens, state, features):
        self.rows.append(len(tokens))
        logits = torch.stack([torch.arange(6.0) * 0.1 * (t % 3 + 1) for t in tokens.tolist()])
        logits[:, 2] = torch.where(features[:, 0] > 0.5, 50.0, -50.0)
        return StepOut(logits, state)


def test_images_whose_beams_all_ended_leave_the_batch():
    decoder = EndsOrNot()
    features = torch.tensor([[1.0], [0.0], [1.0]])  # images 0 and 2 end at once; image 1 runs to max_len
    out = beam_search(decoder, features, D(beam_size=3, max_len=6), SIDS)
    assert decoder.rows == [9, 9, 3, 3, 3, 3]  # after two steps only image 1's three beams are computed
    alone = [beam_search(EndsOrNot(), f[None], D(beam_size=3, max_len=6), SIDS) for f in features]
    assert torch.equal(out.ids, torch.nn.utils.rnn.pad_sequence([a.ids[0] for a in alone], batch_first=True))
    assert torch.equal(out.score, torch.cat([a.score for a in alone]))
    assert out.ids[0, 0] == 2 and out.ids.shape[1] == 6 and not (out.ids[1] == 2).any()  # <end> at once; 6 words


class StepChain(torch.nn.Module):
    """A stub decoder whose next-word probabilities depend on the previous word and the step (ids: <pad> <start>
    <end> a b): "b" ends at once, "a a" may end or go on, and "a a a a <end>" is the best caption per word."""
    P = {(1, 0): {3: .40, 2: .35, 4: .25}, (4, None): {2: .99}, (3, 1): {3: .80, 2: .05}, (3, 2): {2: .50, 3: .45},
         (3, 3): {3: .99}, (3, 4): {2: .99}}

    def init_state(self, features):
        return torch.zeros(len(features), dtype=torch.long)  # the step

    @staticmethod
    def reorder_state(state, index):
        return state.index_select(0, index)

    def step(self, tokens, state, features):
        rows = []
        for token, t in zip(tokens.tolist(), state.tolist()):
            p = torch.full((5,), 1e-4)
            for word, prob in (self.P.get((token, t)) or self.P.get((token, None)) or {2: .99}).items():
                p[word] = prob
            rows.append((p / p.sum()).log())
        return StepOut(torch.stack(rows), state + 1)


@pytest.mark.parametrize("beam_size", [2, 3])
def test_a_length_penalty_prunes_as_it_ranks(beam_size):
    """Pruned by raw log p, the captions that ended early ("<end>", "b <end>", "a a <end>": high raw scores) crowd
    "a a a" out of the beam, and the length penalty can only choose among them; pruned by the penalised score
    (the one the final beams are ranked by) the search finds the best caption per word."""
    out = beam_search(StepChain(), torch.zeros(1, 1),
                      D(beam_size=beam_size, max_len=6, length_penalty="avg", length_alpha=1.0), SIDS)
    assert out.ids.tolist() == [[3, 3, 3, 3, 2]]
    raw = beam_search(StepChain(), torch.zeros(1, 1), D(beam_size=beam_size, max_len=6, length_penalty="none"),
                      SIDS)
    assert raw.ids[0, 0].item() == 2  # without a penalty "<end>" alone is the best caption: log 0.35


def test_greedy_without_scores_gives_the_same_ids():
    decoder, feats = make(eos_bias=0.5), features(16)
    with torch.no_grad():
        scored = greedy(decoder, feats, D(max_len=10, block_ngram_repeat=2, min_len=2), SIDS)
        bare = decode(decoder, feats, "greedy", max_len=10, block_ngram_repeat=2, min_len=2, with_scores=False, **IDS)
    assert torch.equal(scored.ids, bare.ids) and bare.score is None and scored.score.shape == (16,)
