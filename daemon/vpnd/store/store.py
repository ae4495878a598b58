"""Servers and secrets per owner UID under the state directory.

Layout (all directories 0700, files 0600, every write atomic):

    {state_dir}/users/{uid}/servers.json   the owner's servers (URLs, kinds and ids, not secret)
    {state_dir}/users/{uid}/secrets/       tokens and keys, sealed (`encrypted_file`)

Secrets go through `SecretStore`, which `secret_store.open_secret_store`
provides over a keyring backend: vpnd's encrypted files or one the
administrator configures.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from vpnd.errors import StorageFailed
from vpnd.store.atomic import ensure_private_dir, move_aside, write_atomic

log = logging.getLogger("vpnd.store")

_SERVER_ID = re.compile(r"[0-9a-f]{16}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,31}")
_PROFILE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_FILE = 1 << 20

# servers.json versions: 1 was a bare list of records, all eduVPN API v3
# servers; 2 is {"schema": 2, "servers": [...]} with each record's kind.
SCHEMA = 2
# The kind of every server a version 1 file holds.
_V1_KIND = "eduvpn-v3"


@dataclass
class ServerRecord:
    """A server one owner added."""

    server_id: str
    owner: int
    url: str
    added_at: float
    kind: str
    session_expiry: float = 0.0
    # The profile to connect with when vpnd starts ("": none); system-wide servers only.
    autoconnect: str = ""
    # Secure internet: the organization whose home server `url` is, and the
    # location (another server's base URL) whose API is used; "" the home.
    org_id: str = ""
    location: str = ""

    @staticmethod
    def from_dict(data: Any, owner: int) -> ServerRecord:
        """A record from its stored form; StorageFailed if malformed."""
        if not isinstance(data, dict):
            raise StorageFailed("a server record is not an object")
        try:
            record = ServerRecord(
                server_id=str(data["server_id"]),
                owner=owner,
                url=str(data["url"]),
                added_at=float(data["added_at"]),
                kind=str(data["kind"]),
                session_expiry=float(data.get("session_expiry", 0.0)),
                autoconnect=str(data.get("autoconnect", "")),
                org_id=str(data.get("org_id", "")),
                location=str(data.get("location", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageFailed(f"a server record is malformed ({exc})") from None
        if not _SERVER_ID.fullmatch(record.server_id):
            raise StorageFailed("a server record has a malformed id")
        if not _KIND.fullmatch(record.kind):
            raise StorageFailed("a server record has a malformed kind")
        if len(record.org_id) > 256 or not record.org_id.isprintable():
            raise StorageFailed("a server record has a malformed organization id")
        if record.location and (
            not record.location.startswith("https://") or len(record.location) > 2048
        ):
            raise StorageFailed("a server record has a malformed location")
        if record.autoconnect and not _PROFILE.fullmatch(record.autoconnect):
            raise StorageFailed("a server record names a malformed profile to connect at start")
        return record


def host_of(record: ServerRecord) -> str:
    """The server's host name, which is how people name it."""
    return urlsplit(record.url).hostname or record.url


def _records(data: Any, path: Path) -> list[Any]:
    """The list of stored records in a servers.json of any schema this version reads."""
    if isinstance(data, list):
        # Schema 1: every server was eduVPN API v3.
        return [{"kind": _V1_KIND, **item} if isinstance(item, dict) else item for item in data]
    if not isinstance(data, dict):
        raise StorageFailed(f"{path} is neither a list nor an object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise StorageFailed(f"{path} has schema {schema!r}; this vpnd reads 1 and {SCHEMA}")
    servers = data.get("servers")
    if not isinstance(servers, list):
        raise StorageFailed(f"{path} holds no list of servers")
    return servers


def new_server_id() -> str:
    """A fresh random server id (also the last part of its D-Bus object path)."""
    return os.urandom(8).hex()


class SecretStore(Protocol):
    """Where tokens and key material live, per owner and server.

    A record has a name (`[a-z][a-z0-9_]{0,31}`) and a JSON object as value.
    Every failure, a damaged record included, is a StorageFailed."""

    def get(self, owner: int, server_id: str, name: str) -> dict[str, Any] | None:
        """One named record of a server, or None."""
        ...

    def has(self, owner: int, server_id: str, name: str) -> bool:
        """Whether a named record exists (cheaper than get where the backend allows)."""
        ...

    def set(self, owner: int, server_id: str, name: str, value: dict[str, Any]) -> None:
        """Store (or replace) one named record of a server."""
        ...

    def delete(self, owner: int, server_id: str, name: str) -> None:
        """Forget one named record of a server (nothing if there is none)."""
        ...

    def delete_server(self, owner: int, server_id: str) -> None:
        """Forget every record of a server."""
        ...


@dataclass(frozen=True)
class ServerSecrets:
    """One server's records in a SecretStore (what a provider keeps: key pairs and such)."""

    secrets: SecretStore
    owner: int
    server_id: str

    def get(self, name: str) -> dict[str, Any] | None:
        """One named record, or None."""
        return self.secrets.get(self.owner, self.server_id, name)

    def set(self, name: str, value: dict[str, Any]) -> None:
        """Store or replace one named record."""
        self.secrets.set(self.owner, self.server_id, name, value)

    def delete(self, name: str) -> None:
        """Forget one named record."""
        self.secrets.delete(self.owner, self.server_id, name)


def _read_json(path: Path) -> Any:
    with path.open("rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise StorageFailed(f"{path} is larger than {_MAX_FILE} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageFailed(f"{path} is not valid JSON ({exc})") from None


class Store:
    """The daemon's persistent state; nothing else writes under the state directory."""

    def __init__(self, state_dir: Path, secrets: SecretStore | None = None) -> None:
        """`secrets` defaults to the encrypted files with the default key sources."""
        self._root = state_dir / "users"
        ensure_private_dir(state_dir)
        ensure_private_dir(self._root)
        if secrets is None:
            # Imported here: secret_store builds on this module.
            from vpnd.config import Settings
            from vpnd.store.secret_store import open_secret_store

            secrets = open_secret_store(Settings(state_dir=state_dir))
        self.secrets: SecretStore = secrets

    def _servers_path(self, owner: int) -> Path:
        return self._root / str(owner) / "servers.json"

    def load_servers(self) -> list[ServerRecord]:
        """Every owner's servers. A damaged file is moved aside (kept, never deleted)
        and reported; the other owners' servers still load."""
        records: list[ServerRecord] = []
        for entry in sorted(self._root.iterdir()):
            if not entry.name.isdigit():
                continue
            owner = int(entry.name)
            path = self._servers_path(owner)
            try:
                data = _read_json(path)
                listed = [ServerRecord.from_dict(item, owner) for item in _records(data, path)]
            except FileNotFoundError:
                continue
            except (OSError, StorageFailed) as exc:
                try:
                    aside = move_aside(path)
                except OSError:
                    log.error("cannot load %s (%s) nor move it aside", path, exc)
                else:
                    log.error("cannot load %s (%s); moved it to %s", path, exc, aside.name)
                continue
            records.extend(listed)
            self._forget_unlisted_secrets(owner, {r.server_id for r in listed})
        return records

    def _forget_unlisted_secrets(self, owner: int, listed: set[str]) -> None:
        """Remove the secrets of servers no longer listed: a removal cut short
        after the list was saved leaves them (the list is saved first, so that
        a listed server never loses its secrets). Only an owner whose list
        loaded gets here; only vpnd's own files can be listed like this."""
        try:
            candidates = sorted((self._root / str(owner) / "secrets").iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for path in candidates:
            if not _SERVER_ID.fullmatch(path.name) or path.name in listed or not path.is_dir():
                continue
            try:
                self.secrets.delete_server(owner, path.name)
            except StorageFailed as exc:
                log.error("cannot remove the secrets of a removed server: %s", exc.message)
            else:
                log.info("removed the secrets of uid %d's removed server %s", owner, path.name)

    def save_servers(self, owner: int, records: list[ServerRecord]) -> None:
        """Replace one owner's list of servers (always written in the newest schema)."""
        path = self._servers_path(owner)
        items = [
            {k: v for k, v in asdict(r).items() if k != "owner"}
            for r in records
            if r.owner == owner
        ]
        document = {"schema": SCHEMA, "servers": items}
        try:
            ensure_private_dir(path.parent)
            write_atomic(path, json.dumps(document, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StorageFailed(f"cannot write {path}: {exc.strerror}") from None
