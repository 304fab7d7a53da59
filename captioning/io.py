"""Safe file I/O: atomic writes (temp file + rename) and JSON reads with clear errors.

A crash half-way through a write never leaves a truncated checkpoint or results file
behind: we write to a temporary file in the same directory and `os.replace` it. The file gets the
permissions any new file would get (0644 under the usual umask 022), not mkstemp's private 0600, so
a colleague or a web server can read a gallery. A process killed during a write (SIGKILL) leaves its
temporary file behind; its name holds the host and process id, so `remove_stale_temp_files` can tell
such leftovers from another process's write in progress.
"""
from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class InputError(ValueError):
    """Bad user input (a missing or malformed file, unknown ids, ...).

    The message always names the file and the offending items; CLIs print it and exit 1.
    """


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of atomic writes in `folder` whose process (on this host) no longer runs."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp") if Path(folder).is_dir() else []:
        m = _TEMP.match(tmp.name)
        if m is None or m["host"] != _HOST:
            continue
        try:
            os.kill(int(m["pid"]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except PermissionError:  # someone else's live process
            pass
    return removed


def atomic_write_text(path: str | os.PathLike, text: str, errors: str = "strict") -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", errors=errors, newline="") as f:
            f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """UTF-8 JSON. A string holding a lone surrogate (a file name that is not valid UTF-8, as os.fsdecode gives
    it) is written as its JSON escape "\\udcXX", which json.load reads back as the same string."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", errors="backslashreplace")


def not_there(path: Path, folder: bool = False) -> str:
    """Why `path` is not the file (or folder) asked for: "not found", or which it is instead."""
    if not path.exists():
        return "not found"
    return "is a file, not a folder" if folder else "is a folder, not a file"


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path; InputError naming `what` unless it is a file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {not_there(path)}: {path}")
    return path


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """A UTF-8 text file, decompressed on the fly when its name ends in .xz or .gz."""
    path = existing_file(path, what)
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {path} is not UTF-8 text: {e}") from e
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"{what} {path} is not a valid {path.suffix} file: {e}") from e


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON, raising InputError that names the file (and line/column when malformed)."""
    path = existing_file(path, what)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {path} is not UTF-8 text: {e}") from e
