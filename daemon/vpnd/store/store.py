"""Servers and secrets per owner UID under the state directory.

Layout (all directories 0700, files 0600, every write atomic):

    {state_dir}/users/{uid}/servers.json           the owner's servers
    {state_dir}/users/{uid}/secrets/{server}.json  tokens (and later keys) of one server

Secrets go through `SecretStore` so that encryption at rest, or another
backend, can replace the plain-file one without touching the callers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from vpnd.errors import StorageFailed
from vpnd.store.atomic import ensure_private_dir, remove_durably, write_atomic

log = logging.getLogger("vpnd.store")

_SERVER_ID = re.compile(r"^[0-9a-f]{16}$")
_SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_FILE = 1 << 20


@dataclass
class ServerRecord:
    """A server one owner added."""

    server_id: str
    owner: int
    url: str
    added_at: float
    session_expiry: float = 0.0

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
                session_expiry=float(data.get("session_expiry", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageFailed(f"a server record is malformed ({exc})") from None
        if not _SERVER_ID.match(record.server_id):
            raise StorageFailed("a server record has a malformed id")
        return record


def new_server_id() -> str:
    """A fresh random server id (also the last part of its D-Bus object path)."""
    return os.urandom(8).hex()


class SecretStore(Protocol):
    """Where tokens and key material live, per owner and server."""

    def get(self, owner: int, server_id: str, name: str) -> dict[str, Any] | None: ...

    def set(self, owner: int, server_id: str, name: str, value: dict[str, Any]) -> None: ...

    def delete(self, owner: int, server_id: str, name: str) -> None: ...

    def delete_server(self, owner: int, server_id: str) -> None: ...


def _read_json(path: Path) -> Any:
    with path.open("rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise StorageFailed(f"{path} is larger than {_MAX_FILE} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageFailed(f"{path} is not valid JSON ({exc})") from None


class FileSecretStore:
    """Secrets as root-only JSON files, one per server (not encrypted yet)."""

    def __init__(self, state_dir: Path) -> None:
        self._root = state_dir / "users"

    def _path(self, owner: int, server_id: str) -> Path:
        if not _SERVER_ID.match(server_id):
            raise StorageFailed("malformed server id")
        return self._root / str(owner) / "secrets" / f"{server_id}.json"

    def _load(self, owner: int, server_id: str) -> dict[str, Any]:
        path = self._path(owner, server_id)
        try:
            data = _read_json(path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageFailed(f"cannot read {path}: {exc.strerror}") from None
        if not isinstance(data, dict):
            raise StorageFailed(f"{path} is not a JSON object")
        return data

    def get(self, owner: int, server_id: str, name: str) -> dict[str, Any] | None:
        """One named secret of a server, or None."""
        value = self._load(owner, server_id).get(name)
        return value if isinstance(value, dict) else None

    def set(self, owner: int, server_id: str, name: str, value: dict[str, Any]) -> None:
        """Store (or replace) one named secret of a server."""
        if not _SECRET_NAME.match(name):
            raise StorageFailed("malformed secret name")
        data = self._load(owner, server_id)
        data[name] = value
        path = self._path(owner, server_id)
        try:
            ensure_private_dir(path.parent)
            write_atomic(path, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            raise StorageFailed(f"cannot write {path}: {exc.strerror}") from None

    def delete(self, owner: int, server_id: str, name: str) -> None:
        """Forget one named secret of a server."""
        data = self._load(owner, server_id)
        if data.pop(name, None) is None:
            return
        path = self._path(owner, server_id)
        try:
            write_atomic(path, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            raise StorageFailed(f"cannot write {path}: {exc.strerror}") from None

    def delete_server(self, owner: int, server_id: str) -> None:
        """Forget every secret of a server."""
        try:
            remove_durably(self._path(owner, server_id))
        except OSError as exc:
            raise StorageFailed(f"cannot remove secrets: {exc.strerror}") from None


class Store:
    """The daemon's persistent state; nothing else writes under the state directory."""

    def __init__(self, state_dir: Path, secrets: SecretStore | None = None) -> None:
        self._root = state_dir / "users"
        self.secrets: SecretStore = secrets or FileSecretStore(state_dir)
        ensure_private_dir(state_dir)
        ensure_private_dir(self._root)

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
                if not isinstance(data, list):
                    raise StorageFailed(f"{path} is not a JSON list")
                records.extend(ServerRecord.from_dict(item, owner) for item in data)
            except FileNotFoundError:
                continue
            except (OSError, StorageFailed) as exc:
                aside = path.with_name(f"servers.json.damaged-{int(time.time())}")
                log.error("cannot load %s (%s); moved it to %s", path, exc, aside.name)
                try:
                    os.replace(path, aside)
                except OSError:
                    log.error("cannot move %s aside", path)
        return records

    def save_servers(self, owner: int, records: list[ServerRecord]) -> None:
        """Replace one owner's list of servers."""
        path = self._servers_path(owner)
        items = [
            {k: v for k, v in asdict(r).items() if k != "owner"}
            for r in records
            if r.owner == owner
        ]
        try:
            ensure_private_dir(path.parent)
            write_atomic(path, json.dumps(items, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StorageFailed(f"cannot write {path}: {exc.strerror}") from None
