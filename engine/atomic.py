"""Durable, all-or-nothing file writes: a temporary file in the target's folder, fsync, rename,
then fsync of the folder, so a crash or a full disk leaves the previous file as it was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder (a rename within one folder is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too. Windows cannot open a
    # folder for fsync, and its rename is already journalled.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    tmp = temporary_beside(path)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)
