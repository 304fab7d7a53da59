"""Safe file I/O: atomic writes (temp file + rename) and JSON reads with clear errors.

A crash half-way through a write never leaves a truncated checkpoint or results file
behind: we write to a temporary file in the same directory and `os.replace` it.
"""
from __future__ import annotations

import gzip
import json
import lzma
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class InputError(ValueError):
    """Bad user input (a missing or malformed file, unknown ids, ...).

    The message always names the file and the offending items; CLIs print it and exit 1.
    """


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """A UTF-8 text file, decompressed on the fly when its name ends in .xz or .gz."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
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
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {path} is not UTF-8 text: {e}") from e
