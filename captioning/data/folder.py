"""A folder of the user's own images: discovery and fault-tolerant loading.

Bad files (corrupt, truncated, zero bytes, not an image, over Pillow's decompression-bomb
limit) must not stop a run over thousands of photos: the dataset returns the error message
instead of a tensor, and the caller records it next to the file name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from captioning.data.images import ImageError, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def find_images(root: str | os.PathLike, exclude: str | os.PathLike | None = None
                ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files below `root` (extension case-insensitive), sorted, and what could not be searched.

    Symlinked folders are followed, each real folder once, so a symlink loop ends instead of recursing.
    The second list holds (path, reason) for every folder that could not be listed, symlink that leads
    nowhere or back into a folder already searched: a caller reports them rather than silently skipping.
    Nothing below `exclude` is returned.
    """
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    searched: set[str] = set()

    def unreadable(e: OSError) -> None:
        problems.append((Path(e.filename), f"cannot list this folder: {e.strerror}"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable, followlinks=True):
        real = os.path.realpath(folder)
        if real in searched or (skip is not None and Path(real).is_relative_to(skip)):
            if real in searched:
                problems.append((Path(folder), f"symbolic link to a folder already searched ({real}): skipped"))
            subfolders[:] = []
            continue
        searched.add(real)
        subfolders.sort()
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_symlink() and not path.exists():
                problems.append((path, f"symbolic link to a file that does not exist ({os.readlink(path)})"))
            elif path.is_file():
                found.append(path)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(found, key=key), sorted(problems, key=lambda item: key(item[0]))


class ImageFolderDataset(Dataset):
    """Items `(index, tensor (3, H, W) or None, error message or None)`. `on_image(index, image)` is called with
    each decoded image (in the DataLoader's workers): the captioner's gallery makes its thumbnails there."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], torch.Tensor],
                 on_image: Callable[[int, Image.Image], None] | None = None):
        self.paths, self.transform, self.on_image = list(paths), transform, on_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = open_image(self.paths[i])
        except ImageError as e:  # one unreadable file is recorded, not raised
            return i, None, e.reason
        if self.on_image is not None:
            self.on_image(i, image)
        return i, self.transform(image), None


def collate_folder(items: list[tuple[int, torch.Tensor | None, str | None]]):
    """-> (indices of good images, stacked tensors (B, 3, H, W) or None, [(index, error), ...])."""
    good = [(i, t) for i, t, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], images, bad
