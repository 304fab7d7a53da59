"""trainer.precision=fp32|bf16 (torch.autocast) and the fast feature extractor's numbers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captioning.data.collate import CaptionBatch
from captioning.data.datasets import load_image
from captioning.data.features import extract_features
from captioning.config import TrainerOptions
from captioning.engine import Stepper
from captioning.run_state import TrainState
from captioning import precision
from captioning.models import CaptionDecoder, DecoderConfig, build_encoder
from captioning.models.inference import fold_batchnorm, inference_copy
from captioning.io import InputError
from captioning.precision import autocast

CPU = torch.device("cpu")


def test_autocast_runs_matmuls_in_the_asked_precision():
    a = torch.randn(4, 8)
    with autocast(CPU, "bf16"):
        assert (a @ a.T).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ a.T).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        autocast(CPU, "fp16")


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_without_native_units_warns(monkeypatch, recwarn, fast):
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device: fast)
    precision.warn_if_slow(CPU, "bf16")
    precision.warn_if_slow(CPU, "fp32")
    assert len(recwarn) == (0 if fast else 1)  # fp32 never warns
    assert all(str(w.message).startswith("precision=bf16 on this CPU") for w in recwarn)


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_bf16_training_step_learns_with_fp32_weights(impl):
    torch.manual_seed(0)
    decoder = CaptionDecoder(DecoderConfig(vocab_size=20, feature_dim=6, embed_dim=8, hidden_dim=16, impl=impl,
                                           embed_dropout=0.0, output_dropout=0.0))  # memorising one batch
    logit_dtypes = []
    decoder.out.register_forward_hook(lambda m, i, out: logit_dtypes.append(out.dtype))
    captions = torch.randint(3, 20, (8, 7))
    captions[:, 0], captions[:, -1] = 1, 2
    batch = CaptionBatch(torch.randn(8, 6), captions, torch.arange(8))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-2)
    opts = TrainerOptions(precision="bf16", progress=False)
    stepper = Stepper(decoder, None, optimizer, None, opts, CPU)
    first = stepper.epoch([batch], TrainState())["loss"]
    last = stepper.epoch([batch] * 40, TrainState())["loss"]
    assert set(logit_dtypes) == {torch.bfloat16}  # the layers really ran in bf16
    assert all(p.dtype == torch.float32 for p in decoder.parameters())  # the weights stay fp32
    assert last < 0.5 * first


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(11):  # not a multiple of the batch: the last batch is partial
        pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=g).numpy()
        paths.append(root / f"{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("small_cnn")


def plain(encoder, paths) -> torch.Tensor:
    with torch.no_grad():
        return encoder(torch.stack([load_image(p, encoder.transform) for p in paths]))


@pytest.mark.parametrize("kwargs", [dict(num_workers=2), dict(num_workers=2, encode_in_workers=False),
                                    dict(num_workers=0, batch_size=4)])
def test_fast_extractor_gives_the_plain_loops_features(encoder, images, kwargs):
    reference = plain(encoder, images)  # (N, D), rows in the order of the paths
    fast = extract_features(encoder, images, progress=False, precision="fp32", **kwargs)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert F.cosine_similarity(fast, reference).min() >= 0.999


def test_bf16_features_stay_close_to_fp32(encoder, images):
    fp32 = extract_features(encoder, images, num_workers=1, precision="fp32", progress=False)
    bf16 = extract_features(encoder, images, num_workers=1, precision="bf16", progress=False)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # computed in bf16, returned as fp32
    assert F.cosine_similarity(bf16, fp32).min() >= 0.99


def test_fold_batchnorm_keeps_outputs_and_the_original():
    encoder = build_encoder("small_cnn")
    x = torch.randn(3, 3, 64, 64)
    bn = [m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bn:  # non-trivial statistics, so a wrong fold would show
        m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    folded = fold_batchnorm(encoder.eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules()) == len(bn) == 4
    with torch.no_grad():
        torch.testing.assert_close(folded(x), encoder(x), rtol=1e-4, atol=1e-5)


def test_inference_copy_of_efficientnet_folds_batchnorm_and_symmetric_padding():
    encoder = build_encoder("efficientnet_lite0").eval()
    fast = inference_copy(encoder)
    pads = [m for m in fast.modules() if isinstance(m, torch.nn.ZeroPad2d)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert all(p.padding[0] != p.padding[1] for p in pads)  # only the asymmetric (stride-2) pads remain
    assert sum(isinstance(m, torch.nn.ZeroPad2d) for m in encoder.modules()) > len(pads)  # the original keeps its own
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), encoder(x),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fast", [True, False])
def test_auto_is_bf16_exactly_where_bf16_is_native(monkeypatch, fast):
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device: fast)
    chosen, why = precision.resolve_precision("auto", CPU)
    assert chosen == ("bf16" if fast else "fp32") and why.startswith("auto: this CPU")
    assert precision.resolve_precision("fp32", CPU) == ("fp32", "as asked")
    assert precision.resolve_precision("bf16", CPU) == ("bf16", "as asked")
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        precision.resolve_precision("fp16", CPU)
    assert TrainerOptions().precision == "auto"


def test_auto_precision_features_are_cached_under_what_it_chose(monkeypatch, encoder, images, tmp_path):
    """The cache key holds the precision auto resolved to, so auto and its explicit twin share one file."""
    import json

    from captioning.data.coco import load_coco_captions
    from captioning.data.features import cache_path, cached_features

    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": i, "file_name": p.name} for i, p in enumerate(images)],
        "annotations": [{"id": i, "image_id": i, "caption": "a shape"} for i in range(len(images))]}))
    coco = load_coco_captions(annotations, images[0].parent)
    monkeypatch.setattr(precision, "has_fast_bf16", lambda device: False)
    features = cached_features(encoder, coco, tmp_path / "cache", precision="auto", num_workers=0, progress=False)
    assert [p.name for p in (tmp_path / "cache").glob("*.pt")] == [cache_path(encoder.spec, coco, tmp_path / "cache",
                                                                              "fp32").name]
    assert torch.equal(features, cached_features(encoder, coco, tmp_path / "cache", precision="fp32", build=False))
