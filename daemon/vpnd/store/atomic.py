"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import time
from pathlib import Path


def ensure_private_dir(path: Path) -> None:
    """Create a directory (and parents) readable by root alone, and tighten an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600): temp file, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_durably(path: Path) -> None:
    """Remove a file, if present, and make the removal durable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: Path, reason: str = "damaged") -> Path:
    """Rename a file to `{name}.{reason}-{time}` (never over an earlier one) and
    return the new path; the caller keeps its content without it being read again."""
    stamp = int(time.time())
    for n in range(1000):
        aside = path.with_name(f"{path.name}.{reason}-{stamp}" + (f"-{n}" if n else ""))
        try:
            # link() fails on an existing name where rename() would replace it.
            os.link(path, aside)
        except FileExistsError:
            continue
        os.unlink(path)
        fsync_dir(path.parent)
        return aside
    raise FileExistsError(f"no free name to move {path} aside")
