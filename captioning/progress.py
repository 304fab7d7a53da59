"""Progress of long loops: a live bar on a terminal, a plain line now and then in a log file.

A tqdm bar redraws itself with carriage returns many times a second. On a terminal that is what
one wants; in a SLURM log, a CI log or `> run.log` every redraw stays in the file, and one epoch
leaves a line of megabytes. So `progress(...)` takes a mode:

* ``"auto"`` (the configs' default): the bar when stderr is a terminal, else `LineProgress`, which
  prints one ordinary line every `interval` seconds and one at the end;
* ``True``: the bar whatever stderr is; ``False``: nothing.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
Mode = bool | str
INTERVAL = 30.0  # seconds between two lines in a log file


class LineProgress:
    """The part of tqdm's interface our loops use (iterate, update, set_postfix, close), as plain lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", interval: float = INTERVAL, file=None):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.file = file if file is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            self.update(1)  # counted when handed out: a loop that breaks after its last item still shows n/n
            yield item
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()

    def _print(self) -> None:
        self.last = now = time.monotonic()
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{pct}, {elapsed:.0f} s{rate}{extra}", file=self.file, flush=True)


def progress(iterable: Iterable[T] | None = None, *, mode: Mode = "auto", total: int | None = None,
             desc: str = "", unit: str = "it", leave: bool = True):
    """A tqdm bar, a LineProgress or a silent tqdm, by `mode` (see the module docstring)."""
    if mode not in (True, False, "auto"):
        raise ValueError(f"progress must be true, false or auto, got {mode!r}")
    if mode == "auto" and not sys.stderr.isatty():
        return LineProgress(iterable, total=total, desc=desc, unit=unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=mode is False)
