"""Converters from the common caption-data releases to COCO captions files, one per split.

- Karpathy's split files (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`),
  the standard train/val/test splits of the captioning literature.
- The Flickr8k release (`Flickr8k.token.txt` + `Flickr_8k.{train,dev,test}Images.txt`).

Both write `out_dir/captions_{split}.json` atomically, with `info`/`licenses`/`type` so that the
official COCO caption evaluation code accepts them as ground truth.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from captioning.data.coco import id_list
from captioning.io import InputError, atomic_write_json, read_json, read_text

KARPATHY_SPLITS = ("train", "val", "test", "restval")
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}


def print_written(files: dict[str, Path]) -> None:
    """One line per split written by a converter: its images and captions, counted from the file."""
    for split, path in files.items():
        data = read_json(path)
        print(f"{split:>7}: {len(data['images'])} images, {len(data['annotations'])} captions -> {path}")


def write_coco_split(path: Path, images: list[dict], annotations: list[dict], description: str) -> None:
    atomic_write_json(path, {"info": {"description": description}, "licenses": [], "type": "captions",
                             "images": images, "annotations": annotations}, indent=None)


def karpathy_to_coco(karpathy_json: str | os.PathLike, out_dir: str | os.PathLike,
                     restval_into_train: bool = False) -> dict[str, Path]:
    """Split a Karpathy JSON into COCO captions files; returns split -> written path.

    Image ids are `cocoid` (COCO), else `imgid`, else the position in the file; annotation ids
    are `sentid` when present. `file_name` is `filepath/filename` when the entry has a filepath
    (COCO: `val2014/COCO_val2014_....jpg`), so one images directory serves every split.
    `restval` (the 30k extra COCO val images) becomes its own file, or part of train with
    `restval_into_train` (the usual 113k-image training set).
    """
    path = Path(karpathy_json)
    data = read_json(path, what="Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"Karpathy split file {path} has no 'images' list")
    bad = [i for i, im in enumerate(data["images"]) if not isinstance(im, dict)
           or not isinstance(im.get("filename"), str) or not isinstance(im.get("sentences"), list)
           or not all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in im["sentences"])]
    if bad:
        raise InputError(f"Karpathy split file {path}: images at positions {id_list(bad)} lack a string "
                         f"'filename' or 'sentences' with string 'raw' captions")
    unknown = [f"{im['filename']} ({im.get('split')!r})" for im in data["images"] if im.get("split") not in KARPATHY_SPLITS]
    if unknown:
        raise InputError(f"Karpathy split file {path}: images with a split other than "
                         f"{'/'.join(KARPATHY_SPLITS)}: {id_list(unknown)}")

    splits: dict[str, tuple[list, list]] = {}
    seen_ids: set = set()
    next_sentid = 1 + max((s.get("sentid", -1) for im in data["images"] for s in im["sentences"]
                           if isinstance(s.get("sentid"), int)), default=0)
    for position, im in enumerate(data["images"]):
        image_id = im.get("cocoid", im.get("imgid", position))
        if image_id in seen_ids:
            raise InputError(f"Karpathy split file {path}: duplicate image id {image_id} ({im['filename']})")
        seen_ids.add(image_id)
        split = "train" if restval_into_train and im["split"] == "restval" else im["split"]
        images, annotations = splits.setdefault(split, ([], []))
        file_name = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        images.append({"id": image_id, "file_name": file_name})
        for s in im["sentences"]:
            ann_id = s.get("sentid")
            if not isinstance(ann_id, int):
                ann_id, next_sentid = next_sentid, next_sentid + 1
            annotations.append({"id": ann_id, "image_id": image_id, "caption": s["raw"].strip()})

    name = data.get("dataset", path.stem)
    out = {}
    for split in KARPATHY_SPLITS:
        if split in splits:
            out[split] = Path(out_dir) / f"captions_{split}.json"
            write_coco_split(out[split], *splits[split], f"{name} Karpathy split {split!r} from {path.name}")
    return out


def read_flickr8k_numbered(path: str | os.PathLike) -> dict[str, dict[int, str]]:
    """`<image>#<n>\t<caption>` lines (plain, .xz or .gz) -> {image name: {n: caption}}."""
    pattern = re.compile(r"^(?P<image>[^#\t]+)#(?P<n>\d+)\t(?P<caption>.*)$")
    numbered: dict[str, dict[int, str]] = {}
    bad = []
    for line_no, line in enumerate(read_text(path, what="Flickr8k captions file").splitlines(), 1):
        if not line.strip():
            continue
        m = pattern.match(line)
        if m is None:
            bad.append(line_no)
            continue
        numbered.setdefault(m["image"], {})[int(m["n"])] = m["caption"].strip()
    if bad:
        raise InputError(f"Flickr8k captions file {path}: lines {id_list(bad)} are not '<image>#<n><TAB><caption>'")
    return numbered


def read_flickr8k_captions(path: str | os.PathLike) -> dict[str, list[str]]:
    """`<image>#<n>\t<caption>` lines -> image name -> captions ordered by n."""
    return {image: [c for _, c in sorted(caps.items())] for image, caps in read_flickr8k_numbered(path).items()}


def flickr8k_to_coco(captions_file: str | os.PathLike, splits_dir: str | os.PathLike,
                     out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write captions_{train,val,test}.json from the Flickr8k release (dev -> val).

    Image ids are 1 + the image's position in the sorted list of all captioned image names,
    so they are deterministic and unique across the three splits.
    """
    captions = read_flickr8k_captions(captions_file)
    ids = {name: i for i, name in enumerate(sorted(captions), 1)}
    owner: dict[str, str] = {}
    out, next_ann_id = {}, 1
    for split, file in FLICKR8K_SPLIT_FILES.items():
        split_path = Path(splits_dir) / file
        if not split_path.is_file():
            raise InputError(f"Flickr8k split file not found: {split_path}")
        names = [n.strip() for n in split_path.read_text(encoding="utf-8").splitlines() if n.strip()]
        uncaptioned = [n for n in names if n not in captions]
        if uncaptioned:
            raise InputError(f"Flickr8k split file {split_path}: images without captions in {captions_file}: "
                             f"{id_list(uncaptioned)}")
        repeated = []
        for n in names:
            if n in owner:
                repeated.append(f"{n} (also in {owner[n]})")
            owner[n] = split
        if repeated:
            raise InputError(f"Flickr8k split file {split_path}: images listed more than once: {id_list(repeated)}")
        images = [{"id": ids[n], "file_name": n} for n in names]
        annotations = [{"id": next_ann_id + k, "image_id": ids[n], "caption": c}
                       for k, (n, c) in enumerate((n, c) for n in names for c in captions[n])]
        next_ann_id += len(annotations)
        out[split] = Path(out_dir) / f"captions_{split}.json"
        write_coco_split(out[split], images, annotations, f"Flickr8k {split} split from {split_path.name}")
    return out
