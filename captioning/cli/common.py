"""What every entry point does alike: one-line errors for a user's mistakes, checked before long work.

A user's mistake (a required value left out, a missing or malformed file, an option that cannot work)
ends with `error: ...` on stderr and exit status 1, never a traceback; bugs still raise.
"""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn, TextIO

from omegaconf import DictConfig, OmegaConf, open_dict

from captioning.io import InputError


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


warnings.formatwarning = _one_line_warning  # a user reads "warning: ...", not our source line


def fail(message: str) -> NoReturn:
    stop(f"error: {message}", 1)


def stop(message: str, status: int) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    sys.exit(status)


def take_renamed(cfg: DictConfig, renamed: dict[str, str]) -> None:
    """Old option names that users' scripts may still set (kept in the yaml as null): each one set moves to its new
    name with a one-line warning; all of them leave `cfg`, so the code reads the new names alone."""
    for old, new in renamed.items():
        value = OmegaConf.select(cfg, old)
        if value is not None:
            shown = str(value).lower() if isinstance(value, bool) else value
            print(f"warning: {old}={shown} is now {new}={shown}; the old name will be removed", file=sys.stderr)
            OmegaConf.update(cfg, new, value, force_add=True)
        parent, _, key = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        with open_dict(node):
            node.pop(key, None)  # absent when the config was composed without it, or already taken


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


class _Tee:
    """A stream that writes to `stream` (the terminal: everything, as before) and appends whole lines to `log`.
    A progress bar redraws its line after each '\r': the log gets the line as last drawn, when it ends, and no
    blank line for a bar that erased itself (`bars`: the stream the bars draw on, stderr)."""

    def __init__(self, stream: TextIO, log: TextIO, bars: bool = False):
        self.stream, self.log, self.line, self.bars = stream, log, "", bars

    def write(self, text: str) -> int:
        self.stream.write(text)
        *done, line = (self.line + text).split("\n")
        self.line = line[max(line.rfind("\r"), 0):]  # a bar's last frame (from its '\r'), not every one before
        lines = [kept for line in done if (kept := self.last_frame(line)) is not None]
        if lines:
            self.log.write("".join(f"{line}\n" for line in lines))
            self.log.flush()
        return len(text)

    def last_frame(self, line: str) -> str | None:
        """The line as last drawn; None for what a bar leaves when it closes (tqdm's leave=False erases it)."""
        last = line.rsplit("\r", 1)[-1]
        return None if (self.bars or "\r" in line) and not last.strip() else last

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: the terminal's
        return getattr(self.stream, name)


@contextmanager
def copy_output_to(path: Path) -> Iterator[None]:
    """What this process prints (stdout and stderr: settings, epochs, warnings, errors, the summary) is also
    appended to `path`, line by line, for as long as the block runs. Under torchrun: rank 0's only."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", errors="backslashreplace") as log:
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log, bars=True)
        try:
            yield
        finally:
            for tee in (sys.stdout, sys.stderr):
                if (line := tee.last_frame(tee.line)):
                    log.write(line + "\n")
            sys.stdout, sys.stderr = saved
