"""Atomic file writes: nothing half-written is ever left under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(binary handle) on a temp file beside `path`, then os.replace it into place.

    The file gets the permissions a plain open() would give it (0666 less the umask), not
    mkstemp's 0600. On any error the temp file is removed and the error propagates.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output(path: Path | None, flag: str, example: str) -> None:
    """Refuse, before any work, an output that cannot be written: a folder given as a file
    path (`example` is the file name to suggest), a missing or read-only folder."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file path, e.g. {path / example}")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: folder {folder} is not writable")


def write_or_keep(path: Path, write: Callable[[BinaryIO], object]) -> Path | None:
    """atomic_write to `path`; if that fails (the disk filled, the folder went away), write to
    a new file in the temporary folder instead, so that a finished run is not lost. Returns
    None when `path` was written, else where the bytes were kept; raises OSError when they
    could be written nowhere."""
    try:
        atomic_write(path, write)
        return None
    except OSError as first:
        fd, kept = tempfile.mkstemp(prefix=f"mnist-xp-kept-{path.stem}-", suffix=path.suffix)
        os.close(fd)
        try:
            atomic_write(Path(kept), write)
        except OSError:
            Path(kept).unlink(missing_ok=True)
            raise first from None
        return Path(kept)


def check_distinct(outputs: list[tuple[str, Path | None]]) -> None:
    """Two outputs written to one file: the later write would replace the earlier one."""
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        where = Path(path).resolve()
        if where in seen:
            raise UsageError(f"{flag} {path} is also {seen[where]}'s file: give each output a "
                             f"file of its own")
        seen[where] = flag


def keep_output(path: Path, flag: str, write: Callable[[BinaryIO], object]) -> str | None:
    """Write an output of a finished run; None when written, else the line that says where
    it was kept instead (write_or_keep), or that it could be kept nowhere."""
    try:
        kept = write_or_keep(path, write)
    except OSError as exc:
        return f"{flag} {path}: {exc.strerror or exc}, and it could not be kept anywhere"
    if kept is None:
        return None
    return f"{flag} {path} could not be written; it was kept at {kept}"
