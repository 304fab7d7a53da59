"""Checkpoints: plain data + tensors, loadable with torch.load(weights_only=True), written atomically.

A checkpoint is self-contained (as in nanoGPT): the model's state, the vocabulary and the
model's configuration (encoder spec + decoder arguments) rebuild the captioner with no
other file and no download; `train_state` lets a run resume; `run_config` records the run.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch

from captioning.io import InputError, atomic_path, existing_file
from captioning.text import Vocabulary

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, *, model_state: dict, vocab: Vocabulary, model_config: dict,
                    train_state: dict | None = None, run_config: dict | None = None) -> None:
    from captioning import __version__

    try:  # fail now, not when weights_only=True refuses the file at load time
        json.dumps(model_config)
    except TypeError as e:
        raise TypeError(f"model_config must be plain data (dict/list/str/number): {e}") from e
    payload = {"format_version": FORMAT_VERSION, "captioning_version": __version__, "model": model_state,
               "vocab": vocab.to_dict(), "model_config": model_config, "train_state": train_state,
               "run_config": run_config}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and check a checkpoint; InputError names the file and what is wrong with it."""
    path = existing_file(path, "checkpoint")
    ckpt = load_plain(path, "a checkpoint", map_location)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise InputError(f"{path} is not a captioning checkpoint (it has no format_version)")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path} has checkpoint format {ckpt['format_version']} (written by captioning "
                         f"{ckpt.get('captioning_version', '?')}); this version reads format {FORMAT_VERSION}")
    missing = [k for k in ("model", "vocab", "model_config") if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise InputError(f"{path} is an incomplete checkpoint: missing {missing}")
    return ckpt


def load_plain(path: Path, what: str, map_location: str | torch.device = "cpu"):
    """torch.load(weights_only=True) of an existing file: tensors and plain data only; InputError names the file and
    why it is not `what` (a file of this project)."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling junk can fail in many ways; all mean "not such a file"
        # Never repeat torch's advice to retry with weights_only=False: that runs whatever the file holds.
        with path.open("rb") as f:
            written_by_torch_save = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
        if not written_by_torch_save:
            why = "it is not a file written by torch.save"
        elif type(e).__name__ == "UnpicklingError" and zipfile.is_zipfile(path):  # weights_only's refusal
            why = "it holds Python objects other than tensors and plain data, which this project never loads"
        else:
            why = f"the file is damaged (truncated or changed after it was written): {type(e).__name__}"
        raise InputError(f"{path} is not {what} of this project: {why}") from None
    return payload
