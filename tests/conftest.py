"""Shared fixtures: the reference data kept in tests/data (compressed), unpacked once per session."""
from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch

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


@pytest.fixture()
def one_thread():
    """Tiny models: on a busy 2-core machine, thread sync costs far more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
