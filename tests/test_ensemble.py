"""Ensembles: checkpoints sharing a vocabulary and an encoder, their log-probabilities averaged at every step."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioning.checkpoint import save_checkpoint
from captioning.io import InputError
from captioning.models import Captioner, CaptionDecoder, DecoderConfig, build_encoder, load_captioner
from captioning.text import Vocabulary
from test_caption_cli import caption, caption_inprocess

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right"]


def save(path: Path, encoder, seed: int, words=WORDS, hidden: int = 16) -> Path:
    torch.manual_seed(seed)
    vocab = Vocabulary(words)
    config = DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8, hidden_dim=hidden)
    model = Captioner(encoder, CaptionDecoder(config), vocab)
    with torch.no_grad():  # peaky, image-dependent distributions, so that models disagree
        for p in model.decoder.parameters():
            p.mul_(4)
    save_checkpoint(path, model_state=model.state_dict(), vocab=vocab,
                    model_config={"encoder": encoder.spec, "decoder": vars(config)})
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ensemble")
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", image_size=32)
    return [save(root / f"m{seed}.pt", encoder, seed, hidden=16 + 8 * seed) for seed in (1, 2, 3)]


def test_an_ensemble_of_one_is_the_model_and_three_average_their_log_probabilities(members):
    torch.manual_seed(9)
    features = torch.randn(6, build_encoder("small_cnn", image_size=32).out_dim)
    one, alone = load_captioner([members[0]], device="cpu"), load_captioner(members[0], device="cpu")
    for method, options in (("greedy", {}), ("beam", {"beam_size": 3})):
        a = one.describe_features(features, method=method, **options)
        b = alone.describe_features(features, method=method, **options)
        assert [r["caption"] for r in a] == [r["caption"] for r in b]
        assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)
        if method == "greedy":  # without scores (the validation path's): the same captions
            bare = alone.describe_features(features, method=method, with_scores=False)
            assert [r["caption"] for r in bare] == [r["caption"] for r in b] and not any("score" in r for r in bare)
    three = load_captioner(members, device="cpu")
    singles = [load_captioner(m, device="cpu") for m in members]
    with torch.no_grad():  # one step: the ensemble's distribution is the normalised mean of the members' log p
        step = lambda d: d.step(torch.full((6,), 1), d.init_state(features), features)[0].float().log_softmax(-1)  # noqa
        expected = torch.stack([step(c.decoder) for c in singles]).mean(0).log_softmax(-1)
        assert torch.allclose(step(three.decoder), expected, atol=1e-5)
    batched = three.caption_features(features, beam_size=3)
    assert batched == [three.caption_features(f[None], beam_size=3)[0] for f in features]  # batched = per image
    assert batched != singles[0].caption_features(features, beam_size=3)  # the check can fail: members disagree


def test_members_must_share_vocabulary_and_encoder(tmp_path, members):
    other_words = save(tmp_path / "words.pt", build_encoder("small_cnn", image_size=32), 1, words=WORDS[:-1])
    with pytest.raises(InputError, match="different vocabularies"):
        load_captioner([members[0], other_words], device="cpu")
    torch.manual_seed(42)  # the same architecture with other weights
    other_cnn = save(tmp_path / "cnn.pt", build_encoder("small_cnn", image_size=32), 1)
    with pytest.raises(InputError, match="different encoders"):
        load_captioner([members[0], other_cnn], device="cpu")
    with pytest.raises(InputError, match="an ensemble's members each have their own"):
        load_captioner(members[:2], device="cpu").describe_features(torch.randn(2, 32), with_attention=True)


def test_captioning_caption_takes_a_list_of_checkpoints(tmp_path, members, capsys):
    from captioning.data.shapes import make_shapes_dataset

    make_shapes_dataset(tmp_path / "shapes", n_train=0, n_val=0, n_test=5, seed=3, image_size=32, demo_images=0)
    images = tmp_path / "shapes" / "images" / "test"
    listed = "checkpoint=[" + ",".join(map(str, members)) + "]"
    rows, _ = caption_inprocess(capsys, listed, f"images={images}", f"output={tmp_path / 'out'}")
    expected = load_captioner(members, device="cpu").caption(sorted(images.iterdir()), batch_size=16)
    assert [r["caption"] for r in rows] == expected
    assert json.loads((tmp_path / "out" / "captions.json").read_text())[0]["caption"] == expected[0]
    bad = caption(listed, f"images={images}", f"output={tmp_path / 'o2'}", "with_attention=true")
    assert bad.returncode == 1 and "an ensemble's members each have their own" in bad.stderr
