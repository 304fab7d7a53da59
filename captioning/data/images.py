"""Reading images: the one opener that training, feature extraction, the captioner, the folder tool and the
gallery all use, so a file is read the same way everywhere, the conversion to a tensor, and thumbnails.

`open_image` decodes the whole file at once (a truncated file fails here, not half-way through a batch),
refuses images over Pillow's decompression-bomb limit (a 20000 x 20000 PNG would need 1.2 GB), and
returns 8-bit RGB as a viewer shows the image (`to_rgb`):
- upright: a camera's EXIF orientation tag is applied (phones store most photos sideways and tag them),
- high-bit-depth greyscale (16-bit PNGs open as mode I;16 or I) scaled to 8 bits: Pillow's own
  convert("RGB") clips every value above 255, which turns an ordinary 16-bit photo white,
- transparency composited onto white: convert("RGB") drops the alpha channel, which shows whatever colour
  the transparent pixels happen to hold (black, mostly) as if it were the picture.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from captioning.io import InputError, atomic_path

ImageLike = str | os.PathLike | Image.Image
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer greyscale, 0..65535
WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
# What open_image makes of a file, as part of the feature cache's key: a cache made by an earlier reader
# (one that ignored EXIF orientation and transparency) is not reused.
READER = "upright, 16-bit scaled, on white"


class ImageError(InputError):
    """An image file that cannot be used. `reason` says why without the path (the folder tool's rows). Built
    from its one message alone, as DataLoader re-raises a worker's exception."""

    reason: str = ""


def _error(path: str | os.PathLike, reason: str) -> ImageError:
    e = ImageError(f"image {os.fsdecode(path)!r}: {reason}")
    e.reason = reason
    return e


def check_image_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """A cheap look at every file before long work (existence and the header, not the pixels): one
    'path: reason' per file that is missing, empty, not an image or over the decompression-bomb limit."""
    problems = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path):  # parses the header only
                    pass
        except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the file is unusable: say why
            problems.append(f"{os.fsdecode(path)}: {_reason(e)}")
    return problems


def _reason(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"image too large (Pillow's decompression-bomb limit): {e}"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a readable image file (empty, or not an image)"
    return f"{type(e).__name__}: {e}"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: EXIF orientation applied, 16-bit greyscale scaled down by 257
    (65535 -> 255) instead of clipped, transparent pixels composited onto white."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((np.clip(values, 0, 65535) / 257).round().astype(np.uint8), mode="L")
    if image.mode in WITH_ALPHA or "transparency" in image.info:  # alpha, or a palette / colour-key transparency
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image if image.mode == "RGB" else image.convert("RGB")


def open_image(image: ImageLike) -> Image.Image:
    """A path (or an already opened PIL image) -> a fully decoded 8-bit RGB image; ImageError says why not."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(image) as im:
                im.load()
                return to_rgb(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:  # missing, truncated, corrupt, or over 2x the pixel limit
        raise _error(image, _reason(e)) from None


def save_thumbnail(image: Image.Image, dest: str | os.PathLike, size: int) -> None:
    """A JPEG of `image` that fits in size x size (aspect kept), written atomically to `dest`."""
    thumb = image.copy()
    thumb.thumbnail((size, size))
    with atomic_path(dest) as tmp:
        thumb.save(tmp, format="JPEG", quality=85)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1] (torchvision's ToTensor, without torchvision)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
