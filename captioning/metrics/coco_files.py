"""Read and check the two files an evaluation needs, with errors that name the file and the ids.

- annotations, COCO captions format: {"images": [{"id": ...}, ...], "annotations": [{"image_id": ...,
  "caption": "..."}, ...]} ("images" is optional; when present it must list every captioned image).
- results, COCO results format: [{"image_id": ..., "caption": "..."}, ...], one entry per image.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Hashable, Iterable, Mapping

from captioning.io import InputError, read_json


def first_ids(ids: Iterable, limit: int = 5) -> str:
    """'1, 2, 3 (and 7 more)': the first offending ids, repr'd so that "12" and 12 look different."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


def _is_id(value: object) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _entries(data: object, path: Path, what: str) -> list[dict]:
    """The list of {"image_id", "caption"} records, each checked for a usable image id."""
    if not isinstance(data, list):
        raise InputError(f"{what} {path}: expected a list of {{\"image_id\": ..., \"caption\": ...}} objects, "
                         f"got {type(data).__name__}")
    bad = [n for n, e in enumerate(data) if not isinstance(e, dict) or not _is_id(e.get("image_id"))]
    if bad:
        raise InputError(f"{what} {path}: entries without an integer or string \"image_id\" at positions "
                         f"{first_ids(bad)}")
    no_caption = [e["image_id"] for e in data if not isinstance(e.get("caption"), str)]
    if no_caption:
        raise InputError(f"{what} {path}: missing or non-string \"caption\" for image ids {first_ids(no_caption)}")
    return data


def load_references(path: str | Path) -> dict[Hashable, list[str]]:
    """{image_id: [reference caption, ...]} from a COCO captions annotation file."""
    path = Path(path)
    data = read_json(path, what="annotations file")
    if not isinstance(data, dict) or "annotations" not in data:
        raise InputError(f"annotations file {path}: expected a COCO captions object with an \"annotations\" list")
    references: dict[Hashable, list[str]] = {}
    for entry in _entries(data["annotations"], path, "annotations file"):
        references.setdefault(entry["image_id"], []).append(entry["caption"])
    if "images" in data:
        listed = {image.get("id") for image in data["images"] if isinstance(image, dict)}
        unlisted = [i for i in references if i not in listed]
        if unlisted:
            raise InputError(f"annotations file {path}: captions for image ids missing from \"images\": "
                             f"{first_ids(unlisted)}")
    if not references:
        raise InputError(f"annotations file {path} holds no captions")
    return references


def load_results(path: str | Path) -> dict[Hashable, str]:
    """{image_id: generated caption} from a COCO results file (exactly one caption per image)."""
    path = Path(path)
    entries = _entries(read_json(path, what="results file"), path, "results file")
    counts = Counter(e["image_id"] for e in entries)
    duplicates = [i for i, n in counts.items() if n > 1]
    if duplicates:
        raise InputError(f"results file {path}: more than one caption for image ids {first_ids(duplicates)}")
    if not entries:
        raise InputError(f"results file {path} holds no captions")
    return {e["image_id"]: e["caption"] for e in entries}


def check_coverage(results: Mapping, references: Mapping, results_path: str | Path,
                   annotations_path: str | Path, allow_subset: bool = False) -> None:
    """Results must be for annotated images, and (unless allow_subset) for all of them."""
    unknown = [i for i in results if i not in references]
    if unknown:
        raise InputError(f"results file {results_path}: image ids with no reference captions in "
                         f"{annotations_path}: {first_ids(unknown)}")
    missing = [i for i in references if i not in results]
    if missing and not allow_subset:
        raise InputError(f"results file {results_path}: no caption for {len(missing)} of the {len(references)} "
                         f"images annotated in {annotations_path}, e.g. image ids {first_ids(missing)} "
                         f"(allow_subset=true scores only the images in the results)")
