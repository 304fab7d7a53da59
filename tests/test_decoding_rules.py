"""Decoding controls: n-gram blocking, <unk> suppression, a minimum length, nucleus sampling, length penalties."""
from __future__ import annotations

import pytest
import torch

from captioning.config import DecodeOptions, check
from captioning.decoding import SpecialIds, TokenRules, decode, length_divisor, sample
from captioning.io import InputError
from test_decoding import BOS, EOS, IDS, PAD, features, make, strip

UNK = 3
METHODS = [("greedy", {}), ("beam", {"beam_size": 4}), ("sample", {"seed": 0})]


def seeded(options: dict) -> dict:
    """The method's options, sampling from a generator of its own seed at every call (no order dependence)."""
    if "seed" not in options:
        return options
    return {"generator": torch.Generator().manual_seed(options["seed"])}


def ngrams(caption: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(caption[i:i + n]) for i in range(len(caption) - n + 1)]


def repeats(captions: list[list[int]], n: int) -> int:
    return sum(len(ngrams(c, n)) - len(set(ngrams(c, n))) for c in captions)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_no_repeated_ngram_with_blocking(seed, n, method, options):
    """Property over random models: with block_ngram_repeat=n no caption holds an n-gram twice; without, some do."""
    decoder, feats = make(vocab_size=7, seed=seed, eos_bias=-3.0), features(24, seed=seed)  # long captions, 4 words
    with torch.no_grad():
        run = lambda **kw: strip(decode(decoder, feats, method, max_len=16, **seeded(options), **kw, **IDS).ids)  # noqa
        free, blocked = run(), run(block_ngram_repeat=n)
    assert repeats(free, n) > 0  # the toy model does repeat itself
    assert repeats(blocked, n) == 0


def words(ids: torch.Tensor) -> list[int]:
    return [len(c) - (c[-1] == EOS) for c in strip(ids)]


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
def test_suppress_unk_and_min_len(method, options):
    decoder, feats = make(vocab_size=9, eos_bias=2.0), features(32)
    with torch.no_grad():
        run = lambda **kw: decode(decoder, feats, method, max_len=10, unk_id=UNK, **seeded(options), **kw,  # noqa
                                  **IDS).ids
        free, long = run(), run(min_len=4)
        decoder.out.bias[UNK] += 3.0  # make <unk> the model's favourite word
        unk, clean = run(), run(suppress_unk=True)
    assert min(words(free)) < 4 <= min(words(long))
    assert (long[:, :4] != EOS).all()
    assert (unk == UNK).any() and not (clean == UNK).any()


def test_rules_leave_a_row_one_token():
    """If n-gram blocking and min_len would ban every word, <end> stays allowed (no row of -inf)."""
    rules = TokenRules(EOS, min_len=5, block_ngram_repeat=1)
    logp = torch.zeros(1, 4).log_softmax(-1)
    out = rules(logp, torch.tensor([[0, 1, 3]]))  # 0, 1, 3 were used, 2 is <end>: all banned before min_len
    assert out.isfinite().tolist() == [[False, False, True, False]]


def test_nucleus_sampling_keeps_the_fewest_words_that_reach_p():
    decoder = make(vocab_size=6)
    feats = features(1).expand(4000, -1)
    with torch.no_grad():
        probs = decoder.step(torch.full((1,), BOS), decoder.init_state(feats[:1]), feats[:1])[0].softmax(-1)[0]
        ranked = probs.sort(descending=True)
        p = float(ranked.values[:2].sum()) - 1e-3  # the first two words reach p, the first alone does not
        first = lambda **kw: sample(decoder, feats, DecodeOptions(max_len=1, **kw), SpecialIds(**IDS),  # noqa
                                    generator=torch.Generator().manual_seed(0)).ids[:, 0]
        nucleus, everything, plain = first(top_p=p), first(top_p=1.0), first()
    assert set(nucleus.tolist()) == set(ranked.indices[:2].tolist())
    renorm = ranked.values[:2] / ranked.values[:2].sum()
    assert torch.allclose(torch.bincount(nucleus, minlength=6).float()[ranked.indices[:2]] / 4000, renorm, atol=0.03)
    assert torch.equal(everything, plain)  # top_p=1 removes nothing


def test_length_penalties():
    length = torch.tensor([1.0, 4.0, 9.0])
    assert torch.equal(length_divisor(length, "none"), torch.ones(3))
    assert torch.allclose(length_divisor(length, "avg", 0.5), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(length_divisor(length, "wu", 1.0), (5 + length) / 6)


def test_options_are_checked_and_length_norm_says_what_replaced_it():
    with pytest.raises(InputError, match="use decode.length_penalty=avg decode.length_alpha=0.9"):
        check(DecodeOptions(length_norm=0.9))
    with pytest.raises(InputError, match="length_norm=0 is length_penalty=none"):
        check(DecodeOptions(length_norm=0.0))
    with pytest.raises(InputError) as e:
        check(DecodeOptions(length_penalty="log", top_p=0.0, min_len=30, block_ngram_repeat=-1))
    for part in ("decode.length_penalty must be one of none, avg, wu", "decode.top_p must be in (0, 1]",
                 "decode.min_len (30) must be below decode.max_len (20)", "decode.block_ngram_repeat must be at least 0"):
        assert part in str(e.value)
    decoder = make()
    with pytest.raises(ValueError, match="suppress_unk needs the vocabulary's unk_id"):
        decode(decoder, features(2), "greedy", suppress_unk=True, **IDS)
    assert PAD == 0  # strip() of test_decoding drops <pad> and <end>


def test_diverse_beam_groups_start_differently_and_num_return_ranks_beams():
    decoder, feats = make(vocab_size=9, eos_bias=-1.0), features(12)
    first_words = lambda ids: [set(ids[i:i + 4, 0].tolist()) for i in range(0, len(ids), 4)]  # noqa: E731
    with torch.no_grad():
        plain = decode(decoder, feats, "beam", beam_size=4, num_return=4, max_len=8, **IDS).ids
        diverse = decode(decoder, feats, "beam", beam_size=4, beam_groups=4, diversity_lambda=100.0, num_return=4,
                         max_len=8, **IDS).ids
        best = decode(decoder, feats, "beam", beam_size=4, max_len=8, **IDS)
        ranked = decode(decoder, feats, "beam", beam_size=4, num_return=3, max_len=8, length_alpha=1.0, **IDS)
        alone = [decode(decoder, f[None], "beam", beam_size=4, beam_groups=2, diversity_lambda=1.0, num_return=2,
                        max_len=8, **IDS).ids for f in feats]
        batched = decode(decoder, feats, "beam", beam_size=4, beam_groups=2, diversity_lambda=1.0, num_return=2,
                         max_len=8, **IDS).ids
    assert len(plain) == len(diverse) == 48
    assert any(len(s) < 4 for s in first_words(plain))  # plain beams share first words
    assert all(len(s) == 4 for s in first_words(diverse))  # each group starts with its own word
    assert strip(best.ids) == strip(decode(decoder, feats, "beam", beam_size=4, num_return=4, max_len=8,
                                           **IDS).ids[::4])  # the first of n is the single best
    scores = ranked.score.view(12, 3)  # length_alpha 1: ranked by the mean log p per token, which is the score
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()
    assert strip(batched) == [c for a in alone for c in strip(a)]
    with pytest.raises(InputError, match="decode.beam_groups must be at least 1 and divide decode.beam_size"):
        check(DecodeOptions(beam_size=4, beam_groups=3))
    with pytest.raises(InputError, match="ranks the beams of decode.method=beam"):
        check(DecodeOptions(method="greedy", num_return=2))


def test_num_return_gives_distinct_captions_even_when_groups_meet():
    """A peaked model: groups end on the same captions, yet the n returned are distinct while the beams hold n."""
    decoder, feats = make(vocab_size=6, eos_bias=1.0), features(10)
    run = lambda n: strip(decode(decoder, feats, "beam", beam_size=4, beam_groups=2, diversity_lambda=0.1,  # noqa
                                 num_return=n, max_len=6, **IDS).ids)
    with torch.no_grad():
        decoder.out.weight.mul_(5)
        every, two = run(4), run(2)
    beams = [every[i:i + 4] for i in range(0, 40, 4)]
    assert any(len(set(b)) < 4 for b in beams)  # the groups did meet
    assert all(len(set(two[2 * i:2 * i + 2])) == min(2, len(set(b))) for i, b in enumerate(beams))
    assert all(two[2 * i] == b[0] for i, b in enumerate(beams))  # the best stays first
