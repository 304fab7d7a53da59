"""Caption metrics: BLEU (bleu.py) and CIDEr-D (cider.py) with official COCO-scorer parity, the COCO files an
evaluation reads (coco_files.py) and the official METEOR/ROUGE-L when pycocoevalcap is installed (official.py).

score_captions is the one entry point for raw strings: captioning-eval and the training loop's
validation/test scores both go through it (or its parts below), so their numbers agree.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from captioning.metrics.bleu import BleuScore, corpus_bleu
from captioning.metrics.cider import CiderD, cider_d
from captioning.text import joined_tokens

__all__ = ["BleuScore", "corpus_bleu", "CiderD", "cider_d", "tokenize_for_scoring", "bleu_tokenized", "bleu_captions",
           "score_captions", "score_captions_per_image"]


def tokenize_for_scoring(results: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
                         ) -> tuple[dict[Hashable, str], dict[Hashable, list[str]]]:
    """({id: tokenized hypothesis}, {id: [tokenized reference, ...]}) for the images in `results`.

    A tokenized caption is captioning.text.tokenize's tokens joined by single spaces: the strings the
    official pipeline (COCOEvalCap) hands to every scorer after its PTBTokenizer. Generated captions
    repeat a lot, so each distinct string is tokenized once.
    """
    cache: dict[str, str] = {}

    def tok(text: str) -> str:
        if text not in cache:
            cache[text] = joined_tokens(text)
        return cache[text]

    return ({i: tok(c) for i, c in results.items()},
            {i: [tok(c) for c in references[i]] for i in results if i in references})


def bleu_tokenized(hypotheses: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                   flavour: str = "coco") -> BleuScore:
    """BLEU of tokenized strings, split into words as the official BLEU splits them: on any whitespace,
    so a PTB token with a non-breaking space inside ("3\\xa01/2") counts as two words there and here."""
    return corpus_bleu({i: h.split() for i, h in hypotheses.items()},
                       {i: [r.split() for r in refs] for i, refs in references.items()}, flavour=flavour)


def bleu_captions(results: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                  flavour: str = "coco") -> BleuScore:
    """BLEU-1..4 of raw caption strings ({id: caption}) against raw references ({id: [caption, ...]})."""
    return bleu_tokenized(*tokenize_for_scoring(results, references), flavour=flavour)


def score_captions(results: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                   flavour: str = "coco") -> dict[str, float]:
    """{"bleu1".."bleu4", "cider", "hyp_len", "ref_len", "ratio"} for raw caption strings: BLEU as in
    bleu_captions, CIDEr-D with document frequencies from the references of these images (as officially)."""
    return score_captions_per_image(results, references, flavour)[0]


def score_captions_per_image(results: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                             flavour: str = "coco") -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """score_captions' corpus scores, and each image's {"bleu1".."bleu4", "cider"}."""
    hypotheses, refs = tokenize_for_scoring(results, references)
    bleu = bleu_tokenized(hypotheses, refs, flavour)
    cider, cider_per_image = cider_d(hypotheses, refs)
    per_image = {i: {**{f"bleu{n}": s for n, s in enumerate(bleu.per_image[i], 1)}, "cider": cider_per_image[i]}
                 for i in hypotheses}
    return {**bleu.as_dict(), "cider": cider}, per_image
