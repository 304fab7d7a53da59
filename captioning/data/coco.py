"""One split of caption data in the COCO captions format, read with pycocotools and validated.

A split is an annotations file plus an images directory:

    {"images":      [{"id": 42, "file_name": "000042.png", ...}, ...],
     "annotations": [{"id": 1, "image_id": 42, "caption": "two red circles on the left"}, ...]}

Every problem we can detect up front (missing or malformed file, captions for unknown images,
missing image files, non-string captions) raises `InputError` naming the file and the offending
ids, so a bad dataset fails in the first second instead of in the middle of epoch three.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from pathlib import Path

from pycocotools.coco import COCO

from captioning.io import InputError, not_there, read_json

WHAT = "annotations file"


def id_list(items, limit: int = 10) -> str:
    """'a, b, c (and 7 more)': enough ids to find the problem without flooding the terminal."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _validate(data: object, path: Path) -> None:
    """Check the structure pycocotools silently assumes; raise InputError naming file and ids."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise InputError(f"{WHAT} {path} is not in COCO captions format: expected an object with "
                         f"'images' and 'annotations' lists")
    bad_images = [i for i, im in enumerate(data["images"]) if not isinstance(im, dict)
                  or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str)]
    if bad_images:
        raise InputError(f"{WHAT} {path}: images at positions {id_list(bad_images)} lack an integer "
                         f"'id' or a string 'file_name'")
    ids = [im["id"] for im in data["images"]]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise InputError(f"{WHAT} {path}: duplicate image ids {id_list(duplicates)}")
    bad_anns = [i for i, a in enumerate(data["annotations"]) if not isinstance(a, dict)
                or not isinstance(a.get("image_id"), (int, str)) or "caption" not in a]
    if bad_anns:
        raise InputError(f"{WHAT} {path}: annotations at positions {id_list(bad_anns)} lack "
                         f"an 'image_id' or a 'caption'")
    known = set(ids)
    unknown = sorted({a["image_id"] for a in data["annotations"] if a["image_id"] not in known}, key=str)
    if unknown:
        raise InputError(f"{WHAT} {path}: annotations refer to unknown image ids {id_list(unknown)}")
    non_string = [(a.get("id", i), a["image_id"]) for i, a in enumerate(data["annotations"])
                  if not isinstance(a["caption"], str)]
    if non_string:
        raise InputError(f"{WHAT} {path}: non-string captions in annotations (id, image_id) "
                         f"{id_list(non_string)}")


def _index(data: dict) -> COCO:
    """Build the pycocotools index, without its progress prints."""
    next_id = 1 + max((a["id"] for a in data["annotations"] if isinstance(a.get("id"), int)), default=0)
    for a in data["annotations"]:
        if "id" not in a:  # pycocotools keys annotations by id; plain caption lists may omit it
            a["id"], next_id = next_id, next_id + 1
    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


class CocoCaptions:
    """The validated contents of one split: image ids, file names and raw caption strings."""

    def __init__(self, path: Path, images_dir: Path | None, api: COCO, captions: dict[int, list[str]]):
        self.path = path
        self.images_dir = images_dir
        self.api = api
        self.captions = captions                               # image id -> raw captions
        self.image_ids = sorted(captions)
        self.file_names = {i: api.imgs[i]["file_name"] for i in self.image_ids}

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, image_id: int) -> Path:
        if self.images_dir is None:
            raise InputError(f"{WHAT} {self.path} was loaded without an images directory; "
                             f"cannot locate image {image_id}")
        return self.images_dir / self.file_names[image_id]

    def references(self) -> dict[int, list[str]]:
        """All captions of every image: the references BLEU compares generated captions with."""
        return {i: list(cs) for i, cs in self.captions.items()}

    def require_images_dir(self) -> None:
        """InputError unless the images folder is there (and is a folder), naming the annotations file."""
        if not self.images_dir.is_dir():
            raise InputError(f"images directory {self.images_dir} (for {WHAT} {self.path}) "
                             f"{not_there(self.images_dir, folder=True)}")

    def __repr__(self) -> str:
        n = sum(len(c) for c in self.captions.values())
        return f"CocoCaptions({str(self.path)!r}, images={len(self)}, captions={n})"


def load_coco_captions(annotations: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                       check_images: bool = True) -> CocoCaptions:
    """Read and validate a COCO-format captions file (and, optionally, its image files).

    Empty captions are skipped with a warning; images left without any caption are dropped
    with a warning (they could be neither trained on nor scored).
    """
    path = Path(annotations)
    data = read_json(path, what=WHAT)
    _validate(data, path)
    api = _index(data)

    empty = [(a["id"], a["image_id"]) for a in data["annotations"] if not a["caption"].strip()]
    if empty:
        warnings.warn(f"{WHAT} {path}: skipping {len(empty)} empty captions (id, image_id) {id_list(empty)}",
                      stacklevel=2)
    captions = {i: [a["caption"].strip() for a in api.imgToAnns.get(i, []) if a["caption"].strip()]
                for i in api.imgs}
    uncaptioned = sorted(i for i, cs in captions.items() if not cs)
    if uncaptioned:
        warnings.warn(f"{WHAT} {path}: dropping {len(uncaptioned)} images without captions, "
                      f"ids {id_list(uncaptioned)}", stacklevel=2)
    captions = {i: cs for i, cs in captions.items() if cs}

    images = None if images_dir is None else Path(images_dir)
    coco = CocoCaptions(path, images, api, captions)
    if images is not None and check_images:
        coco.require_images_dir()
        missing = [f"{i} ({coco.file_names[i]})" for i in coco.image_ids if not coco.image_path(i).is_file()]
        if missing:
            raise InputError(f"{WHAT} {path}: {len(missing)} image files missing from {images}: "
                             f"image ids {id_list(missing)}")
    return coco
