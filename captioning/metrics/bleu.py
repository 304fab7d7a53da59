"""Corpus BLEU with the official COCO caption scorer's exact arithmetic (or nltk's, on request).

    BLEU-N = BP * (p_1 * ... * p_N) ** (1/N)
    p_n    = sum_i matches_n(i) / sum_i guesses_n(i)     clipped n-gram matches over hypothesis n-grams
    BP     = 1 if c > r else exp(1 - r/c)                c = sum_i |hyp_i|, r = sum_i |closest ref_i|

matches_n(i) clips each hypothesis n-gram count by its largest count in any one reference of image i;
the closest reference is the one whose length is nearest |hyp_i| (ties: the shorter one; the official
Bleu.compute_score always asks BleuScorer for option="closest"). Both flavours
share all of that; they differ only where a formula would divide by zero or take log(0):

- coco (pycocoevalcap's bleu_scorer.py, to the last digit): guesses_n(i) = max(0, |hyp_i| - n + 1), so
  a hypothesis shorter than n tokens adds no n-grams; every precision is (matches + 1e-15) /
  (guesses + 1e-9), which keeps a zero precision finite and tiny rather than an error; BP uses the
  same smoothed ratio. Per-image scores are the same formulas applied to one image.
- nltk (nltk.translate.bleu_score.corpus_bleu, weights (1/N,)*N, no smoothing): guesses_n(i) =
  max(1, |hyp_i| - n + 1); a zero precision becomes sys.float_info.min; no unigram match at all gives 0.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Mapping, Sequence

FLAVOURS = ("coco", "nltk")
# The official scorer's smoothing constants (it calls the first `tiny`, the second `small`): the
# numerator one turns 0/0 into ~1e-6 instead of an error, the denominator one avoids dividing by 0.
NUMERATOR_EPS = 1e-15
DENOMINATOR_EPS = 1e-9


@dataclass
class Counts:
    """Everything BLEU needs about one image, or, summed, about a corpus."""

    hyp_len: int
    ref_len: int  # length of the closest reference
    matches: list[int]  # clipped n-gram matches, n = 1..max_n
    guesses: list[int]  # hypothesis n-grams, n = 1..max_n (floored per image by the flavour)

    def __iadd__(self, other: Counts) -> Counts:
        self.hyp_len += other.hyp_len
        self.ref_len += other.ref_len
        self.matches = [a + b for a, b in zip(self.matches, other.matches)]
        self.guesses = [a + b for a, b in zip(self.guesses, other.guesses)]
        return self


@dataclass
class BleuScore:
    bleu: list[float]  # BLEU-1..max_n, fractions in [0, 1]
    per_image: dict[Hashable, list[float]]  # image id -> its own BLEU-1..max_n
    hyp_len: int  # total hypothesis tokens
    ref_len: int  # total closest-reference tokens

    @property
    def ratio(self) -> float:
        """hyp_len / ref_len as the official scorer reports it (smoothed, so never a division by 0)."""
        return (self.hyp_len + NUMERATOR_EPS) / (self.ref_len + DENOMINATOR_EPS)

    def as_dict(self) -> dict[str, float]:
        """{"bleu1": ..., "bleuN": ..., "hyp_len", "ref_len", "ratio"}: the corpus figures."""
        return {**{f"bleu{n}": b for n, b in enumerate(self.bleu, 1)},
                "hyp_len": self.hyp_len, "ref_len": self.ref_len, "ratio": self.ratio}


def ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    """The n-grams of `tokens` as tuples, in order.

    zip over shifted slices is nltk.util.ngrams without importing nltk (whose package import pulls in
    scipy and costs more than scoring a whole dataset); the tests check us against nltk's corpus_bleu.
    """
    return zip(*[tokens[i:] for i in range(n)])


def count_image(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
                min_guess: int = 0) -> Counts:
    """Clipped matches, n-gram totals and lengths for one image (min_guess: 0 coco, 1 nltk).

    matches_n = sum over hypothesis n-grams g of min(count in hypothesis, largest count in one reference).
    Set operations do the work (this is the hot loop of an evaluation): when no n-gram repeats in the
    hypothesis, every one found in some reference matches exactly once; only repeats need counting.
    """
    if not references:
        raise ValueError("every hypothesis needs at least one reference")
    matches = []
    for n in range(1, max_n + 1):
        hyp_grams = list(ngrams(hypothesis, n))
        distinct = set(hyp_grams)
        found = distinct.intersection(set().union(*[ngrams(r, n) for r in references]))
        if len(distinct) == len(hyp_grams):
            matches.append(len(found))
        else:
            hyp_counts = Counter(hyp_grams)
            ref_counts = [Counter(ngrams(r, n)) for r in references]
            matches.append(sum(min(hyp_counts[g], max(c[g] for c in ref_counts)) for g in found))
    hyp_len = len(hypothesis)
    ref_len = min((abs(len(r) - hyp_len), len(r)) for r in references)[1]
    guesses = [max(min_guess, hyp_len - n + 1) for n in range(1, max_n + 1)]
    return Counts(hyp_len, ref_len, matches, guesses)


def coco_bleu(c: Counts) -> list[float]:
    """BLEU-1..N exactly as pycocoevalcap's BleuScorer.compute_score computes them (same float ops)."""
    scores, product = [], 1.0
    for m, g in zip(c.matches, c.guesses):
        product *= (m + NUMERATOR_EPS) / (g + DENOMINATOR_EPS)
        scores.append(product ** (1.0 / (len(scores) + 1)))  # geometric mean of p_1..p_n
    ratio = (c.hyp_len + NUMERATOR_EPS) / (c.ref_len + DENOMINATOR_EPS)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def nltk_bleu(c: Counts) -> list[float]:
    """BLEU-1..N exactly as nltk's corpus_bleu with weights (1/n,)*n and no smoothing."""
    if c.matches[0] == 0:
        return [0.0] * len(c.matches)
    if c.hyp_len > c.ref_len:
        bp = 1.0
    else:
        bp = math.exp(1 - c.ref_len / c.hyp_len)
    log_p = [math.log(m / g) if m else math.log(sys.float_info.min) for m, g in zip(c.matches, c.guesses)]
    return [bp * math.exp(math.fsum(1 / n * lp for lp in log_p[:n])) for n in range(1, len(log_p) + 1)]


_COMBINE: dict[str, tuple[int, Callable[[Counts], list[float]]]] = {"coco": (0, coco_bleu), "nltk": (1, nltk_bleu)}


def corpus_bleu(hypotheses: Mapping[Hashable, Sequence[str]], references: Mapping[Hashable, Sequence[Sequence[str]]],
                max_n: int = 4, flavour: str = "coco") -> BleuScore:
    """Corpus BLEU-1..max_n of tokenized hypotheses ({id: tokens}) against references ({id: [tokens, ...]}).

    Scores the images in `hypotheses`; each needs at least one reference (extra references are ignored).
    """
    if flavour not in _COMBINE:
        raise ValueError(f"unknown BLEU flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    missing = [i for i in hypotheses if not references.get(i)]
    if missing:
        raise ValueError(f"no references for image ids {missing[:5]}")
    min_guess, combine = _COMBINE[flavour]
    total = Counts(0, 0, [0] * max_n, [0] * max_n)
    per_image = {}
    for image_id, hyp in hypotheses.items():
        counts = count_image(hyp, references[image_id], max_n, min_guess)
        per_image[image_id] = combine(counts)
        total += counts
    return BleuScore(combine(total), per_image, total.hyp_len, total.ref_len)
