"""COCO-format splits: loading and validation, datasets (image / feature / per-image), collate."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from captioning.data import (CaptionBatch, CaptionDataset, collate_captions,
                             load_coco_captions)
from captioning.data.folder import ImageFolderDataset
from captioning.io import InputError
from captioning.text import Vocabulary, tokenize

CAPTIONS = {  # image id -> captions, deliberately of different lengths
    7: ["A red ball.", "a small red ball on the grass"],
    3: ["Two dogs run", "dogs", "two brown dogs running on a beach together"],
    5: ["a cat"],
}
COLOURS = {7: (255, 0, 0), 3: (0, 255, 0), 5: (0, 0, 255)}


def write_split(root: Path, captions=CAPTIONS, images=None, annotations=None) -> Path:
    """A tiny split: one 8x12 solid-colour PNG per image and a COCO captions file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image_id, colour in COLOURS.items():
        Image.new("RGB", (12, 8), colour).save(root / "images" / f"im{image_id}.png")
    images = images if images is not None else [{"id": i, "file_name": f"im{i}.png"} for i in captions]
    if annotations is None:
        annotations = [{"id": 100 + k, "image_id": i, "caption": c}
                       for k, (i, c) in enumerate((i, c) for i, cs in captions.items() for c in cs)]
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


@pytest.fixture
def split(tmp_path):
    return load_coco_captions(write_split(tmp_path), tmp_path / "images")


@pytest.fixture
def vocab(split):
    return Vocabulary.build(tokenize(c) for cs in split.captions.values() for c in cs)


def test_load_reads_ids_file_names_captions_and_references(split, tmp_path, capsys):
    assert split.image_ids == [3, 5, 7]
    assert split.file_names == {i: f"im{i}.png" for i in CAPTIONS}
    assert split.captions == CAPTIONS
    assert split.references() == CAPTIONS
    assert split.image_path(7) == tmp_path / "images" / "im7.png"
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are silenced


def test_items_hold_image_caption_ids_and_image_id(split, vocab):
    ds = CaptionDataset(split, vocab)
    assert len(ds) == sum(len(cs) for cs in CAPTIONS.values())
    seen = set()
    for image, caption, image_id in ds:
        assert image.shape == (3, 8, 12)
        assert torch.allclose(image[:, 0, 0], torch.tensor(COLOURS[image_id], dtype=torch.float) / 255)
        words = vocab.decode(caption.tolist())
        assert caption[0] == vocab.bos_id and caption[-1] == vocab.eos_id
        seen.add((image_id, " ".join(words)))
    assert seen == {(i, " ".join(tokenize(c))) for i, cs in CAPTIONS.items() for c in cs}


def test_transform_and_max_len(split, vocab):
    ds = CaptionDataset(split, vocab, transform=lambda im: torch.zeros(2, *im.size), max_len=2)
    image, caption, _ = ds[0]
    assert image.shape == (2, 12, 8)
    assert max(len(c) for _, c, _ in ds) == 2 + 2  # two tokens plus BOS and EOS


def test_feature_mode_rows_follow_image_ids(split, vocab):
    features = torch.arange(3 * 4, dtype=torch.float).view(3, 4)  # (N, D), row r <-> image_ids[r]
    ds = CaptionDataset(split, vocab, features=features)
    for feature, _, image_id in ds:
        assert torch.equal(feature, features[split.image_ids.index(image_id)])


def test_per_image_mode_gives_each_image_once_with_its_first_caption(split, vocab):
    ds = CaptionDataset(split, vocab, features=torch.zeros(3, 4), per_image=True)
    assert sorted(image_id for _, _, image_id in ds) == [3, 5, 7]
    for _, caption, image_id in ds:
        assert vocab.decode(caption.tolist()) == tokenize(CAPTIONS[image_id][0])


def test_collate_pads_to_the_longest_in_order(split, vocab):
    ds = CaptionDataset(split, vocab, features=torch.randn(3, 5))
    items = [ds[i] for i in range(len(ds))]
    batch = collate_captions(items, pad_id=vocab.pad_id)
    assert isinstance(batch, CaptionBatch)
    n = len(items)
    assert batch.images.shape == (n, 5) and batch.captions.shape == (n, max(len(c) for _, c, _ in items))
    assert len({len(c) for _, c, _ in items}) > 1  # rows of different lengths were padded
    for row, (image, caption, image_id) in enumerate(items):  # the items' order: the sampler's, kept
        assert torch.equal(batch.captions[row, :len(caption)], caption) and int(batch.image_ids[row]) == image_id
        assert torch.equal(batch.images[row], image)
        assert (batch.captions[row, len(caption):] == vocab.pad_id).all()


def test_collate_uses_the_given_pad_id(split, vocab):
    ds = CaptionDataset(split, vocab, features=torch.zeros(3, 2))
    batch = collate_captions([ds[i] for i in range(len(ds))], pad_id=-5)
    assert (batch.captions == -5).sum() == batch.captions.numel() - sum(len(ds[i][1]) for i in range(len(ds)))


def test_dataloader_batches_cover_every_caption(split, vocab):
    ds = CaptionDataset(split, vocab)
    loader = DataLoader(ds, batch_size=4, collate_fn=lambda b: collate_captions(b, vocab.pad_id))
    batches = list(loader)
    assert [b.images.shape[1:] for b in batches] == [(3, 8, 12)] * len(batches)
    assert sum(len(b.image_ids) for b in batches) == len(ds)


def test_image_file_dataset(split):
    paths = [split.image_path(i) for i in split.image_ids]
    ds = ImageFolderDataset(paths, transform=lambda im: torch.tensor(im.getpixel((0, 0))))
    assert [tuple(ds[k][1].tolist()) for k in range(len(ds))] == [COLOURS[i] for i in split.image_ids]


# ---- bad input: each names the file and the offending ids ------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found.*nope.json"):
        load_coco_captions(tmp_path / "nope.json")
    with pytest.raises(InputError, match="is a folder, not a file"):  # a folder given for the annotations
        load_coco_captions(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"images": []}', "COCO captions format"),
    ('{"images": [{"id": 1}], "annotations": []}', "positions 0 lack"),
    ('{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1}]}', "positions 0 lack"),
    ('{"images": [{"id": 4, "file_name": "a"}, {"id": 4, "file_name": "b"}], "annotations": []}',
     "duplicate image ids 4"),
])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_coco_captions(path)
    assert str(path) in str(e.value)


def test_unknown_image_ids(tmp_path):
    anns = [{"id": 1, "image_id": 3, "caption": "x"}, {"id": 2, "image_id": 99, "caption": "y"},
            {"id": 3, "image_id": 42, "caption": "z"}]
    path = write_split(tmp_path, annotations=anns)
    with pytest.raises(InputError, match=r"unknown image ids 42, 99") as e:
        load_coco_captions(path)
    assert str(path) in str(e.value)


def test_missing_image_files(tmp_path):
    path = write_split(tmp_path)
    (tmp_path / "images" / "im5.png").unlink()
    with pytest.raises(InputError, match=r"1 image files missing.*image ids 5 \(im5.png\)") as e:
        load_coco_captions(path, tmp_path / "images")
    assert str(path) in str(e.value)
    with pytest.raises(InputError, match="images directory .*elsewhere.* not found"):
        load_coco_captions(path, tmp_path / "elsewhere")
    with pytest.raises(InputError, match="images directory .*captions.json .* is a file, not a folder"):
        load_coco_captions(path, path)
    # without the check the split loads, and the missing file is reported when it is read
    split = load_coco_captions(path, tmp_path / "images", check_images=False)
    vocab = Vocabulary.build([["a"]])
    ds = CaptionDataset(split, vocab, per_image=True)
    with pytest.raises(InputError, match="im5.png"):
        [ds[k] for k in range(len(ds))]


def test_non_string_captions(tmp_path):
    anns = [{"id": 1, "image_id": 3, "caption": "fine"}, {"id": 2, "image_id": 5, "caption": 17},
            {"id": 3, "image_id": 7, "caption": None}]
    path = write_split(tmp_path, annotations=anns)
    with pytest.raises(InputError, match=r"non-string captions.*\(2, 5\), \(3, 7\)") as e:
        load_coco_captions(path)
    assert str(path) in str(e.value)


def test_empty_captions_warn_and_are_skipped(tmp_path):
    anns = [{"id": 1, "image_id": 3, "caption": "a dog"}, {"id": 2, "image_id": 3, "caption": "  "},
            {"id": 3, "image_id": 5, "caption": ""}, {"id": 4, "image_id": 7, "caption": "red"}]
    path = write_split(tmp_path, annotations=anns)
    with pytest.warns(UserWarning) as record:
        split = load_coco_captions(path)
    messages = [str(w.message) for w in record]
    assert any("2 empty captions" in m and "(2, 3), (3, 5)" in m and str(path) in m for m in messages)
    assert any("without captions, ids 5" in m for m in messages)  # image 5 had only an empty caption
    assert split.captions == {3: ["a dog"], 7: ["red"]} and split.image_ids == [3, 7]


def test_annotation_ids_are_optional(tmp_path):
    anns = [{"image_id": 3, "caption": "a"}, {"image_id": 3, "caption": "b"}, {"image_id": 5, "caption": "c"},
            {"image_id": 7, "caption": "d"}]
    split = load_coco_captions(write_split(tmp_path, annotations=anns))
    assert split.captions == {3: ["a", "b"], 5: ["c"], 7: ["d"]}


def test_image_path_needs_an_images_directory(tmp_path):
    split = load_coco_captions(write_split(tmp_path))
    with pytest.raises(InputError, match="without an images directory.*image 3"):
        split.image_path(3)


def test_feature_rows_must_match_images(split, vocab):
    with pytest.raises(InputError, match=r"2 rows but the split has 3 images"):
        CaptionDataset(split, vocab, features=torch.zeros(2, 4))
