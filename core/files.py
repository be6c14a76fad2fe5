"""The files a run writes: ``output_dir`` proved writable before anything trains, writes made
durable, and every write failure turned into one line naming the path."""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rlloom.errors import OutputError


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` (parents too) and write and remove a probe file in it.

    Raises ``OutputError`` naming ``path`` when it is a file, cannot be created, is read-only
    or its disk is full, so nothing is trained that could not be saved.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"output_dir: {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".rlloom-write-check-") as probe:
            probe.write(b"\0")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise OutputError(f"output_dir: cannot write to {directory}: {reason(exc)}") from exc
    return directory


def reason(exc: BaseException) -> str:
    """Why a write failed, in words: the OS error behind ``exc`` (torch and safetensors wrap
    it in their own errors), else the exception's own message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        code = re.search(r"os error (\d+)", str(seen))
        if code:
            return os.strerror(int(code.group(1)))
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextmanager
def writing(what: str, path: str | Path) -> Iterator[None]:
    """Write ``what`` (e.g. "checkpoint") to ``path``; an OS error, or the error torch or
    safetensors raise for one, becomes an ``OutputError``: "cannot write <what> <path>: <why>"."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise OutputError(f"cannot write {what} {path}: {reason(exc)}") from exc


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to its disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s entries (a rename inside it) to its disk, where the OS allows."""
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
