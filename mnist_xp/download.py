"""Fetch one file from a list of mirrors into a folder: timeouts, a progress bar, an MD5 check
of the decompressed payload, and only then an atomic write under the file's name.

A download that fails its checksum is dropped and the next mirror is tried, so nothing that
could later pass for a good file is ever left behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .data import decompress
from .errors import DataError, DownloadError
from .files import atomic_write

TIMEOUT_S = 30
CHUNK = 1 << 16
MAX_BYTES = 128 << 20  # no archive of an MNIST-format dataset is near this (~30 MB at most)


def md5(payload: bytes) -> str:
    return hashlib.md5(payload, usedforsecurity=False).hexdigest()


def _download(url: str, progress: bool) -> bytes:
    """The bytes at `url` (the MNIST archives are at most ~30 MB; more than MAX_BYTES is
    refused), with a progress bar."""
    buffer = io.BytesIO()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (https mirrors)
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                  disable=not progress, leave=False) as bar:
            while chunk := response.read(CHUNK):
                buffer.write(chunk)
                bar.update(len(chunk))
                if buffer.tell() > MAX_BYTES:
                    raise DataError(f"more than {MAX_BYTES >> 20} MB: not an MNIST-format "
                                    f"archive")
    return buffer.getvalue()


def fetch(filename: str, mirrors: list[str], folder: Path, payload_md5: str,
          progress: bool = False, magic: int | None = None) -> bytes:
    """Download `filename` from the first mirror that serves it with the right payload MD5.

    Returns the decompressed payload; the file lands in `folder` only once verified.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("the folder is not writable")
    except OSError as exc:
        raise DownloadError(f"cannot download {filename} into {folder}: "
                            f"{exc.strerror or exc}") from None
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            raw = _download(url, progress)
            payload = decompress(raw, url, magic)
            found = md5(payload)
            if found != payload_md5:
                raise DataError(f"MD5 of the payload is {found}, expected {payload_md5}")
            atomic_write(folder / filename, lambda handle, raw=raw: handle.write(raw))
            return payload
        except (OSError, urllib.error.URLError, DataError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
    raise DownloadError(
        f"could not download {filename} (tried {'; '.join(failures)}): place it and the "
        f"dataset's other files in {folder} by hand, or pass --data-dir DIR")
