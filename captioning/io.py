"""Safe file I/O: atomic writes (temp file + rename) and JSON reads with clear errors.

A crash half-way through a write never leaves a truncated checkpoint or results file
behind: we write to a temporary file in the same directory and `os.replace` it. The file gets the
permissions any new file would get (0644 under the usual umask 022), not mkstemp's private 0600, so
a colleague or a web server can read a gallery. A process killed during a write (SIGKILL) leaves its
temporary file behind; its name holds the host and process id, so `remove_stale_temp_files` can tell
such leftovers from another process's write in progress.
"""
from __future__ import annotations

import errno
import gzip
import json
import lzma
import os
import re
import shutil
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


class WriteError(InputError):
    """A file that could not be written (a full disk, a read-only folder): one line naming it and what is intact."""


FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, or over the user's quota
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_problem(path: Path, e: BaseException, written: int = 0) -> str | None:
    """What a failed write of `path` means for the user, or None if `e` is not a disk's or a folder's refusal.
    torch.save reports any failed write as a RuntimeError of its zip writer (inline_container.cc), without an
    errno: a disk with less free space than was written is then taken to be full."""
    torch_writer = isinstance(e, RuntimeError) and ("inline_container" in str(e) or "write failed" in str(e))
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    if not (torch_writer or code in (*FULL, *DENIED, errno.EFBIG)):
        return None
    kept = f"{path} keeps its previous version" if path.is_file() else f"nothing was written to {path}"
    if code in DENIED:
        return f"cannot write {path}: its folder is not writable ({os.strerror(code)}); {kept}; choose another folder"
    if code == errno.EFBIG:
        return (f"cannot write {path}: it would pass this process's file-size limit (ulimit -f) after "
                f"{_megabytes(written)}; {kept}")
    free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
    if code in FULL or free <= written:
        return (f"cannot write {path}: the disk is full ({_megabytes(free)} free there; it had written "
                f"{_megabytes(written)} and needed more); {kept}; free some space and run again")
    return f"cannot write {path}: {str(e).splitlines()[0]}; {kept}"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`. A full disk or a read-only folder
    is a WriteError that names `path` and says what is intact (`path` as it was: the rename never happened)."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        problem = write_problem(path, e, written)  # while the partial file still takes its space
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if problem is not None:
            raise WriteError(problem) from None
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """WriteError now, before long work, if `folder` cannot be made or written to (it is made if missing)."""
    with atomic_path(Path(folder) / ".write-check") as tmp:
        tmp.write_bytes(b"")
    (Path(folder) / ".write-check").unlink()


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
