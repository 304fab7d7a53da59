"""Tokenization and vocabulary.

PLACEHOLDER tokenizer (nltk Treebank + lower-case); the parity work replaces it.
"""
from __future__ import annotations

from nltk.tokenize import TreebankWordTokenizer

_TREEBANK = TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    return [t for t in _TREEBANK.tokenize(text.lower()) if t not in {".", ",", "!", "?", ";", ":"}]


class Vocabulary:  # placeholder, replaced by the text work
    pass
