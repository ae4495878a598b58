"""The daemon's secrets over a keyring backend: vpnd's encrypted files, or one an
administrator names.

`open_secret_store(settings)` is what the service calls. It builds the backend
that `secret_backend` names and nothing else: keyring's own discovery (entry
points, `keyring.get_keyring()`, its config file) is never consulted, so a root
daemon cannot pick up whatever backend its environment happens to offer.

Records map onto keyring as service `vpnd/{uid}/{server_id}`, username = the
record name, password = the record as JSON text. keyring cannot list a
service's records, so for a backend other than vpnd's own the adapter keeps an
index record (username `.names`, which no record name can take) listing them,
and `delete_server` removes what the index lists. The index is written before
a record and trimmed after one is deleted, so a crash in between leaves it
listing too much, never too little.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from vpnd.config import Settings
from vpnd.errors import InvalidArgument, StorageFailed, VpndError
from vpnd.store.atomic import (
    ensure_private_dir,
    move_aside,
    remove_durably,
    remove_stale_temporaries,
)
from vpnd.store.encrypted_file import RECORD_NAME, EncryptedFileKeyring, RecordMissing
from vpnd.store.key import load_store_keys
from vpnd.store.sealed import Sealer
from vpnd.store.store import SecretStore

log = logging.getLogger("vpnd.store")

ENCRYPTED_FILE = "encrypted-file"
INDEX_NAME = ".names"
_SERVER_ID = re.compile(r"[0-9a-f]{16}")
_PLAIN_FILE = re.compile(r"([0-9a-f]{16})\.json")
_MAX_PLAIN_FILE = 1 << 20

T = TypeVar("T")


class KeyringBackendLike(Protocol):
    """keyring's backend interface: what the adapter calls on any backend."""

    def get_password(self, service: str, username: str) -> str | None: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


@runtime_checkable
class ServiceDeleter(Protocol):
    """A backend that can remove all records of a service itself (needs no index)."""

    def delete_service(self, service: str) -> None: ...


def service_name(owner: int, server_id: str) -> str:
    """The keyring service of one server of one owner."""
    if isinstance(owner, bool) or not isinstance(owner, int) or owner < 0:
        raise StorageFailed("malformed owner uid")
    if not isinstance(server_id, str) or not _SERVER_ID.fullmatch(server_id):
        raise StorageFailed("malformed server id")
    return f"vpnd/{owner}/{server_id}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not RECORD_NAME.fullmatch(name):
        raise StorageFailed("malformed secret name")


class KeyringSecretStore:
    """`SecretStore` over any keyring backend; every failure is a StorageFailed."""

    def __init__(self, backend: KeyringBackendLike) -> None:
        self.backend = backend
        self._label = f"{type(backend).__module__}:{type(backend).__qualname__}"
        self._indexed = not isinstance(backend, ServiceDeleter)
        self._missing: tuple[type[Exception], ...]
        if isinstance(backend, EncryptedFileKeyring):
            self._missing = (RecordMissing,)
        else:
            # Another backend means keyring is installed and already imported.
            from keyring.errors import PasswordDeleteError

            self._missing = (PasswordDeleteError,)

    def _call(self, what: str, call: Callable[..., T], *args: str) -> T:
        try:
            return call(*args)
        except VpndError:
            raise
        except Exception as exc:
            # Only the type: a backend's message might quote what it was given.
            log.error("secret backend %s could not %s (%s)", self._label, what, type(exc).__name__)
            raise StorageFailed(
                f"the secret backend could not {what} ({type(exc).__name__})"
            ) from None

    def _get_json(self, service: str, name: str) -> Any:
        text = self._call("read a secret", self.backend.get_password, service, name)
        if text is None:
            return None
        if not isinstance(text, str):
            raise StorageFailed(f"the secret backend returned no text for {service} {name}")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise StorageFailed(f"the secret record {service} {name} is not valid JSON") from None

    def get(self, owner: int, server_id: str, name: str) -> dict[str, Any] | None:
        """One named secret of a server, or None."""
        _check_name(name)
        value = self._get_json(service_name(owner, server_id), name)
        if value is not None and not isinstance(value, dict):
            raise StorageFailed(f"the secret record {name} of server {server_id} is not an object")
        return value

    def has(self, owner: int, server_id: str, name: str) -> bool:
        """Whether a named secret exists (without decrypting it where the backend allows)."""
        _check_name(name)
        service = service_name(owner, server_id)
        if isinstance(self.backend, EncryptedFileKeyring):
            return self._call("look for a secret", self.backend.has_password, service, name)
        return self._get_json(service, name) is not None

    def set(self, owner: int, server_id: str, name: str, value: dict[str, Any]) -> None:
        """Store (or replace) one named secret of a server."""
        _check_name(name)
        service = service_name(owner, server_id)
        if not isinstance(value, dict):
            raise StorageFailed("a secret record must be an object")
        try:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            raise StorageFailed(f"the secret record {name} cannot be stored as JSON") from None
        if self._indexed:
            names = self._index(service)
            if name not in names:
                self._write_index(service, [*names, name])
        self._call("store a secret", self.backend.set_password, service, name, text)

    def delete(self, owner: int, server_id: str, name: str) -> None:
        """Forget one named secret of a server (nothing if there is none)."""
        _check_name(name)
        service = service_name(owner, server_id)
        self._delete_record(service, name)
        if self._indexed:
            names = self._index(service)
            if name in names:
                self._write_index(service, [n for n in names if n != name])

    def delete_server(self, owner: int, server_id: str) -> None:
        """Forget every secret of a server."""
        service = service_name(owner, server_id)
        if not self._indexed:
            deleter: ServiceDeleter = self.backend  # type: ignore[assignment]
            self._call("remove a server's secrets", deleter.delete_service, service)
            return
        for name in self._index(service):
            self._delete_record(service, name)
        self._delete_record(service, INDEX_NAME)

    def _delete_record(self, service: str, name: str) -> None:
        try:
            self.backend.delete_password(service, name)
        except self._missing:
            # keyring's contract uses this error for "no such record" as well as
            # for a failure; only a record still there is a failure.
            if self._get_json(service, name) is not None:
                raise StorageFailed(f"the secret backend could not delete {name}") from None
        except VpndError:
            raise
        except Exception as exc:
            log.error("secret backend %s could not delete (%s)", self._label, type(exc).__name__)
            raise StorageFailed(
                f"the secret backend could not delete a secret ({type(exc).__name__})"
            ) from None

    def _index(self, service: str) -> list[str]:
        names = self._get_json(service, INDEX_NAME)
        if names is None:
            return []
        if not isinstance(names, list) or not all(
            isinstance(n, str) and RECORD_NAME.fullmatch(n) for n in names
        ):
            raise StorageFailed(f"the index of secret records of {service} is malformed")
        return names

    def _write_index(self, service: str, names: list[str]) -> None:
        text = json.dumps(sorted(names))
        self._call("store a secret", self.backend.set_password, service, INDEX_NAME, text)


def load_backend(spec: str) -> KeyringBackendLike:
    """The keyring backend a `module:Class` setting names, instantiated with no arguments."""
    from keyring.backend import KeyringBackend

    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise InvalidArgument(
            f"secret_backend {spec}: cannot import {module_name} ({type(exc).__name__}: {exc})"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is EncryptedFileKeyring or (
        isinstance(cls, type) and cls.__module__ == "keyring.backends.chainer"
    ):
        # The chainer picks whatever the environment offers: exactly what a
        # root daemon must not do. vpnd's own backend is named "encrypted-file".
        raise InvalidArgument(f"secret_backend {spec}: this backend cannot be configured by name")
    if not isinstance(cls, type) or not issubclass(cls, KeyringBackend):
        raise InvalidArgument(f"secret_backend {spec}: {class_name} is not a keyring backend")
    try:
        backend = cls()
    except Exception as exc:
        raise StorageFailed(
            f"secret_backend {spec}: cannot start it ({type(exc).__name__}: {exc})"
        ) from None
    return backend


def migrate_plain_secrets(users_dir: Path, store: SecretStore) -> int:
    """Move the plain JSON secrets an earlier vpnd wrote
    (`users/{uid}/secrets/{server_id}.json`) into `store`, then remove them.

    Each file is removed (durably) only after all its records are stored, so a
    crash in between migrates it again on the next start. A file that is not
    a JSON object is moved aside and reported. Returns the number migrated."""
    migrated = 0
    try:
        owners = sorted(p for p in users_dir.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return 0
    for owner_dir in owners:
        secrets_dir = owner_dir / "secrets"
        try:
            candidates = sorted(secrets_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        for path in candidates:
            match = _PLAIN_FILE.fullmatch(path.name)
            if match is None or not path.is_file():
                continue
            if _migrate_file(path, int(owner_dir.name), match[1], store):
                migrated += 1
    return migrated


def _migrate_file(path: Path, owner: int, server_id: str, store: SecretStore) -> bool:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_PLAIN_FILE + 1)
        data = json.loads(raw) if len(raw) <= _MAX_PLAIN_FILE else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        try:
            aside = move_aside(path)
            log.error("cannot migrate the plain secrets %s; moved it to %s", path, aside.name)
        except OSError as exc:
            log.error("cannot migrate the plain secrets %s nor move it aside (%s)", path, exc)
        return False
    for name, value in data.items():
        if isinstance(name, str) and RECORD_NAME.fullmatch(name) and isinstance(value, dict):
            store.set(owner, server_id, name, value)
        else:
            log.warning("dropped a malformed record while migrating %s", path)
    try:
        remove_durably(path)
    except OSError as exc:
        raise StorageFailed(f"cannot remove the migrated {path}: {exc.strerror}") from None
    log.info("migrated the plain secrets %s into the secret store", path)
    return True


def open_secret_store(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> KeyringSecretStore:
    """The secret store the settings name, with any plain secrets of an earlier
    version migrated into it. `environ` (default: the process's) supplies
    `CREDENTIALS_DIRECTORY`."""
    env = os.environ if environ is None else environ
    users_dir = settings.state_dir / "users"
    try:
        ensure_private_dir(settings.state_dir)
        ensure_private_dir(users_dir)
        remove_stale_temporaries(settings.state_dir)
        if settings.store_key_path.parent.is_dir():
            remove_stale_temporaries(settings.store_key_path.parent, recursive=False)
    except OSError as exc:
        raise StorageFailed(f"cannot create {settings.state_dir}: {exc.strerror}") from None
    backend: KeyringBackendLike
    if settings.secret_backend == ENCRYPTED_FILE:
        keys = load_store_keys(settings.store_key_path, env)
        backend = EncryptedFileKeyring(users_dir, Sealer(keys.current, keys.older))
        log.info("secrets: encrypted files under %s, key from the %s", users_dir, keys.source)
    else:
        backend = load_backend(settings.secret_backend)
        log.info("secrets: keyring backend %s (configured)", settings.secret_backend)
    store = KeyringSecretStore(backend)
    migrate_plain_secrets(users_dir, store)
    return store
