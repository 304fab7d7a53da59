"""Checkpoints (plain data, weights_only, atomic, clear errors) and the load_captioner API."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import captioning
from captioning import checkpoint as ckpt_module
from captioning.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from captioning.decoding import decode
from captioning.io import InputError
from captioning.models import Captioner, CaptionDecoder, DecoderConfig, build_encoder, load_captioner
from captioning.text import Vocabulary

WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "red", "ball"]


def make_captioner(encoder_name="small_cnn", seed=0, **encoder_kwargs) -> Captioner:
    torch.manual_seed(seed)
    encoder = build_encoder(encoder_name, **encoder_kwargs)
    vocab = Vocabulary(WORDS)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.out_dim, embed_dim=8,
                                           hidden_dim=16))
    with torch.no_grad():
        decoder.out.bias[vocab.eos_id] -= 2  # random weights would mostly say "<end>" at once
    return Captioner(encoder, decoder, vocab).eval()


def save(model: Captioner, path, **kwargs) -> None:
    save_checkpoint(path, model_state=model.state_dict(), vocab=model.vocab,
                    model_config={"encoder": model.encoder.spec, "decoder": asdict(model.decoder.config)}, **kwargs)


def images(tmp_path, n=5) -> list:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8))
        if i % 2:  # mix paths and PIL images
            im.save(tmp_path / f"im{i}.png")
            out.append(tmp_path / f"im{i}.png")
        else:
            out.append(im)
    return out


def test_checkpoint_round_trip_and_captions(tmp_path):
    model = make_captioner()
    path = tmp_path / "ckpt" / "best.pt"
    save(model, path, train_state={"epoch": 3, "rng": torch.get_rng_state()}, run_config={"lr": 1e-3})

    raw = torch.load(path, weights_only=True)  # plain data + tensors only
    assert raw["format_version"] == FORMAT_VERSION and raw["vocab"]["itos"][4:] == WORDS
    assert json.loads(json.dumps(raw["model_config"])) == raw["model_config"]
    assert raw["model_config"]["decoder"]["hidden_dim"] == 16 and raw["train_state"]["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temp files left behind

    loaded = load_captioner(path, device="cpu")
    assert not loaded.training and loaded.vocab.to_dict() == model.vocab.to_dict()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())

    ims = images(tmp_path)
    captions = loaded.caption(ims, beam_size=3)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert any(captions)  # the eos bias above makes non-empty captions
    assert loaded.caption(ims, batch_size=2, beam_size=3) == captions == model.caption(ims, beam_size=3)
    assert loaded.caption(ims[1]) == loaded.caption([ims[1]])  # a single image works too

    # Independent reference: encoder(transform(image)) -> decode -> join vocab.decode tokens with spaces.
    pil = [im if isinstance(im, Image.Image) else Image.open(im).convert("RGB") for im in ims]
    with torch.no_grad():
        feats = model.encoder(torch.stack([model.transform(im) for im in pil]))
        ids = decode(model.decoder, feats, "beam", beam_size=3, bos_id=1, eos_id=2).ids
    assert captions == [" ".join(model.vocab.decode(row)) for row in ids.tolist()]
    assert loaded.caption_features(feats, method="greedy") == model.caption_features(feats, method="greedy")


def test_caption_features_modes_and_seeding():
    model = make_captioner()
    feats = torch.randn(6, model.encoder.out_dim)
    model.decoder.train()
    a = model.caption_features(feats, method="sample", seed=7)
    assert model.decoder.training  # the training loop's mode is restored after validation decoding
    assert a == model.caption_features(feats, method="sample", seed=7)
    assert a != model.caption_features(feats, method="sample", seed=8)
    assert model.caption_features(feats, method="beam", beam_size=1) == model.caption_features(feats, method="greedy")


def test_public_api_is_reachable_from_the_package():
    assert captioning.load_captioner is load_captioner


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = make_captioner()
    path = tmp_path / "last.pt"
    save(model, path, train_state={"epoch": 1})

    def crash(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save(model, path, train_state={"epoch": 2})
    assert load_checkpoint(path)["train_state"]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class NotPlainData:
    pass


@pytest.mark.parametrize("content,message", [
    (None, "not found"),
    ('{"format_version": 1}', "not a checkpoint of this project: it is not a file written by torch.save"),
    (b"", "not a checkpoint of this project: it is not a file written by torch.save"),
    (bytes(range(256)) * 4, "not a checkpoint of this project: it is not a file written by torch.save"),
    (b"PK\x03\x04" + bytes(range(256)), "not a checkpoint of this project: the file is damaged"),
    ({"state_dict": {}}, "no format_version"),
    ({"format_version": FORMAT_VERSION + 1, "captioning_version": "9.0"}, "format 2 .*written by captioning 9.0"),
    ({"format_version": FORMAT_VERSION, "model_config": {}}, "incomplete checkpoint: missing \\['model', 'vocab'\\]"),
    ({"format_version": FORMAT_VERSION, "object": NotPlainData()}, "holds Python objects other than tensors"),
])
def test_bad_checkpoint_files_give_input_errors(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)  # a pickled object: weights_only=True must refuse to run it
    with pytest.raises(InputError, match=message) as err:
        load_captioner(path)
    assert str(path) in str(err.value)
    assert "weights_only" not in str(err.value)  # torch's advice to unpickle anyway is never passed on


def test_checkpoint_with_the_old_single_dropout_still_loads(tmp_path):
    model = make_captioner()
    config = {**vars(model.decoder.config)}
    for name in ("embed_dropout", "feature_dropout", "output_dropout", "feature_norm"):
        del config[name]
    config["dropout"] = 0.25  # DecoderConfig as this project wrote it before the three dropouts
    path = tmp_path / "old.pt"
    save_checkpoint(path, model_state=model.state_dict(), vocab=model.vocab,
                    model_config={"encoder": model.encoder.spec, "decoder": config})
    loaded = load_captioner(path, device="cpu")
    c = loaded.decoder.config
    assert (c.embed_dropout, c.output_dropout, c.feature_dropout, c.feature_norm) == (0.25, 0.25, 0.0, "none")


def test_checkpoint_that_does_not_fit_its_config_is_an_input_error(tmp_path):
    model = make_captioner()
    path = tmp_path / "model.pt"
    config = {"encoder": model.encoder.spec, "decoder": {**asdict(model.decoder.config), "hidden_dim": 32}}
    save_checkpoint(path, model_state=model.state_dict(), vocab=model.vocab, model_config=config)
    with pytest.raises(InputError, match="model.pt does not describe a loadable captioner"):
        load_captioner(path)


def test_model_config_must_be_plain_data(tmp_path):
    model = make_captioner()
    with pytest.raises(TypeError, match="plain data"):
        save_checkpoint(tmp_path / "x.pt", model_state=model.state_dict(), vocab=model.vocab,
                        model_config={"encoder": torch.device("cpu")})
    assert not (tmp_path / "x.pt").exists()


def test_missing_image_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nope.jpg"):
        make_captioner().caption([tmp_path / "nope.jpg"])


def _forbid_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_captioner must not fetch weights")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    monkeypatch.setattr("captioning.models.encoder._packaged_lite0_weights", no_network)


def test_lite0_captioner_loads_from_the_checkpoint_alone(tmp_path, monkeypatch):
    model = make_captioner("efficientnet_lite0")
    path = tmp_path / "lite0.pt"
    save(model, path)
    _forbid_downloads(monkeypatch)
    loaded = load_captioner(path, device="cpu")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    x = model.transform(image)[None]
    with torch.no_grad():
        assert torch.allclose(loaded.encoder(x), model.encoder(x), atol=1e-6)
    assert loaded.caption([image]) == model.caption([image])


def test_torchvision_captioner_does_not_need_its_weights_file(tmp_path, monkeypatch):
    weights = tmp_path / "squeezenet.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    model = make_captioner("squeezenet1_1", weights=str(weights))
    path = tmp_path / "sq.pt"
    save(model, path)
    weights.unlink()  # the checkpoint holds the encoder's weights itself
    _forbid_downloads(monkeypatch)
    loaded = load_captioner(path, device="cpu")
    assert loaded.encoder.spec == model.encoder.spec
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.encoder(x), model.encoder(x), atol=1e-6)
