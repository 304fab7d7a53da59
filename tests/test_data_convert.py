"""Converters to COCO captions files: Flickr8k (on the real release files), Karpathy splits, scripts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from captioning.data import flickr8k_to_coco, karpathy_to_coco, load_coco_captions
from captioning.io import InputError

REPO = Path(__file__).resolve().parents[1]


def script(name: str, *args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "datasets" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def release(reference_data) -> Path:
    """The real Flickr8k release files (captions and split lists), unpacked from tests/data."""
    return reference_data / "flickr8k"


@pytest.fixture(scope="module")
def flickr8k(release, tmp_path_factory) -> dict[str, Path]:
    return flickr8k_to_coco(release / "Flickr8k.token.txt", release, tmp_path_factory.mktemp("flickr8k"))


def test_flickr8k_counts_on_the_real_files(flickr8k, release):
    expected = {"train": 6000, "val": 1000, "test": 1000}
    assert set(flickr8k) == set(expected)
    all_ids = set()
    for split, n in expected.items():
        coco = load_coco_captions(flickr8k[split])
        assert len(coco.image_ids) == n
        assert all(len(cs) == 5 for cs in coco.captions.values())
        names = (release / f"Flickr_8k.{'dev' if split == 'val' else split}Images.txt").read_text().split()
        assert sorted(coco.file_names.values()) == sorted(names)
        all_ids |= set(coco.image_ids)
    assert len(all_ids) == 8000  # integer ids unique across the three splits


def test_flickr8k_captions_and_ids_match_the_token_file(flickr8k, release):
    lines = (release / "Flickr8k.token.txt").read_text().splitlines()
    name = lines[0].split("#")[0]
    expected = [line.split("\t", 1)[1].strip() for line in lines if line.startswith(name + "#")]
    for path in flickr8k.values():
        coco = load_coco_captions(path)
        by_name = {f: i for i, f in coco.file_names.items()}
        if name in by_name:
            assert coco.captions[by_name[name]] == expected
            break
    else:
        pytest.fail(f"{name} is in no split")


def test_flickr8k_is_deterministic(flickr8k, release, tmp_path):
    again = flickr8k_to_coco(release / "Flickr8k.token.txt", release, tmp_path)
    assert all(again[s].read_bytes() == flickr8k[s].read_bytes() for s in flickr8k)


def test_flickr8k_bad_inputs(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a.jpg#0\tone\na.jpg#1\ttwo\nb.jpg#0\tthree\nc.jpg#0\tfour\n")
    for name, content in (("train", "a.jpg\n"), ("dev", "b.jpg\n"), ("test", "c.jpg\n")):
        (splits / f"Flickr_8k.{name}Images.txt").write_text(content)
    out = flickr8k_to_coco(tokens, splits, tmp_path / "ok")
    assert load_coco_captions(out["train"]).captions == {1: ["one", "two"]}

    with pytest.raises(InputError, match="captions file not found"):
        flickr8k_to_coco(tmp_path / "missing.txt", splits, tmp_path / "o")
    (splits / "Flickr_8k.testImages.txt").write_text("c.jpg\nd.jpg\n")
    with pytest.raises(InputError, match=r"testImages.txt: images without captions .*: d.jpg"):
        flickr8k_to_coco(tokens, splits, tmp_path / "o")
    (splits / "Flickr_8k.testImages.txt").write_text("c.jpg\na.jpg\n")
    with pytest.raises(InputError, match=r"a.jpg \(also in train\)"):
        flickr8k_to_coco(tokens, splits, tmp_path / "o")
    (splits / "Flickr_8k.testImages.txt").unlink()
    with pytest.raises(InputError, match="split file not found.*testImages.txt"):
        flickr8k_to_coco(tokens, splits, tmp_path / "o")
    tokens.write_text("a.jpg#0\tone\nbroken line\na.jpg 1 two\n")
    with pytest.raises(InputError, match=r"tokens.txt: lines 2, 3 are not"):
        flickr8k_to_coco(tokens, splits, tmp_path / "o")


def karpathy_file(tmp_path: Path, coco_style: bool = True) -> Path:
    """A handmade Karpathy split file: 5 images over train/val/test/restval."""
    images = []
    for k, split in enumerate(["train", "val", "test", "restval", "train"]):
        image = {"filename": f"img{k}.jpg", "imgid": k, "split": split,
                 "sentences": [{"raw": f"caption {k}.{j} ", "tokens": [], "imgid": k, "sentid": 10 * k + j}
                               for j in range(k % 2 + 1)]}
        if coco_style:
            image.update(filepath="val2014" if split != "train" else "train2014", cocoid=1000 + k)
        images.append(image)
    path = tmp_path / "dataset_test.json"
    path.write_text(json.dumps({"images": images, "dataset": "test"}))
    return path


def test_karpathy_coco_style(tmp_path):
    out = karpathy_to_coco(karpathy_file(tmp_path), tmp_path / "out")
    assert set(out) == {"train", "val", "test", "restval"}
    train = load_coco_captions(out["train"])
    assert train.image_ids == [1000, 1004]  # cocoid
    assert train.file_names == {1000: "train2014/img0.jpg", 1004: "train2014/img4.jpg"}
    assert train.captions == {1000: ["caption 0.0"], 1004: ["caption 4.0"]}
    assert [a["id"] for a in train.api.dataset["annotations"]] == [0, 40]  # sentid
    restval = load_coco_captions(out["restval"])
    assert restval.captions == {1003: ["caption 3.0", "caption 3.1"]}
    assert restval.file_names == {1003: "val2014/img3.jpg"}
    assert load_coco_captions(out["test"]).image_ids == [1002]


def test_karpathy_restval_into_train(tmp_path):
    out = karpathy_to_coco(karpathy_file(tmp_path), tmp_path / "out", restval_into_train=True)
    assert set(out) == {"train", "val", "test"}
    assert load_coco_captions(out["train"]).image_ids == [1000, 1003, 1004]


def test_karpathy_flickr_style_uses_imgid_and_filename(tmp_path):
    out = karpathy_to_coco(karpathy_file(tmp_path, coco_style=False), tmp_path / "out")
    val = load_coco_captions(out["val"])
    assert val.file_names == {1: "img1.jpg"}
    assert val.captions == {1: ["caption 1.0", "caption 1.1"]}


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "no 'images' list"),
    ('{"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": 3}]}]}', "positions 0 lack"),
    ('{"images": [{"filename": "a.jpg", "split": "dev", "sentences": []}]}', r"a.jpg \('dev'\)"),
    ('{"images": [{"filename": "a.jpg", "imgid": 1, "split": "train", "sentences": []},'
     ' {"filename": "b.jpg", "imgid": 1, "split": "val", "sentences": []}]}', r"duplicate image id 1 \(b.jpg\)"),
])
def test_karpathy_bad_inputs(tmp_path, content, message):
    path = tmp_path / "k.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as e:
        karpathy_to_coco(path, tmp_path / "out")
    assert str(path) in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


# ---- the scripts in datasets/ ----------------------------------------------------------------

def test_flickr8k_script(tmp_path, release):
    proc = script("flickr8k_to_coco.py", "--captions", release / "Flickr8k.token.txt", "--splits-dir", release,
                  "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train: 6000 images, 30000 captions" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"captions_{s}.json" for s in ("test", "train", "val")]


def test_karpathy_script_and_error_exit(tmp_path):
    proc = script("karpathy_to_coco.py", karpathy_file(tmp_path), "--out", tmp_path / "out", "--restval-into-train")
    assert proc.returncode == 0, proc.stderr
    assert "train: 3 images, 4 captions" in proc.stdout
    proc = script("karpathy_to_coco.py", tmp_path / "missing.json", "--out", tmp_path / "out")
    assert proc.returncode == 1 and proc.stderr.startswith("error: Karpathy split file not found")


def test_download_coco_help_and_dry_run(tmp_path):
    proc = script("download_coco.py", "--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout
    proc = script("download_coco.py", "--root", tmp_path / "coco", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "http://images.cocodataset.org/zips/train2014.zip" in proc.stdout
    assert "caption_datasets.zip" in proc.stdout and "restval into train: True" in proc.stdout
    assert not (tmp_path / "coco").exists()  # a dry run touches nothing
