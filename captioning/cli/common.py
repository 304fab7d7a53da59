"""What every entry point does alike: one-line errors for a user's mistakes, checked before long work.

A user's mistake (a required value left out, a missing or malformed file, an option that cannot work)
ends with `error: ...` on stderr and exit status 1, never a traceback; bugs still raise.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, NoReturn

from omegaconf import DictConfig, OmegaConf

from captioning.io import InputError


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


warnings.formatwarning = _one_line_warning  # a user reads "warning: ...", not our source line


def fail(message: str) -> NoReturn:
    stop(f"error: {message}", 1)


def stop(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def require(cfg: DictConfig, example: str) -> None:
    """Exit with one line naming every required value (`???`) left unset, and an example command."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        fail(f"set {' and '.join(f'{k}=...' for k in missing)}, e.g. {example}")


def _message(e: InputError) -> str:
    """The error's own message. A DataLoader re-raises a worker's exception with the worker's traceback
    as its text ("Caught ImageError in DataLoader worker process 0. Original Traceback ..."): keep the
    last line's message, which is the one the worker raised."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


@contextmanager
def user_errors() -> Iterator[None]:
    """InputError (bad files, bad options) -> one `error:` line and exit status 1."""
    try:
        yield
    except InputError as e:
        fail(_message(e))


def run_entry_point(run: Callable[[], object]) -> None:
    """A console script's main: Hydra's app (or argparse's), with Ctrl-C ending in one line, not a traceback."""
    try:
        run()
    except KeyboardInterrupt:
        stop("interrupted (Ctrl-C)", 130)
