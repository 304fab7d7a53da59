"""Caption data: COCO-format splits, datasets and batching, converters, the synthetic shapes set.

Names are imported on first use (as in `captioning/__init__.py`), so a script that only converts caption
files (`datasets/flickr8k_to_coco.py`) starts without loading torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"CocoCaptions": "coco", "load_coco_captions": "coco", "CaptionBatch": "collate",
          "collate_captions": "collate", "flickr8k_to_coco": "convert", "karpathy_to_coco": "convert",
          "CaptionDataset": "datasets", "load_image": "datasets",
          "open_image": "images", "make_shapes_dataset": "shapes", "summary": "shapes"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'captioning.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"captioning.data.{_WHERE[name]}"), name)
