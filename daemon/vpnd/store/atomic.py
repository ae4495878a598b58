"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("vpnd.store")

# `.{name}.{pid}.tmp`, or `.{name}.{pid}.{random}.tmp`: a write not yet renamed
# into place. One whose writer is gone was cut short and is never finished.
_TEMPORARY = re.compile(r"\..+\.([1-9][0-9]{0,9})(?:\.[0-9a-f]{16})?\.tmp", re.ASCII)


def temporary_path(path: Path, unique: str = "") -> Path:
    """Where a new `path` is written before it is renamed into place; names this process."""
    return path.with_name(f".{path.name}.{os.getpid()}" + (f".{unique}" if unique else "") + ".tmp")


def ensure_private_dir(path: Path) -> None:
    """Create a directory (and parents) readable by root alone, and tighten an existing one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600): temp file, fsync, rename, fsync dir."""
    tmp = temporary_path(path)
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


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_stale_temporaries(root: Path, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files of writes cut short (their process is gone)
    under `root`, and return them. A writer killed between creating its
    temporary file and renaming it leaves one; nothing else ever would, and
    its directory could not be removed while it is there."""
    removed: list[Path] = []
    candidates = root.rglob(".*.tmp") if recursive else root.glob(".*.tmp")
    try:
        for path in sorted(candidates):
            match = _TEMPORARY.fullmatch(path.name)
            if match is None or not path.is_file() or not _process_gone(int(match[1])):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    except FileNotFoundError:
        return removed
    for directory in {p.parent for p in removed}:
        fsync_dir(directory)
    for path in removed:
        log.info("removed %s, left by a write that was cut short", path)
    return removed
