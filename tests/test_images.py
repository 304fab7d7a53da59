"""The one image opener shows every file as a viewer would: upright by its EXIF orientation, transparency on
white (16-bit greyscale: tests/test_reliability_cli.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import ExifTags, Image

from captioning.data.folder import ImageFolderDataset
from captioning.data.images import open_image
from captioning.models.encoder import ImageTransform


def landscape() -> Image.Image:
    """40 x 20, blue left quarter, red elsewhere: any rotation or mirror of it is told apart."""
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 0, 10, 20))
    return image


# EXIF orientation tag -> the transpose that shows the stored pixels upright (the EXIF 2.3 table)
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270,
                8: Image.Transpose.ROTATE_90, 5: Image.Transpose.TRANSPOSE}


@pytest.mark.parametrize("tag", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, tag):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = tag
    landscape().save(tmp_path / "photo.png", exif=exif)  # PNG: lossless, so the pixels compare exactly
    upright = np.asarray(landscape().transpose(ORIENTATIONS[tag]))
    assert np.array_equal(np.asarray(open_image(tmp_path / "photo.png")), upright)
    with Image.open(tmp_path / "photo.png") as opened:  # a PIL image handed to the API reads the same
        assert np.array_equal(np.asarray(open_image(opened)), upright)


def test_the_folder_tool_sees_a_tagged_photo_as_its_upright_twin(tmp_path):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to view": what phones store
    landscape().save(tmp_path / "tagged.jpg", exif=exif, quality=100)
    landscape().transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.jpg", quality=100)
    items = ImageFolderDataset([tmp_path / "tagged.jpg", tmp_path / "upright.jpg"], ImageTransform(16))
    assert (items[0][1] - items[1][1]).abs().max() < 0.05  # the same picture, up to JPEG's rounding


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_white_and_half_transparent_ones_blend(tmp_path, mode):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black: what most editors store
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    image = rgba.convert(mode) if mode != "P" else rgba.quantize(colors=4)
    if mode == "P":  # a palette with one transparent entry, as GIFs and small PNGs store it
        image.info["transparency"] = image.getpixel((3, 3))
    image.save(tmp_path / "t.png")
    got = np.asarray(open_image(tmp_path / "t.png")).astype(int)
    assert got[3, 3].tolist() == [255, 255, 255]
    if mode != "P":
        assert got[0, 0].tolist() == ([0, 0, 255] if mode == "RGBA" else [29, 29, 29])  # LA: blue as grey
        assert got[0, 1].tolist() == pytest.approx([127, 127, 127], abs=1)  # black at alpha 128 over white
