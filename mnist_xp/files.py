"""Atomic file writes: nothing half-written is ever left under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    from .errors import UsageError

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
