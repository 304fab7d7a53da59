"""captioning.text.Vocabulary: counting, specials, <unk>, encode/decode, JSON save/load, bad files."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from captioning.io import InputError
from captioning.text import Vocabulary, tokenize

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
# word -> how often it occurs; the captions below are built from these counts
COUNTS = {"dog": 5, "a": 4, "the": 3, "ball": 3, "red": 2, "cat": 1, "zebra": 1}


def _captions() -> list[list[str]]:
    words = [w for w, n in COUNTS.items() for _ in range(n)]
    return [words[i:i + 3] for i in range(0, len(words), 3)]  # split into captions of 3 words


def _expected_order(min_count: int = 1) -> list[str]:
    """Most frequent first, ties alphabetically: derived from COUNTS by a plain sort."""
    return sorted((w for w, n in COUNTS.items() if n >= min_count), key=lambda w: (-COUNTS[w], w))


def test_captions_match_counts():
    assert Counter(w for c in _captions() for w in c) == COUNTS


def test_specials_have_fixed_ids():
    vocab = Vocabulary.build(_captions())
    assert vocab.itos[:4] == SPECIALS
    assert [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id] == [vocab.stoi[s] for s in SPECIALS] == [0, 1, 2, 3]
    assert (vocab.PAD, vocab.BOS, vocab.EOS, vocab.UNK) == tuple(SPECIALS)


def test_build_orders_by_frequency_then_alphabetically():
    vocab = Vocabulary.build(_captions())
    assert vocab.itos[4:] == _expected_order()
    assert len(vocab) == 4 + len(COUNTS)
    assert all(vocab.stoi[w] == i for i, w in enumerate(vocab.itos))


@pytest.mark.parametrize("min_count", [1, 2, 3, 5, 6])
def test_min_count_drops_rare_words(min_count):
    vocab = Vocabulary.build(_captions(), min_count=min_count)
    assert vocab.itos[4:] == _expected_order(min_count)
    for w, n in COUNTS.items():
        assert (w in vocab) == (n >= min_count)


@pytest.mark.parametrize("max_size", [0, 1, 3, 4, len(COUNTS), 100])
def test_max_size_keeps_the_most_frequent(max_size):
    vocab = Vocabulary.build(_captions(), max_size=max_size)
    assert vocab.itos[4:] == _expected_order()[:max_size]  # size 3 cuts the the/ball tie: "ball" stays
    assert len(vocab) == 4 + min(max_size, len(COUNTS))


def test_min_count_and_max_size_together():
    vocab = Vocabulary.build(_captions(), min_count=2, max_size=2)
    assert vocab.itos[4:] == _expected_order(2)[:2]
    assert (vocab.min_count, vocab.max_size) == (2, 2)


def test_build_ignores_special_tokens_in_captions():
    vocab = Vocabulary.build([["<unk>", "<pad>", "dog"], ["<end>", "dog"]])
    assert vocab.itos == SPECIALS + ["dog"]


def test_build_rejects_bad_settings():
    with pytest.raises(ValueError):
        Vocabulary.build(_captions(), min_count=0)
    with pytest.raises(ValueError):
        Vocabulary.build(_captions(), max_size=-1)


def test_constructor_rejects_duplicates_and_non_words():
    for words in (["dog", "dog"], ["<unk>"], ["dog", ""], ["dog", 3]):
        with pytest.raises(ValueError):
            Vocabulary(words)


def test_encode_wraps_in_start_end_and_maps_unknown_words_to_unk():
    vocab = Vocabulary.build(_captions(), min_count=2)
    ids = vocab.encode(["the", "cat", "dog", "unseen"])
    assert ids == [vocab.bos_id, vocab.stoi["the"], vocab.unk_id, vocab.stoi["dog"], vocab.unk_id, vocab.eos_id]
    assert vocab.encode(["dog"], add_specials=False) == [vocab.stoi["dog"]]
    assert vocab.encode([]) == [vocab.bos_id, vocab.eos_id]


def test_decode_drops_pad_and_start_and_stops_at_end():
    vocab = Vocabulary.build(_captions())
    dog, ball = vocab.stoi["dog"], vocab.stoi["ball"]
    assert vocab.decode([vocab.bos_id, dog, vocab.pad_id, ball, vocab.eos_id, dog, dog]) == ["dog", "ball"]
    assert vocab.decode(torch.tensor([vocab.bos_id, ball, vocab.eos_id, vocab.pad_id])) == ["ball"]
    assert vocab.decode([vocab.unk_id]) == ["<unk>"]
    for bad in (len(vocab), -1):
        with pytest.raises(ValueError):
            vocab.decode([bad])


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(tokenize(c) for c in ["A dog's ball.", "The dog can't catch the (red) ball!"])
    for caption in ["The dog's red ball.", "A dog can't catch it"]:
        tokens = tokenize(caption)
        expected = [t if t in vocab else "<unk>" for t in tokens]
        assert vocab.decode(vocab.encode(tokens)) == expected
    assert "it" not in vocab and "-lrb-" in vocab and "'s" in vocab


def test_dict_round_trip_and_json_file(tmp_path):
    vocab = Vocabulary.build(_captions(), min_count=2, max_size=10)
    assert Vocabulary.from_dict(vocab.to_dict()).to_dict() == vocab.to_dict()
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, readable by anything
    assert data == {"itos": vocab.itos, "min_count": 2, "max_size": 10}
    loaded = Vocabulary.load(path)
    assert loaded.itos == vocab.itos and loaded.stoi == vocab.stoi
    assert (loaded.min_count, loaded.max_size) == (2, 10)
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left behind


def test_non_ascii_words_survive_save_and_load(tmp_path):
    vocab = Vocabulary.build([tokenize("Un café à Zürich, 東京 ½")])
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").itos == vocab.itos
    assert "café" in vocab and "東京" in vocab and "1/2" in vocab


@pytest.mark.parametrize("content", [
    "{not json",  # malformed
    "[1, 2, 3]",  # not an object
    '{"words": []}',  # no itos
    '{"itos": "abc"}',  # itos not a list
    '{"itos": ["a", "b", "c", "d"]}',  # specials missing
    '{"itos": ["<pad>", "<start>", "<end>", "<unk>", "dog", "dog"]}',  # duplicate
    '{"itos": ["<pad>", "<start>", "<end>", "<unk>", "<pad>"]}',  # special twice: ids would shift
    '{"itos": ["<pad>", "<start>", "<end>", "<unk>", 7]}',  # not a word
])
def test_load_rejects_bad_files_naming_them(tmp_path, content):
    path = tmp_path / "bad_vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match="bad_vocab.json"):
        Vocabulary.load(path)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match="missing_vocab.json"):
        Vocabulary.load(tmp_path / "missing_vocab.json")
