"""Tokenization and vocabulary.

PLACEHOLDER tokenizer (nltk Treebank + lower-case); the parity work replaces `tokenize`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

from nltk.tokenize import TreebankWordTokenizer

from captioning.io import InputError, atomic_write_json, read_json

_TREEBANK = TreebankWordTokenizer()


def tokenize(text: str) -> list[str]:
    return [t for t in _TREEBANK.tokenize(text.lower()) if t not in {".", ",", "!", "?", ";", ":"}]


class Vocabulary:
    """Word <-> id mapping with the four special tokens at fixed ids.

    <pad>=0 fills batches, <start>=1 opens and <end>=2 closes every caption, <unk>=3 stands
    for words outside the vocabulary. Saved as JSON (never pickle): {"itos": [...]} plus settings.
    """

    PAD, BOS, EOS, UNK = "<pad>", "<start>", "<end>", "<unk>"
    SPECIALS = (PAD, BOS, EOS, UNK)
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Iterable[str], min_count: int = 1, max_size: int | None = None):
        self.itos: list[str] = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")
        self.min_count, self.max_size = min_count, max_size

    @classmethod
    def build(cls, tokenized_captions: Iterable[list[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetically)."""
        counts = Counter(w for tokens in tokenized_captions for w in tokens)
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in cls.SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size is not None else words, min_count, max_size)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def encode(self, tokens: list[str], add_specials: bool = True) -> list[int]:
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return [self.bos_id, *ids, self.eos_id] if add_specials else ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, dropping <pad>/<start> and stopping at <end>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                words.append(self.itos[i])
        return words

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "min_count": self.min_count, "max_size": self.max_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        itos = d["itos"]
        if list(itos[:4]) != list(cls.SPECIALS):
            raise ValueError(f"the first four words must be {cls.SPECIALS}")
        return cls(itos[4:], d.get("min_count", 1), d.get("max_size"))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        d = read_json(path, what="vocabulary")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"vocabulary {path} is not a captioning vocabulary: {e!r}") from e
