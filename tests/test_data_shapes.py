"""The synthetic shapes dataset: determinism, captions that agree with the pixels, summary, script."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label, regionprops

from captioning.data import load_coco_captions
from captioning.data.shapes import ATTRIBUTES, COLOURS, make_shapes_dataset, summary

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
COUNT_WORDS = ["one", "two", "three"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, n_train=40, n_val=10, n_test=10, seed=3, image_size=SIZE, demo_images=4)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_coco_format(shapes):
    assert sorted(p.name for p in (shapes / "demo_images").iterdir()) == ["000051.png", "000052.png",
                                                                        "000053.png", "000054.png"]
    ids = []
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        coco = load_coco_captions(shapes / f"captions_{split}.json", shapes / "images" / split)
        assert len(coco.image_ids) == n and all(len(set(cs)) == 5 for cs in coco.captions.values())
        assert all(Image.open(coco.image_path(i)).size == (SIZE, SIZE) for i in coco.image_ids)
        assert all(len(c.split()) <= 11 for cs in coco.captions.values() for c in cs)
        ids += coco.image_ids
    assert sorted(ids) == list(range(1, 61))  # unique over the whole dataset


def test_same_seed_same_bytes_other_seed_differs(shapes, tmp_path):
    make_shapes_dataset(tmp_path / "again", n_train=40, n_val=10, n_test=10, seed=3, image_size=SIZE,
                        demo_images=4, workers=2)  # worker processes must not change the bytes
    assert files(tmp_path / "again") == files(shapes)
    make_shapes_dataset(tmp_path / "other", n_train=40, n_val=10, n_test=10, seed=4, image_size=SIZE,
                        demo_images=4)
    other, same = files(tmp_path / "other"), files(shapes)
    assert other.keys() == same.keys()
    assert sum(other[k] != same[k] for k in same if k.endswith(".png")) >= 55


def read_picture(path: Path) -> dict:
    """Recover the attributes from the pixels alone: foreground blobs against the background."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)
    background = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0)
    mask = np.abs(rgb - background).sum(-1) > 90
    blobs = [r for r in regionprops(label(mask)) if r.area > 8]
    fill = np.mean([r.extent for r in blobs])  # area / bounding box: square 1, circle pi/4, triangle 1/2
    mean_colour = np.mean([rgb[tuple(r.coords.T)].mean(0) for r in blobs], axis=0)
    side = np.mean([np.sqrt(r.area_bbox) for r in blobs]) / rgb.shape[1]
    return {"count": COUNT_WORDS[len(blobs) - 1],
            "shape": "square" if fill > 0.88 else "circle" if fill > 0.65 else "triangle",
            "size": ("large", "big") if side > 0.19 else ("small", "little"),
            "colour": min(COLOURS, key=lambda c: np.linalg.norm(mean_colour - COLOURS[c])),
            "position": "left" if np.mean([r.centroid[1] for r in blobs]) < rgb.shape[1] / 2 else "right"}


def test_captions_agree_with_the_pixels(shapes):
    seen = {k: set() for k in ATTRIBUTES}
    for split in ("train", "val", "test"):
        coco = load_coco_captions(shapes / f"captions_{split}.json", shapes / "images" / split)
        for image_id in coco.image_ids:
            drawn = read_picture(coco.image_path(image_id))
            plural = drawn["count"] != "one"
            for caption in coco.captions[image_id]:
                words = caption.split()
                assert drawn["count"] in words and drawn["colour"] in words and drawn["position"] in words, caption
                assert drawn["shape"] + ("s" if plural else "") in words, caption
                assert set(drawn["size"]) & set(words), caption
                others = (set(COLOURS) | {"left", "right"} | set(COUNT_WORDS) | {"large", "big", "small", "little"}) \
                    - {drawn["colour"], drawn["position"], drawn["count"], *drawn["size"]}
                assert not others & set(words), caption
            for k, v in drawn.items():
                seen[k].add(v)
    assert {k: len(v) for k, v in seen.items()} == {k: len(v) for k, v in ATTRIBUTES.items()}  # all drawn


def test_summary_counts(shapes):
    s = summary(shapes)
    data = {split: json.loads((shapes / f"captions_{split}.json").read_text()) for split in ("train", "val", "test")}
    assert s["splits"] == {k: {"images": len(d["images"]), "captions": len(d["annotations"])} for k, d in data.items()}
    words = {w for d in data.values() for a in d["annotations"] for w in a["caption"].split()}
    assert s["vocab_size"] == len(words)
    for name, distribution in s["attributes"].items():
        assert distribution == dict(Counter(im["attributes"][name] for d in data.values() for im in d["images"]))
        assert sum(distribution.values()) == 60


def test_make_shapes_script(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "datasets" / "make_shapes.py"), "--out", str(tmp_path),
                           "--train", "6", "--val", "2", "--test", "2", "--seed", "0", "--size", "64"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "train:      6 images      30 captions" in proc.stdout and "vocabulary:" in proc.stdout
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 6
    assert Image.open(next((tmp_path / "images" / "test").glob("*.png"))).size == (64, 64)
