"""Pooled encoder features, computed once per split and cached on disk.

With a frozen encoder every epoch would push the same images through the same CNN, so we
compute the (N, D) feature matrix once and reuse it across epochs and runs. The cache key
covers everything that changes the numbers: the encoder's spec (name, weights,
preprocessing), the numeric precision, how images are read (`images.READER`), the annotation
file's bytes (which images, in which order) and the images directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import closing
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from captioning.cpus import keep_freed_memory
from captioning.data.coco import CocoCaptions, id_list
from captioning.data.folder import ImageFolderDataset, collate_folder
from captioning.data.images import READER
from captioning.io import InputError, atomic_path, atomic_write_json
from captioning.models.inference import inference_copy
from captioning.precision import autocast, resolve_precision
from captioning.progress import Mode, progress as progress_bar


def cache_path(encoder_spec: dict, coco: CocoCaptions, cache_dir: str | os.PathLike, precision: str) -> Path:
    """CACHE_DIR/<encoder>-<key>.pt, the key a hash of everything that changes the numbers."""
    h = hashlib.sha256()
    h.update(json.dumps(encoder_spec, sort_keys=True, default=str).encode())
    h.update(precision.encode())
    h.update(READER.encode())
    h.update(Path(coco.path).read_bytes())
    h.update(str(Path(coco.images_dir).resolve()).encode())
    grid = encoder_spec.get("output") == "grid"
    return Path(cache_dir) / f"{encoder_spec['name']}-{h.hexdigest()[:24]}{'.npy' if grid else '.pt'}"


# Images per CNN call by device type. On CPU a small batch's activations stay in the CPU's caches, and at 224 px
# 4 images keep every activation under malloc's 32 MiB mmap threshold (8 do not: see keep_freed_memory).
DEFAULT_BATCH = {"cpu": 4, "cuda": 64}


class EncodeBatch:
    """Images (B, 3, H, W) -> float32 features (B, D), the fast way: the encoder's inference copy
    (batch-norm and padding folded into the convolutions), channels_last memory layout (what
    oneDNN's and cuDNN's convolutions want), no autograd bookkeeping, bf16 autocast if asked.

    `EncodeItems` makes it a DataLoader's collate_fn, so that the CNN runs inside the worker processes.
    `precision`: fp32, bf16 or auto (bf16 where the device has native bf16: `self.precision` says which).
    """

    def __init__(self, encoder: nn.Module, device: torch.device, precision: str = "auto"):
        device = torch.device(device)
        precision, _ = resolve_precision(precision, device)
        self.encoder = inference_copy(encoder.to(device).eval()).to(memory_format=torch.channels_last)
        self.device, self.precision = device, precision

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.encoder(images).float()  # (B, D)


class EncodeItems:
    """collate_fn over ImageFolderDataset items that also runs the CNN: (indices, features or None, [(i, error)])."""

    def __init__(self, encode: EncodeBatch):
        self.encode = encode

    def __call__(self, items: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        indices, images, bad = collate_folder(items)
        return indices, None if images is None else self.encode(images), bad


def encoded_batches(encoder: nn.Module, dataset: ImageFolderDataset, *, batch_size: int | None = None,
                    num_workers: int = 2, device: str | torch.device = "cpu", precision: str = "auto",
                    encode_in_workers: bool = True) -> Iterator[tuple[list[int], torch.Tensor | None, list]]:
    """`dataset`'s images through `encoder`, batch by batch: (indices, float32 features (B, D) or (B, L, D) or
    None, [(index, error)] for files that could not be read). Feature extraction and captioning both run on it.

    DataLoader workers decode and resize the images while the CNN runs. On CPU (unless
    `encode_in_workers=False`) the workers run the CNN too, one single-threaded CNN per worker
    (so give it as many workers as cores): an EfficientNet is ~100 small layers, each ending in
    an OpenMP barrier that waits for its slowest thread (a descheduled one, on a busy machine),
    while separate processes never wait for each other. (A forked worker must stay at one
    thread: starting an OpenMP pool after fork can hang.) On CUDA the main process runs the CNN
    on batches from pinned memory. The default batch (DEFAULT_BATCH) is 4 images on CPU, measured
    faster than 8, 16 or 32, and 64 on CUDA. The process and its workers keep freed memory for the
    next batch (`keep_freed_memory`). While workers run the CNN, the calling process runs on the
    threads they leave (at least one), so that its own work between batches does not stall theirs;
    they come back when the iteration ends or the generator is closed (use `contextlib.closing`).
    """
    keep_freed_memory()
    device = torch.device(device)
    in_workers = encode_in_workers and device.type == "cpu" and num_workers > 0
    encode = EncodeBatch(encoder, device, precision)
    loader = DataLoader(dataset, batch_size=batch_size or DEFAULT_BATCH.get(device.type, 64), num_workers=num_workers,
                        collate_fn=EncodeItems(encode) if in_workers else collate_folder,
                        pin_memory=device.type == "cuda", worker_init_fn=_keep_freed_memory)
    threads = torch.get_num_threads()
    if in_workers:  # what the caller does between batches (beam search) gets the CPUs the workers leave
        torch.set_num_threads(max(1, threads - num_workers))
    try:
        for indices, batch, bad in loader:
            yield indices, (batch if in_workers or batch is None else encode(batch)), bad
    finally:
        torch.set_num_threads(threads)


def _keep_freed_memory(worker_id: int) -> None:
    """A worker started by spawn or forkserver does not inherit the main process's malloc settings."""
    keep_freed_memory()


def in_chunks(batches: Iterable[tuple[list[int], torch.Tensor | None, list]], size: int
              ) -> Iterator[tuple[list[int], torch.Tensor | None, list]]:
    """`encoded_batches`' (indices, features, errors) regrouped into chunks of `size` images (the last smaller):
    the CNN's batches suit the CNN, and beam search runs faster on larger ones."""
    if size < 1:
        raise ValueError(f"chunks need at least one image, got size {size}")
    indices, features, errors = [], [], []
    for batch_indices, batch_features, batch_errors in batches:
        errors += batch_errors
        if batch_features is not None:
            indices += batch_indices
            features.append(batch_features)
        while len(indices) >= size:
            stacked = torch.cat(features)
            yield indices[:size], stacked[:size], errors
            indices, features, errors = indices[size:], [stacked[size:]], []
    if indices or errors:
        yield indices, torch.cat(features) if indices else None, errors


def extract_features(encoder: nn.Module, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                     num_workers: int = 2, device: str | torch.device = "cpu", precision: str = "auto",
                     encode_in_workers: bool = True, progress: Mode = "auto", desc: str = "features",
                     grid_file: str | os.PathLike | None = None) -> torch.Tensor | np.ndarray:
    """Run `encoder` over image files (`encoded_batches`); returns float32 features (N, D) in the order of `paths`.

    A grid encoder's annotation vectors (N, L, D) go, as they come, into the .npy file `grid_file` in
    float16 (COCO's 123,287 images at 7 x 7 x 1280 are 15 GB: more than memory, half of float32) and come
    back memory-mapped. `captioning-bench encoder` measures this against a plain loop.
    """
    paths = list(paths)
    grid = getattr(encoder, "grid", False)
    if grid and grid_file is None:
        raise ValueError("a grid encoder's features need a grid_file to be written to")
    out = None if grid else torch.zeros(len(paths), encoder.out_dim)
    problems = []
    batches = encoded_batches(encoder, ImageFolderDataset(paths, encoder.transform), batch_size=batch_size,
                              num_workers=num_workers, device=device, precision=precision,
                              encode_in_workers=encode_in_workers)
    with progress_bar(total=len(paths), desc=desc, unit="img", mode=progress) as bar, closing(batches):
        for indices, batch, bad in batches:
            if batch is not None:
                feats = batch.cpu()  # (B, D) or (B, L, D)
                if grid and out is None:  # the grid's size L is known from the first batch
                    out = np.lib.format.open_memmap(grid_file, mode="w+", dtype=np.float16,
                                                    shape=(len(paths), *feats.shape[1:]))
                out[indices] = feats.numpy().astype(np.float16) if grid else feats
            problems += [f"{os.fsdecode(paths[i])}: {error}" for i, error in bad]
            bar.update(len(indices) + len(bad))
    if problems:  # every unreadable file at once, not a worker's traceback about the first one
        raise InputError(f"{len(problems)} of {len(paths)} images could not be read: {id_list(problems)}")
    if grid:
        out.flush()
    return out


def cached_features(encoder: nn.Module, coco: CocoCaptions, cache_dir: str | os.PathLike, *,
                    precision: str = "auto", build: bool = True, spec: dict | None = None,
                    **extract_kwargs) -> torch.Tensor | np.ndarray:
    """Features for every image of `coco` (rows follow `coco.image_ids`), from the cache if present:
    pooled ones (N, D) as a float32 tensor, a grid (N, L, D) as a read-only float16 memory map, so a
    training epoch reads it from disk row by row and its resident memory does not grow with the dataset.

    Each cache file is written with its size and SHA-256 beside it (`<file>.sha256`) and checked against them
    when read: a damaged file (truncated, changed on disk) is rebuilt, with a warning that names it.
    `build=False` only reads (used by non-zero ranks, which wait for rank 0 to build the cache). `spec`: the key's
    encoder spec instead of `encoder.spec` (a run that fine-tunes later reads the frozen encoder's features).
    """
    spec = spec or encoder.spec
    precision, _ = resolve_precision(precision, torch.device(extract_kwargs.get("device", "cpu")))
    path = cache_path(spec, coco, cache_dir, precision)
    if path.is_file():
        features, damage = _read_verified(path, len(coco.image_ids))
        if damage is None:
            if build and not _checksum_file(path).is_file():  # written before checksums were: adopted, it loads
                _write_checksum(path)
            return features
        if not build:
            raise InputError(f"feature cache {path} is damaged ({damage}); delete it and run again to rebuild it")
        warnings.warn(f"feature cache {path} is damaged ({damage}): rebuilding it")
        _checksum_file(path).unlink(missing_ok=True)
        path.unlink()
    if not build:
        raise FileNotFoundError(f"feature cache {path} was not built")
    paths = [coco.image_path(i) for i in coco.image_ids]
    desc = f"features {Path(coco.path).name}"
    with atomic_path(path) as tmp:
        if path.suffix == ".npy":
            extract_features(encoder, paths, precision=precision, desc=desc, grid_file=tmp, **extract_kwargs)
        else:
            feats = extract_features(encoder, paths, precision=precision, desc=desc, **extract_kwargs)
            torch.save({"features": feats, "image_ids": torch.tensor(coco.image_ids),
                        "encoder": json.dumps(spec, sort_keys=True, default=str)}, tmp)
    _write_checksum(path)
    return _load(path)  # just written and summed: no second pass over it


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _write_checksum(path: Path) -> None:
    atomic_write_json(_checksum_file(path), {"size": path.stat().st_size, "sha256": _sha256(path)})


def _load(path: Path) -> torch.Tensor | np.ndarray:
    """A cache file's features: a pooled tensor, or a grid's read-only memory map."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes on pickle protocols of a damaged file
        return torch.load(path, map_location="cpu", weights_only=True)["features"]


def _read_verified(path: Path, rows: int) -> tuple[torch.Tensor | np.ndarray | None, str | None]:
    """The cached features and None, or None and why the file cannot be trusted: its size and SHA-256 against
    those written with it (none: a cache from before checksums, trusted if it loads), then that it loads with
    one row per image."""
    try:
        written = json.loads(_checksum_file(path).read_text())
    except FileNotFoundError:
        written = None
    except (OSError, ValueError):
        return None, f"its checksum file {_checksum_file(path).name} is unreadable"
    if written is not None:
        if (size := path.stat().st_size) != written.get("size"):
            return None, f"{size} bytes where {written.get('size')} were written"
        if _sha256(path) != written.get("sha256"):
            return None, "its SHA-256 differs from the one written with it"
    try:
        features = _load(path)
    except Exception as e:  # noqa: BLE001 - a damaged zip or .npy fails in many ways; all mean "rebuild it"
        return None, f"it does not load: {type(e).__name__}"
    if len(features) != rows:
        return None, f"{len(features)} rows for {rows} images"
    return features, None


def pooled(features: torch.Tensor | np.ndarray, chunk: int = 1024) -> torch.Tensor:
    """Pooled features (N, D) float32: as they are, or the mean of a grid's annotation vectors (read in chunks)."""
    if features.ndim == 2:
        return torch.as_tensor(features, dtype=torch.float32)
    return torch.cat([torch.from_numpy(np.asarray(features[i:i + chunk], dtype=np.float32)).mean(1)
                      for i in range(0, len(features), chunk)])
