"""The store key: from a systemd credential, else from a root-only key file.

A credential passed with `LoadCredentialEncrypted=vpnd-store.key` is decrypted
by systemd (bound to the TPM where the machine has one) into
`$CREDENTIALS_DIRECTORY`; only then does a stolen disk not carry the key with
it. Without one, the key lives in a key file beside the data, created on first
start: that protects against other local users and copies of the data alone,
not against someone holding the whole disk.

A key file is refused unless it is a regular file of exactly 32 bytes, owned
by root (or by the user vpnd runs as) and readable by its owner alone.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vpnd.errors import StorageFailed
from vpnd.store.atomic import fsync_dir, temporary_path
from vpnd.store.sealed import KEY_SIZE

log = logging.getLogger("vpnd.store")

CREDENTIAL_NAME = "vpnd-store.key"
_MAKE_CREDENTIAL = (
    f"head -c {KEY_SIZE} /dev/urandom | systemd-creds encrypt --name={CREDENTIAL_NAME} - "
    f"/etc/credstore.encrypted/{CREDENTIAL_NAME}"
)


@dataclass(frozen=True)
class StoreKeys:
    """The key new records are sealed with, and older keys still accepted for reading."""

    current: bytes
    older: tuple[bytes, ...]
    # Where the current key came from, for the log: never the key itself.
    source: str


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) <= size:
        chunk = os.read(fd, size + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_credential(path: Path) -> bytes:
    """The key in a systemd credential file (systemd itself guards its access)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageFailed(f"cannot read the credential {path}: {exc.strerror}") from None
    try:
        data = _read_exact(fd, KEY_SIZE)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise StorageFailed(
            f"the credential {path} holds {len(data)} bytes, not {KEY_SIZE}; "
            f"make one with: {_MAKE_CREDENTIAL}"
        )
    return data


def read_key_file(path: Path) -> bytes:
    """The key in an existing key file, after checking who may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        raise StorageFailed(f"cannot read the key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageFailed(f"the key file {path} is not a regular file")
        if info.st_uid not in {0, os.geteuid()}:
            raise StorageFailed(
                f"the key file {path} is owned by uid {info.st_uid}, not root; "
                "anyone who can replace it can read every secret written after"
            )
        if info.st_mode & 0o077:
            raise StorageFailed(
                f"the key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"it must be readable by root alone (chmod 0600 {path})"
            )
        data = _read_exact(fd, KEY_SIZE)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise StorageFailed(f"the key file {path} holds {len(data)} bytes, not {KEY_SIZE}")
    return data


def create_key_file(path: Path) -> bool:
    """Create a key file with a fresh random key, unless one exists.

    Returns False when another start created it first. The key is written and
    synced under a unique temporary name, then linked into place: link() fails
    if the name exists, so two starts cannot race and none ever sees a
    half-written key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = temporary_path(path, os.urandom(8).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_store_keys(key_file: Path, environ: Mapping[str, str]) -> StoreKeys:
    """The store's keys: the credential if systemd passed one, else the key file
    (created on first start).

    When both exist, the key file is kept as an older key so that records
    written before the credential was configured still open (and are sealed
    again with the credential's key as they are read)."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    credential = Path(credentials) / CREDENTIAL_NAME if credentials else None
    if credential is not None and credential.exists():
        current = read_credential(credential)
        older: tuple[bytes, ...]
        try:
            older = (read_key_file(key_file),)
        except FileNotFoundError:
            older = ()
        if older:
            log.info(
                "store key: systemd credential %s; %s still opens records written before",
                CREDENTIAL_NAME,
                key_file,
            )
        else:
            log.info("store key: systemd credential %s", CREDENTIAL_NAME)
        return StoreKeys(current, older, f"credential {CREDENTIAL_NAME}")
    created = False
    try:
        try:
            current = read_key_file(key_file)
        except FileNotFoundError:
            created = create_key_file(key_file)
            current = read_key_file(key_file)
    except FileNotFoundError:
        raise StorageFailed(f"the key file {key_file} vanished while it was created") from None
    except OSError as exc:
        raise StorageFailed(f"cannot create the key file {key_file}: {exc.strerror}") from None
    log.info(
        "store key: key file %s (%s; no systemd credential %s)",
        key_file,
        "created now" if created else "existing",
        CREDENTIAL_NAME,
    )
    return StoreKeys(current, (), f"key file {key_file}")
