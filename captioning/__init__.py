"""captioning: CNN encoder + RNN/LSTM decoder image captioning.

Public API::

    from captioning import tokenize, Vocabulary, load_captioner
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["tokenize", "Vocabulary", "load_captioner", "__version__"]

from captioning.text import Vocabulary, tokenize

if TYPE_CHECKING:  # pragma: no cover
    from captioning.models.captioner import load_captioner


def __getattr__(name: str) -> Any:
    # load_captioner pulls in torch/torchvision; import it only when asked for.
    if name == "load_captioner":
        from captioning.models.captioner import load_captioner

        return load_captioner
    raise AttributeError(f"module 'captioning' has no attribute {name!r}")
