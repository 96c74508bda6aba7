"""Atomic file writes: nothing half-written is ever left under the final name."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UsageError

PART = ".part"


def _part_name(path: Path) -> Path:
    """The temporary file beside `path`: hidden, named after it and this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PART}")


def _remove_stale_parts(path: Path) -> None:
    """Temporary files of `path` whose writer is gone (killed mid-write): removed."""
    for part in path.parent.glob(f".{glob.escape(path.name)}.*{PART}"):
        pid = part.name[len(path.name) + 2:].split(".")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except OSError:  # alive, or not ours to ask about
            pass


def _sync_folder(folder: Path) -> None:
    """fsync the folder, so that the rename itself survives a power cut (where the OS can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(binary handle) on a temp file beside `path`, fsync it, os.replace it into
    place and fsync the folder: a crash leaves the old file or the new one, never half of one.

    A new file gets the permissions a plain open() gives (0666 less the umask: the kernel
    applies it, the process umask is never touched); a file written over keeps its own mode.
    Temp files that a killed writer left beside `path` are removed. On any error the temp
    file is removed and the error propagates."""
    path = Path(path)
    _remove_stale_parts(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    tmp = _part_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


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


def kept_path(path: Path) -> Path:
    """Where an output that cannot be written at `path` is kept instead: one file in the
    temporary folder per output path, replaced by each later attempt."""
    key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"mnist-xp-kept-{key}-{Path(path).name}"


def write_or_keep(path: Path, write: Callable[[BinaryIO], object]) -> Path | None:
    """atomic_write to `path`; if that fails (the disk filled, the folder went away), write to
    kept_path(path) instead, so that a finished run is not lost. Returns None when `path`
    was written (and removes an earlier kept copy), else where the bytes were kept; raises
    OSError when they could be written nowhere."""
    kept = kept_path(path)
    try:
        atomic_write(path, write)
    except OSError as first:
        try:
            atomic_write(kept, write)
        except OSError:
            raise first from None
        return kept
    kept.unlink(missing_ok=True)
    return None


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


def check_not_inputs(outputs: list[tuple[str, Path | None]],
                     inputs: list[tuple[str, Path | None]]) -> None:
    """An output written over one of the command's own inputs (a checkpoint resumed, a model,
    a picture, a CSV) would destroy it: refused, before any work. Each output is (what writes
    it, as the message says it, path); each input (its flag or name, path)."""
    given = {Path(path).resolve(): f"{flag} {path}".strip() for flag, path in inputs
             if path is not None}
    for writer, path in outputs:
        if path is not None and Path(path).resolve() in given:
            raise UsageError(f"{writer} would replace {given[Path(path).resolve()]}, an input "
                             f"of this command: an output never replaces an input; write it "
                             f"elsewhere")


def json_text(value: Any) -> str:
    """value as JSON text that any JSON reader accepts: a float that is not finite (NaN,
    infinity, which json.dumps would write as bare NaN or Infinity) becomes null."""
    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(v) for key, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(v) for v in item]
        return item

    return json.dumps(finite(value), indent=2, allow_nan=False) + "\n"
