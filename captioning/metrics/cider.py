"""CIDEr-D (Vedantam et al. 2015) exactly as the official coco-caption scorer computes it, without Java.

The official `Cider` of coco-caption / pycocoevalcap is the CIDEr-D variant. Captions are PTB-tokenized
strings (`captioning.metrics.tokenize_for_scoring`), split on whitespace. For n = 1..4:

    g_n(c)  = TF-IDF vector of c's n-grams:  tf(w, c) * (log N - log max(1, df(w)))
              N = the number of images of the reference corpus, df(w) = how many of them have w in a reference
    sim_n(c, s) = sum_w min(g_n(c)_w, g_n(s)_w) * g_n(s)_w / (|g_n(c)| |g_n(s)|)       ("-D": the clipping)
                  * exp(-(l(c) - l(s))^2 / (2 sigma^2)),  sigma = 6                 ("-D": the length penalty)
    CIDEr-D(c, S) = 10 / |S| * sum_{s in S} mean_n sim_n(c, s)

with the official code's exact quirks: l(.) counts a caption's bigrams, not its words; a vector of norm 0
leaves the dot product undivided (it is 0 anyway); the document frequencies come from the references of
the images being scored (`score`), or from any corpus given to `CiderD(...)` (the training references, for
the retrieval baseline and for rewards). Tests check every per-image score against pycocoevalcap to 1e-9.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

import numpy as np

N, SIGMA = 4, 6.0


def ngrams(caption: str, n: int = N) -> Counter:
    """All 1..n-grams of a tokenized caption, with their counts (the official `precook`)."""
    words = caption.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class Vector:
    """A caption's TF-IDF weights per n-gram order, their norms, and its official 'length' (bigram count)."""

    __slots__ = ("weights", "norms", "length")

    def __init__(self, counts: Counter, idf: "CiderD"):
        self.weights: list[dict[tuple, float]] = [{} for _ in range(N)]
        squares, self.length = [0.0] * N, 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            w = float(tf) * (idf.log_n - idf.log_df(gram))
            self.weights[n][gram] = w
            squares[n] += w ** 2
            if n == 1:
                self.length += tf
        self.norms = [math.sqrt(s) for s in squares]


def similarity(hyp: Vector, ref: Vector) -> float:
    """mean_n sim_n(hyp, ref): the clipped, length-penalised cosine of the module docstring."""
    penalty = math.exp(-float(hyp.length - ref.length) ** 2 / (2 * SIGMA ** 2))
    total = 0.0
    for n in range(N):
        r = ref.weights[n]
        val = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in hyp.weights[n].items())
        if hyp.norms[n] != 0 and ref.norms[n] != 0:
            val /= hyp.norms[n] * ref.norms[n]
        total += val * penalty
    return total / N


class CiderD:
    """Document frequencies of a reference corpus (one list of tokenized captions per image)."""

    def __init__(self, references: Sequence[Sequence[str]]):
        self.log_n = math.log(float(len(references)))
        self.df: Counter = Counter(g for refs in references for g in set().union(*(ngrams(r) for r in refs)))

    def log_df(self, gram: tuple) -> float:
        return math.log(max(1.0, self.df.get(gram, 0)))

    def vector(self, caption: str) -> Vector:
        return Vector(ngrams(caption), self)

    def image_score(self, hypothesis: str, references: Sequence[str | Vector]) -> float:
        """CIDEr-D of one tokenized caption against its image's tokenized references (or their vectors, when
        they are scored against many captions, as SCST's rewards are)."""
        hyp = self.vector(hypothesis)
        refs = [r if isinstance(r, Vector) else self.vector(r) for r in references]
        return 10.0 * sum(similarity(hyp, r) for r in refs) / len(refs)

    def consensus(self, captions: Sequence[str]) -> np.ndarray:
        """For each caption, its CIDEr-D against all the others as references (Devlin et al.'s consensus
        re-ranking): (C,) scores, C >= 2. All C x C pairs at once, n-gram weights as dense (C, G) matrices."""
        vectors = [self.vector(c) for c in captions]
        lengths = np.array([v.length for v in vectors], dtype=np.float64)
        penalty = np.exp(-(lengths[:, None] - lengths[None, :]) ** 2 / (2 * SIGMA ** 2))  # (C, C)
        total = np.zeros((len(vectors), len(vectors)))
        for n in range(N):
            index: dict[tuple, int] = {}
            for v in vectors:
                for gram in v.weights[n]:
                    index.setdefault(gram, len(index))
            weights = np.zeros((len(vectors), len(index)))  # (C, G)
            for i, v in enumerate(vectors):
                for gram, w in v.weights[n].items():
                    weights[i, index[gram]] = w
            # row i as the hypothesis, row j as the reference: sum_g min(w_ig, w_jg) * w_jg
            dot = (np.minimum(weights[:, None, :], weights[None, :, :]) * weights[None, :, :]).sum(-1)
            norms = np.array([v.norms[n] for v in vectors])
            both = np.outer(norms, norms)
            total += np.divide(dot, both, out=dot.copy(), where=both != 0) * penalty
        np.fill_diagonal(total, 0.0)
        return 10.0 * total.sum(1) / N / (len(vectors) - 1)


def cider_d(hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
            ) -> tuple[float, dict[Hashable, float]]:
    """Corpus CIDEr-D and per-image scores of tokenized captions, document frequencies from `references`
    of the images in `hypotheses` (what the official scorer does)."""
    ids = list(hypotheses)
    scorer = CiderD([references[i] for i in ids])
    per_image = {i: scorer.image_score(hypotheses[i], references[i]) for i in ids}
    return float(np.mean(list(per_image.values()))) if ids else 0.0, per_image
