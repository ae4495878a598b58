"""The store: private, atomic, and it never loses what it holds."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from vpnd.errors import StorageFailed
from vpnd.store.atomic import write_atomic
from vpnd.store.store import SCHEMA, ServerRecord, Store, new_server_id


def record(owner: int, url: str = "https://vpn.example.org/") -> ServerRecord:
    return ServerRecord(
        server_id=new_server_id(), owner=owner, url=url, added_at=1.0, kind="eduvpn-v3"
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_servers_round_trip_per_owner(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a, b = record(1000), record(1001, "https://other.example.org/")
    store.save_servers(1000, [a])
    store.save_servers(1001, [b])
    loaded = {r.server_id: r for r in Store(tmp_path).load_servers()}
    assert loaded == {a.server_id: a, b.server_id: b}


def test_everything_is_root_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.save_servers(1000, [record(1000)])
    store.secrets.set(1000, "0" * 16, "oauth", {"access_token": "secret"})
    assert mode(tmp_path / "state") == 0o700
    for path in (tmp_path / "state").rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_a_damaged_file_is_kept_aside_and_others_still_load(tmp_path: Path) -> None:
    store = Store(tmp_path)
    good = record(1001)
    store.save_servers(1001, [good])
    store.save_servers(1000, [record(1000)])
    damaged = tmp_path / "users" / "1000" / "servers.json"
    damaged.write_text("{not json")
    assert Store(tmp_path).load_servers() == [good]
    aside = list(damaged.parent.glob("servers.json.damaged-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"


def test_malformed_records_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageFailed):
        ServerRecord.from_dict({"server_id": "../../etc", "url": "x", "added_at": 0}, 0)
    with pytest.raises(StorageFailed):
        ServerRecord.from_dict({"url": "x"}, 0)
    good = {"server_id": "0" * 16, "url": "https://a/", "added_at": 0, "kind": "eduvpn-v2"}
    assert ServerRecord.from_dict(good, 0).kind == "eduvpn-v2"
    for kind in ("", "EduVPN", "../x", "a" * 40, 3):
        with pytest.raises(StorageFailed):
            ServerRecord.from_dict({**good, "kind": kind}, 0)


# servers.json exactly as the first version of vpnd wrote it (schema 1).
SCHEMA_1 = """[
 {
  "added_at": 1764700000.25,
  "server_id": "00112233445566aa",
  "session_expiry": 1764730000.0,
  "url": "https://vpn.example.org/"
 },
 {
  "added_at": 1764700100.5,
  "server_id": "00112233445566bb",
  "session_expiry": 0.0,
  "url": "https://other.example.org/"
 }
]"""


def test_a_state_dir_of_the_first_schema_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "users" / "1000" / "servers.json"
    path.parent.mkdir(parents=True)
    path.write_text(SCHEMA_1)
    store = Store(tmp_path)
    store.secrets.set(1000, "00112233445566aa", "oauth", {"access_token": "kept"})
    loaded = store.load_servers()
    assert loaded == [
        ServerRecord("00112233445566aa", 1000, "https://vpn.example.org/", 1764700000.25,
                     "eduvpn-v3", 1764730000.0),
        ServerRecord("00112233445566bb", 1000, "https://other.example.org/", 1764700100.5,
                     "eduvpn-v3", 0.0),
    ]  # fmt: skip
    # The next save writes the newest schema; what it holds is unchanged.
    store.save_servers(1000, loaded)
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert Store(tmp_path).load_servers() == loaded
    assert store.secrets.get(1000, "00112233445566aa", "oauth") == {"access_token": "kept"}
    assert not list(path.parent.glob("servers.json.damaged-*"))


def test_a_schema_from_a_newer_vpnd_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "users" / "1000" / "servers.json"
    path.parent.mkdir(parents=True)
    newer = json.dumps({"schema": SCHEMA + 1, "servers": []})
    path.write_text(newer)
    assert Store(tmp_path).load_servers() == []
    [aside] = path.parent.glob("servers.json.damaged-*")
    assert aside.read_text() == newer


def test_secrets_by_name(tmp_path: Path) -> None:
    secrets = Store(tmp_path).secrets
    sid = new_server_id()
    assert secrets.get(1000, sid, "oauth") is None
    secrets.set(1000, sid, "oauth", {"t": 1})
    secrets.set(1000, sid, "keys", {"k": 2})
    secrets.delete(1000, sid, "oauth")
    assert secrets.get(1000, sid, "oauth") is None
    assert secrets.get(1000, sid, "keys") == {"k": 2}
    assert secrets.get(1001, sid, "keys") is None
    secrets.delete_server(1000, sid)
    assert secrets.get(1000, sid, "keys") is None


def test_secret_paths_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(StorageFailed):
        Store(tmp_path).secrets.set(1000, "../../../etc/x", "oauth", {})


def test_store_encrypts_secrets_by_default(tmp_path: Path) -> None:
    Store(tmp_path).secrets.set(1000, "0" * 16, "oauth", {"access_token": "tok-visible?"})
    assert (tmp_path / "store.key").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"tok-visible?" not in path.read_bytes(), path


def test_damaged_files_in_the_same_second_are_all_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vpnd.store.atomic.time.time", lambda: 1234.5)
    damaged = tmp_path / "users" / "1000" / "servers.json"
    for text in ("{first", "{second"):
        Store(tmp_path).save_servers(1000, [record(1000)])
        damaged.write_text(text)
        assert Store(tmp_path).load_servers() == []
    kept = sorted(p.read_text() for p in damaged.parent.glob("servers.json.damaged-1234*"))
    assert kept == ["{first", "{second"]


def test_a_server_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(StorageFailed, match="malformed id"):
        ServerRecord.from_dict({"server_id": "0" * 16 + "\n", "url": "x", "added_at": 0,
                                 "kind": "eduvpn-v3"}, 0)


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.json"
    write_atomic(path, b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_write_atomic_refuses_to_follow_a_planted_link(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    path = tmp_path / "f.json"
    (tmp_path / f".f.json.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(OSError):
        write_atomic(path, b"data")
    assert target.read_text() == "keep"
