"""Shared fixtures: the reference data kept in tests/data (compressed), unpacked once per session."""
from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKED_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def reference_data(tmp_path_factory) -> Path:
    """tests/data with every .xz file unpacked: flickr8k/Flickr8k.token.txt, coco-caption/..., same layout."""
    root = tmp_path_factory.mktemp("reference_data")
    for packed in PACKED_DATA.rglob("*.xz"):
        out = root / packed.relative_to(PACKED_DATA).with_suffix("")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(lzma.decompress(packed.read_bytes()))
    return root


# Captioned in Flickr8k.token.txt, but the release's image folder has no such file (and no split lists it).
FLICKR8K_NO_IMAGE = "2258277193_586949ec62.jpg"


@pytest.fixture(scope="session")
def flickr8k_release(reference_data, tmp_path_factory) -> Path:
    """The Flickr8k release as README says to unpack it: ROOT/text/ holds the real caption and split files,
    ROOT/Flicker8k_Dataset/ a 16x16 stand-in JPEG for each of the release's 8,091 image file names."""
    root = tmp_path_factory.mktemp("flickr8k_release")
    shutil.copytree(reference_data / "flickr8k", root / "text")
    images = root / "Flicker8k_Dataset"
    images.mkdir()
    lines = (root / "text" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
    names = sorted({line.split("#")[0] for line in lines} - {FLICKR8K_NO_IMAGE})
    names = [n for n in names if n.endswith(".jpg")]
    assert len(names) == 8091
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (i % 251, (7 * i) % 253, (13 * i) % 255)).save(images / name, quality=90)
    return root


@pytest.fixture()
def one_thread():
    """Tiny models: on a busy 2-core machine, thread sync costs far more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
