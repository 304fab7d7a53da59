"""What every entry point does alike: one-line errors for a user's mistakes, checked before long work.

A user's mistake (a required value left out, a missing or malformed file, an option that cannot work)
ends with `error: ...` on stderr and exit status 1, never a traceback; bugs still raise.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

from omegaconf import DictConfig, OmegaConf

from captioning.io import InputError


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def require(cfg: DictConfig, example: str) -> None:
    """Exit with one line naming every required value (`???`) left unset, and an example command."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        fail(f"set {' and '.join(f'{k}=...' for k in missing)}, e.g. {example}")


@contextmanager
def user_errors() -> Iterator[None]:
    """InputError (bad files, bad options) -> one `error:` line and exit status 1."""
    try:
        yield
    except InputError as e:
        fail(str(e))
