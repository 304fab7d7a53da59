"""The icons set: real images with human-given names, from Tabler Icons (MIT licence, tabler.io/icons).

Two npm tarballs hold it: `@tabler/icons-png` (a 240 x 240 PNG of every icon, 5,166 outline and 1,054
filled renders) and `@tabler/icons` (`icons.json`: each icon's name, category and tags, given by the
icons' authors and contributors). Pinned to one release and checked against the registry's sha512, so the
same seed gives the same set everywhere.

Captions (two references per image, both written by people, neither by us):
  1. the icon's name as words: "arrow-big-down-line" -> "arrow big down line";
  2. its category and its first three tags that are not words of the name, in the authors' order:
     "calendar-cog" (System; schedule, settings, appointment, ...) -> "system icon: schedule, settings,
     appointment". Where the category is empty, "icon: ..."; where every tag is a name word, the name.
The first reference is what a person would call the picture; the second is how its authors describe its
use. CIDEr-D rewards a caption that matches either, weighting the words the two share.

Splits, over the outline icons shuffled by the seed: `test` and `val` are icons absent from `train` (a
novel icon's name must be composed from parts seen elsewhere, "calendar" and "cog", not looked up), and
`test_shifted` holds the filled renders of icons whose outline is in `train`: the same names in a style
training never saw (as shapes_shifted's outlines are).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from captioning.data.convert import write_coco_split
from captioning.io import InputError, atomic_path, existing_file

VERSION = "3.48.0"


@dataclass(frozen=True)
class Tarball:
    package: str
    integrity: str  # the registry's dist.integrity of VERSION

    @property
    def filename(self) -> str:  # as `npm pack` names it
        return f"{self.package.split('/')[1]}-{VERSION}.tgz"

    @property
    def url(self) -> str:
        return f"https://registry.npmjs.org/{self.package}/-/{self.filename}"


PNGS = Tarball("@tabler/icons-png", "sha512-7tZrPHDh+PaTFgKOuPqM3hFb1X32tTH8CKIiyetXPQDpsQgj7sHJ4RJpN6V8rw1chp+ISX8X"
                                    "KnvrYiN+UiNavg==")
METADATA = Tarball("@tabler/icons", "sha512-lQk06gVHNVBnJp0UOgtth54mcZBJM7rdYKsAxKOProj1bbSAx+/xiuOWfHlyvgdL3M+Y+I0H"
                                    "INrjHa3ygp8eXQ==")
STYLES = ("outline", "filled")
LICENCE_FILE = "LICENSE-tabler-icons.txt"


def icon_captions(name: str, category: str, tags: list) -> list[str]:
    """The two references of an icon (the module docstring says why these)."""
    words = name.replace("-", " ")
    extra = [str(t) for t in tags if str(t) not in words.split()][:3]
    if not extra:
        return [words, words]
    return [words, f"{category.lower() + ' ' if category else ''}icon: {', '.join(extra)}"]


def fetch(tarball: Tarball, downloads: Path) -> Path:
    """downloads/<npm's file name>, downloaded once and checked against the pinned sha512."""
    from captioning.data.download import download  # urllib and tqdm only when something is fetched

    path = downloads / tarball.filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        print(f"download {tarball.url}")
        try:
            download(tarball.url, path)
        except (urllib.error.URLError, OSError) as e:
            raise InputError(f"cannot download {tarball.url} ({getattr(e, 'reason', e)}): fetch it where you are "
                             f"online (npm pack {tarball.package}@{VERSION}) and put it in {downloads}/") from None
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != tarball.integrity:
        raise InputError(f"{path} is not {tarball.package}@{VERSION} (its sha512 differs from the registry's): "
                         "delete it and run again to download it afresh")
    return path


def read_tarballs(pngs: Path, metadata: Path) -> tuple[dict, dict[tuple[str, str], bytes], str]:
    """(icons.json, {(style, name): PNG bytes}, the licence text) from the two tarballs (or slices of them)."""
    def members(path: Path, what: str):
        try:
            with tarfile.open(existing_file(path, what)) as tar:
                for member in tar:
                    if member.isfile():
                        yield member.name, tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InputError(f"{path}: not a readable {what} ({str(e).splitlines()[0]})") from None

    images, licence = {}, ""
    for name, data in members(pngs, f"{PNGS.package} tarball"):
        parts = name.split("/")  # package/icons/<style>/<name>.png
        if len(parts) == 4 and parts[1] == "icons" and parts[2] in STYLES and parts[3].endswith(".png"):
            images[parts[2], parts[3][:-4]] = data
    icons = None
    for name, data in members(metadata, f"{METADATA.package} tarball"):
        if name == "package/icons.json":
            icons = json.loads(data)
        elif name == "package/LICENSE":
            licence = data.decode()
    if icons is None:
        raise InputError(f"{metadata}: no package/icons.json in it (is it the {METADATA.package} tarball?)")
    if not any(style == "outline" for style, _ in images):
        raise InputError(f"{pngs}: no package/icons/outline/*.png in it (is it the {PNGS.package} tarball?)")
    return icons, images, licence


def split_icons(icons: dict, images: dict, n_val: int, n_test: int, n_shifted: int, seed: int
                ) -> dict[str, list[tuple[str, str]]]:
    """{split: [(style, name), ...]}: val and test novel outline icons, train the other outlines, test_shifted
    the filled renders of train icons."""
    outline = sorted(n for s, n in images if s == "outline" and n in icons)
    if n_val + n_test >= len(outline):
        raise InputError(f"--val {n_val} and --test {n_test} leave no training icons of {len(outline)}")
    random.Random(seed).shuffle(outline)
    test, val, train = outline[:n_test], outline[n_test:n_test + n_val], sorted(outline[n_test + n_val:])
    filled = [n for n in train if ("filled", n) in images]
    shifted = sorted(random.Random(seed + 1).sample(filled, min(n_shifted, len(filled))))
    return {"train": [("outline", n) for n in train], "val": [("outline", n) for n in sorted(val)],
            "test": [("outline", n) for n in sorted(test)], "test_shifted": [("filled", n) for n in shifted]}


def make_icons_dataset(root: str | os.PathLike, pngs: Path, metadata: Path, n_val: int = 500, n_test: int = 500,
                       n_shifted: int = 500, seed: int = 0, demo_images: int = 8) -> dict[str, Path]:
    """Write root/images/{split}/<name>.png, root/captions_{split}.json and the licence; returns split -> path.

    The PNGs are copied byte for byte (transparent backgrounds: the image reader composites them onto
    white). Image ids run on across splits; the first `demo_images` test icons go to root/demo_images too.
    """
    root = Path(root)
    icons, images, licence = read_tarballs(pngs, metadata)
    splits = split_icons(icons, images, n_val, n_test, n_shifted, seed)
    paths, image_id, ann_id = {}, 1, 1
    for split, members in splits.items():
        folder = root / "images" / split
        if folder.is_dir():  # a rerun with another seed must not leave the last split's icons behind
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        entries, annotations = [], []
        for style, name in members:
            with atomic_path(folder / f"{name}.png") as tmp:
                tmp.write_bytes(images[style, name])
            meta = icons[name]
            entries.append({"id": image_id, "file_name": f"{name}.png", "width": 240, "height": 240,
                            "style": style, "category": meta.get("category", "")})
            for caption in icon_captions(name, meta.get("category", ""), meta.get("tags", [])):
                annotations.append({"id": ann_id, "image_id": image_id, "caption": caption})
                ann_id += 1
            image_id += 1
        paths[split] = root / f"captions_{split}.json"
        write_coco_split(paths[split], entries, annotations,
                         f"Tabler Icons {VERSION} (MIT), split {split} ({members[0][0] if members else ''}), "
                         f"seed {seed}")
    demo = root / "demo_images"
    shutil.rmtree(demo, ignore_errors=True)  # a rerun with another seed keeps only its own test icons here
    demo.mkdir()
    for style, name in splits["test"][:demo_images]:
        with atomic_path(demo / f"{name}.png") as tmp:
            tmp.write_bytes(images[style, name])
    with atomic_path(root / LICENCE_FILE) as tmp:
        tmp.write_text(licence)
    return paths


def write_slice(pngs: Path, metadata: Path, out: Path, n_icons: int, seed: int = 0) -> tuple[Path, Path]:
    """Tarballs of the same layout holding `n_icons` icons (all of them with a filled render among them in
    proportion) and the licence: a small real set for tests and quick tries."""
    icons, images, licence = read_tarballs(pngs, metadata)
    names = sorted(random.Random(seed).sample(sorted(n for s, n in images if s == "outline" and n in icons), n_icons))
    out.mkdir(parents=True, exist_ok=True)

    def write(path: Path, files: dict[str, bytes]) -> Path:
        with atomic_path(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
            for name, data in sorted(files.items()):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 0
                tar.addfile(info, io.BytesIO(data))
        return path

    png_files = {f"package/icons/{s}/{n}.png": images[s, n] for n in names for s in STYLES if (s, n) in images}
    meta = {"package/icons.json": json.dumps({n: icons[n] for n in names}).encode(),
            "package/LICENSE": licence.encode()}
    return (write(out / f"icons-png-slice-{VERSION}.tgz", {**png_files, "package/LICENSE": licence.encode()}),
            write(out / f"icons-slice-{VERSION}.tgz", meta))
