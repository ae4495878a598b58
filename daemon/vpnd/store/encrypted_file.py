"""vpnd's own keyring backend: one sealed file per secret record, readable by root alone.

Layout (directories 0700, files 0600, every write atomic):

    {state_dir}/users/{uid}/secrets/{server_id}/{name}.secret

for the keyring service `vpnd/{uid}/{server_id}` and username `{name}`; the
password is the record's text. Each file is sealed (`vpnd.store.sealed`) and
bound to its service and name, so a file moved to another user's or server's
directory, or renamed, does not open.

A record that does not open is never overwritten nor deleted: it is moved
aside (`{name}.secret.damaged-{time}`), and the read that found it fails with
StorageFailed naming the file. The next read finds no record, so the user can
log in again, and the damaged file stays for the administrator.

It implements keyring's backend interface (`get_password`, `set_password`,
`delete_password`) without deriving from keyring's base class: importing
keyring costs a root daemon about 10 MiB and brings its discovery machinery,
which vpnd never uses. So keyring's discovery cannot pick this backend, and
`KEYRING_PROPERTY_*` variables do not configure it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from pathlib import Path

from vpnd.errors import StorageFailed
from vpnd.store.atomic import fsync_dir, move_aside, remove_durably, write_atomic
from vpnd.store.sealed import RecordUnreadable, Sealer, context

log = logging.getLogger("vpnd.store")

SERVICE = re.compile(r"vpnd/(0|[1-9][0-9]{0,9})/([0-9a-f]{16})", re.ASCII)
RECORD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
SUFFIX = ".secret"
# Far above any token or key; bounds what one read can make the daemon allocate.
MAX_RECORD = 1 << 20


class RecordMissing(LookupError):
    """delete_password found no such record (keyring's PasswordDeleteError, for this backend)."""


class EncryptedFileKeyring:
    """Secrets sealed with the store key, one file per (service, username)."""

    def __init__(self, users_dir: Path, sealer: Sealer) -> None:
        self._users = users_dir
        self._sealer = sealer

    def _dir(self, service: str) -> Path:
        match = SERVICE.fullmatch(service)
        if match is None:
            raise StorageFailed(f"malformed secret service {service!r}")
        return self._users / match[1] / "secrets" / match[2]

    def _path(self, service: str, username: str) -> Path:
        if not RECORD_NAME.fullmatch(username):
            raise StorageFailed(f"malformed secret name {username!r}")
        return self._dir(service) / f"{username}{SUFFIX}"

    def _read(self, path: Path) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageFailed(f"cannot read {path}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read(MAX_RECORD + 1)
        except OSError as exc:
            raise StorageFailed(f"cannot read {path}: {exc.strerror}") from None

    def _open(self, path: Path, data: bytes, service: str, username: str) -> tuple[str, bool]:
        if len(data) > MAX_RECORD:
            raise RecordUnreadable(f"it is larger than {MAX_RECORD} bytes")
        plaintext, stale = self._sealer.open(data, context(service, username))
        try:
            return plaintext.decode(), stale
        except UnicodeDecodeError:
            raise RecordUnreadable("it does not hold text") from None

    def _set_aside(self, path: Path, reason: RecordUnreadable) -> str:
        """Move a record that does not open out of the way; a sentence for the error."""
        try:
            aside = move_aside(path)
        except OSError as exc:
            log.error("cannot move the unreadable %s aside: %s", path, exc)
            raise StorageFailed(
                f"the secret record {path} cannot be read ({reason}) nor moved aside"
            ) from None
        log.error("the secret record %s cannot be read (%s); moved it to %s", path, reason, aside)
        return f"the secret record {path} cannot be read ({reason}); it was kept as {aside.name}"

    def has_password(self, service: str, username: str) -> bool:
        """Whether a record exists, without opening it."""
        return self._path(service, username).is_file()

    def get_password(self, service: str, username: str) -> str | None:
        """The text of a record, None if there is none; StorageFailed if it does not open."""
        path = self._path(service, username)
        data = self._read(path)
        if data is None:
            return None
        try:
            text, stale = self._open(path, data, service, username)
        except RecordUnreadable as reason:
            raise StorageFailed(self._set_aside(path, reason)) from None
        if stale:
            # Written under an older key: seal it again under the current one.
            self._write(path, service, username, text)
            log.info("sealed %s again with the current store key", path)
        return text

    def set_password(self, service: str, username: str, password: str) -> None:
        """Store (or replace) a record; one that does not open is moved aside first."""
        path = self._path(service, username)
        existing = self._read(path)
        if existing is not None:
            try:
                self._open(path, existing, service, username)
            except RecordUnreadable as reason:
                self._set_aside(path, reason)
        self._write(path, service, username, password)

    def _write(self, path: Path, service: str, username: str, text: str) -> None:
        plaintext = text.encode()
        if len(plaintext) > MAX_RECORD - 64:
            raise StorageFailed(f"a secret record of {len(plaintext)} bytes is too large")
        record = self._sealer.seal(plaintext, context(service, username))
        try:
            _make_private_dirs(self._users, path.parent)
            write_atomic(path, record)
        except OSError as exc:
            raise StorageFailed(f"cannot write {path}: {exc.strerror}") from None

    def delete_password(self, service: str, username: str) -> None:
        """Remove a record; RecordMissing if there is none (keyring's contract)."""
        path = self._path(service, username)
        try:
            path.unlink()
        except FileNotFoundError:
            raise RecordMissing(f"no secret record {username!r} in {service}") from None
        except OSError as exc:
            raise StorageFailed(f"cannot remove {path}: {exc.strerror}") from None
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            raise StorageFailed(f"cannot remove {path}: {exc.strerror}") from None

    def delete_service(self, service: str) -> None:
        """Remove every record of a service, and its directory unless a damaged
        record kept aside is still in it."""
        directory = self._dir(service)
        try:
            records = sorted(directory.glob(f"*{SUFFIX}"))
        except OSError as exc:
            raise StorageFailed(f"cannot list {directory}: {exc.strerror}") from None
        try:
            for path in records:
                remove_durably(path)
            directory.rmdir()
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                log.info("kept %s: it holds damaged records set aside", directory)
                return
            raise StorageFailed(f"cannot remove {directory}: {exc.strerror}") from None
        fsync_dir(directory.parent)


def _make_private_dirs(root: Path, directory: Path) -> None:
    """Create `directory` and the missing ones between it and `root` (0700), each
    made durable in its parent."""
    if directory.is_dir():
        return
    missing: list[Path] = []
    current = directory
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
        fsync_dir(path.parent)
