"""Stopping a training run cleanly on SIGTERM (SLURM preemption, `scancel`, a job's time limit) or SIGINT (Ctrl-C).

Inside `catch_signals()` the first SIGTERM or SIGINT only sets a flag. The training loop looks at it
between steps (`check()` raises `Interrupted`), saves a checkpoint of exactly where it is (the step within
the epoch included) and exits with a message naming it. A second Ctrl-C stops at once, as usual.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Received:
    """The signal that arrived inside `catch_signals()` (None: none yet); the handler sets it, the loop reads it."""
    signum: int | None = None


class Interrupted(Exception):
    """A SIGTERM or SIGINT arrived; `signum` says which (the exit status is 128 + signum). The training
    loop adds the checkpoint it saved and where the run stood."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.checkpoint: str | None = None
        self.where = ""


def _handler(signum: int, frame) -> None:
    if _Received.signum is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C twice: the user really wants out now
    _Received.signum = signum


@contextmanager
def catch_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into a flag for the block (main thread only: elsewhere signals stay as they are)."""
    try:
        previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    except ValueError:  # not the main thread: Python delivers signals there only
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Received.signum = None


def received() -> int | None:
    """The signal that arrived since the block began, if any."""
    return _Received.signum


def check() -> None:
    """Raise Interrupted if a signal arrived since the block began."""
    if _Received.signum is not None:
        raise Interrupted(_Received.signum)
