"""Reading images: the one opener that training, feature extraction, the captioner, the folder tool and the
gallery all use, so a file is read the same way everywhere, and the conversion to a tensor.

`open_image` decodes the whole file at once (a truncated file fails here, not half-way through a batch),
refuses images over Pillow's decompression-bomb limit (a 20000 x 20000 PNG would need 1.2 GB), and
returns 8-bit RGB. High-bit-depth greyscale (16-bit PNGs open as mode I;16 or I) is scaled to 8 bits:
Pillow's own convert("RGB") clips every value above 255, which turns an ordinary 16-bit photo white.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image

from captioning.io import InputError

ImageLike = str | os.PathLike | Image.Image
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer greyscale, 0..65535


class ImageError(InputError):
    """An image file that cannot be used; `reason` says why without the path (the folder tool's rows)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"image {os.fsdecode(path)!r}: {reason}")
        self.path, self.reason = path, reason


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit greyscale scaled down by 257 (65535 -> 255) instead of clipped."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((np.clip(values, 0, 65535) / 257).round().astype(np.uint8), mode="L")
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
    except FileNotFoundError:
        raise ImageError(image, "file not found") from None
    except IsADirectoryError:
        raise ImageError(image, "is a directory, not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(image, f"image too large (Pillow's decompression-bomb limit): {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(image, "not a readable image file") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data, unreadable file
        raise ImageError(image, f"{type(e).__name__}: {e}") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor (3, H, W) in [0, 1] (torchvision's ToTensor, without torchvision)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
