"""Download COCO 2014 and turn it into Karpathy-split COCO captions files (for users who are online).

    root/downloads/{train2014,val2014,caption_datasets}.zip      the archives (kept; reruns skip them)
    root/images/{train2014,val2014}/COCO_*.jpg                   about 19 GB of images
    root/dataset_coco.json                                       Karpathy's split with raw captions
    root/captions_{train,val,test}.json                          113,287 / 5,000 / 5,000 images

Every step is skipped when its output exists; downloads and extractions go to temporary names
first and are renamed at the end, so an interrupted run never leaves a half file behind.
"""
from __future__ import annotations

import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path


from captioning.data.convert import karpathy_to_coco
from captioning.io import InputError, atomic_path
from captioning.progress import progress

COCO_IMAGES = "http://images.cocodataset.org/zips/{name}.zip"
COCO_ANNOTATIONS = "http://images.cocodataset.org/annotations/annotations_trainval2014.zip"
KARPATHY_SPLITS = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


@dataclass
class Step:
    description: str
    output: Path
    url: str | None = None          # download url to output
    archive: Path | None = None     # or extract `member` of archive to output
    member: str = ""

    def run(self) -> None:
        if self.output.exists():
            print(f"skip (exists): {self.output}")
        elif self.url is not None:
            download(self.url, self.output)
        else:
            extract(self.archive, self.output, self.member)


def coco_plan(root: str | os.PathLike, official_annotations: bool = False) -> list[Step]:
    root = Path(root)
    dl = root / "downloads"
    steps = []
    for name in ("train2014", "val2014"):
        steps.append(Step(f"download COCO {name} images", dl / f"{name}.zip", url=COCO_IMAGES.format(name=name)))
        steps.append(Step(f"extract {name}", root / "images" / name, archive=dl / f"{name}.zip", member=name))
    steps.append(Step("download Karpathy splits", dl / "caption_datasets.zip", url=KARPATHY_SPLITS))
    steps.append(Step("extract dataset_coco.json", root / "dataset_coco.json", archive=dl / "caption_datasets.zip",
                      member="dataset_coco.json"))
    if official_annotations:
        steps.append(Step("download official COCO 2014 captions", dl / "annotations_trainval2014.zip",
                          url=COCO_ANNOTATIONS))
        steps.append(Step("extract official annotations", root / "annotations",
                          archive=dl / "annotations_trainval2014.zip", member="annotations"))
    return steps


def download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url) as response, atomic_path(dest) as tmp, tmp.open("wb") as f:
        total = int(response.headers.get("Content-Length", 0)) or None
        with progress(total=total, unit="B", desc=dest.name) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))


def extract(archive: Path, output: Path, member: str) -> None:
    """Extract `member` (a file or a folder, found at any depth) of `archive` to `output`, via a temp folder."""
    partial = output.parent / f".{output.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n == member or n.startswith(member + "/") or f"/{member}" in n]
        if not names:
            raise InputError(f"archive {archive} has no member {member!r}")
        for name in progress(names, desc=f"extract {output.name}", unit="file"):
            z.extract(name, partial)
    source = partial / member if (partial / member).exists() else next(partial.rglob(member))
    os.replace(source, output)
    shutil.rmtree(partial, ignore_errors=True)


def download_coco(root: str | os.PathLike, official_annotations: bool = False, restval_into_train: bool = True,
                  dry_run: bool = False) -> list[Step]:
    """Run (or with dry_run only print) the plan, then write root/captions_{split}.json."""
    steps = coco_plan(root, official_annotations)
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps) + 1}] {step.description}: {step.url or step.archive} -> {step.output}")
        if not dry_run:
            step.run()
    print(f"[{len(steps) + 1}/{len(steps) + 1}] convert {Path(root) / 'dataset_coco.json'} -> "
          f"{Path(root)}/captions_{{train,val,test}}.json (restval into train: {restval_into_train})")
    if not dry_run:
        for split, path in karpathy_to_coco(Path(root) / "dataset_coco.json", root, restval_into_train).items():
            print(f"wrote {split}: {path}")
    return steps
