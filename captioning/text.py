"""Caption tokenization identical to the official COCO scorer's, and the word vocabulary.

`tokenize` feeds vocabulary building, training targets and BLEU alike, so what the model is
trained on and what it is scored on are the same tokens. The lexer is in `captioning.ptb`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from captioning.io import InputError, atomic_write_json, read_json
from captioning.ptb import PUNCTUATIONS, java_tokens


def tokenize(text: str) -> list[str]:
    """Lower-cased PTB tokens of a caption, exactly as pycocoevalcap's PTBTokenizer gives them."""
    line = " ".join(t.lower() for t in java_tokens(text.replace("\n", " ") + "\n"))
    # pycocoevalcap: line.rstrip().split(" ") (so a last token's trailing U+00A0 goes), drop PUNCTUATIONS
    return [t for t in line.rstrip().split(" ") if t not in PUNCTUATIONS] if line.strip() else []


def joined_tokens(text: str) -> str:
    """A caption as the scorers read it: its tokens joined by single spaces."""
    return " ".join(tokenize(text))


class Vocabulary:
    """Word <-> id mapping with the four special tokens at fixed ids.

    <pad>=0 fills batches, <start>=1 opens and <end>=2 closes every caption, <unk>=3 stands for words
    outside the vocabulary. Saved as JSON (never pickle): {"itos": [...], "min_count": n, "max_size": m}
    where itos[i] is the word with id i and starts with the four specials.
    """

    PAD, BOS, EOS, UNK = "<pad>", "<start>", "<end>", "<unk>"
    SPECIALS = (PAD, BOS, EOS, UNK)
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Iterable[str], min_count: int = 1, max_size: int | None = None):
        self.itos: list[str] = [*self.SPECIALS, *words]
        if not all(isinstance(w, str) and w for w in self.itos):
            raise ValueError("vocabulary words must be non-empty strings")
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique and differ from the special tokens")
        self.min_count, self.max_size = min_count, max_size

    @classmethod
    def build(cls, tokenized_captions: Iterable[list[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Words seen at least `min_count` times, most frequent first (ties alphabetically), at most
        `max_size` of them besides the four specials."""
        if min_count < 1 or (max_size is not None and max_size < 0):
            raise ValueError(f"need min_count >= 1 and max_size >= 0 or None, got {min_count}, {max_size}")
        counts = Counter(w for tokens in tokenized_captions for w in tokens)
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in cls.SPECIALS),
                       key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size is not None else words, min_count, max_size)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def missing(self, counts: Mapping[str, int]) -> Counter:
        """The words of `counts` (word -> occurrences) outside the vocabulary, with their counts: they become <unk>."""
        return Counter({w: n for w, n in counts.items() if w not in self.stoi})

    def encode(self, tokens: list[str], add_specials: bool = True) -> list[int]:
        """Words -> ids (<unk> for unknown words), wrapped in <start> ... <end> by default."""
        ids = [self.stoi.get(t, self.unk_id) for t in tokens]
        return [self.bos_id, *ids, self.eos_id] if add_specials else ids

    def encode_caption(self, caption: str, max_len: int | None = None) -> list[int]:
        """A caption as the decoder reads it: <start>, its first `max_len` tokens (all: None), <end>."""
        return self.encode(tokenize(caption)[:max_len])

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> words, dropping <pad>/<start> and stopping at <end>."""
        words = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside the vocabulary (size {len(self.itos)})")
            if i not in (self.pad_id, self.bos_id):
                words.append(self.itos[i])
        return words

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "min_count": self.min_count, "max_size": self.max_size}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        """Inverse of to_dict; ValueError when `d` is not one."""
        itos = d.get("itos") if isinstance(d, dict) else None
        if not isinstance(itos, list) or tuple(itos[:4]) != cls.SPECIALS:
            raise ValueError(f"expected an object whose 'itos' is a list starting with {list(cls.SPECIALS)}")
        return cls(itos[4:], d.get("min_count", 1), d.get("max_size"))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        """Read a saved vocabulary; InputError naming the file when it is missing or not one."""
        d = read_json(path, what="vocabulary")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise InputError(f"vocabulary {path} is not a captioning vocabulary: {e}") from e
