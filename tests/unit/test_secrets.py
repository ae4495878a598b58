"""Secrets at rest: sealed, bound to their place, keyed from a credential or a
root-only key file, reachable through any keyring backend, and never lost."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import keyring.core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyring.backend import KeyringBackend
from keyring.errors import KeyringLocked, PasswordDeleteError

from vpnd.config import Settings
from vpnd.errors import InvalidArgument, StorageFailed
from vpnd.store import sealed
from vpnd.store.encrypted_file import EncryptedFileKeyring
from vpnd.store.key import CREDENTIAL_NAME, create_key_file, load_store_keys
from vpnd.store.secret_store import KeyringSecretStore, load_backend, open_secret_store
from vpnd.store.store import new_server_id

TOKEN = "tok-3b1f0c9e-only-in-memory"
SID = "0123456789abcdef"
OTHER_SID = "fedcba9876543210"


class MemoryKeyring(KeyringBackend):
    """A stand-in for a third-party keyring backend (a desktop secret service,
    a vault): it keeps passwords in a dict and knows nothing about vpnd."""

    priority = 0.1  # type: ignore[assignment]
    instances: ClassVar[list[MemoryKeyring]] = []

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[tuple[str, str], str] = {}
        self.fail_with: Exception | None = None
        MemoryKeyring.instances.append(self)

    def _check(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def get_password(self, service: str, username: str) -> str | None:
        self._check()
        return self.data.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self._check()
        self.data[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self._check()
        try:
            del self.data[(service, username)]
        except KeyError:
            raise PasswordDeleteError("not found") from None


class BrokenKeyring(MemoryKeyring):
    """A backend that cannot start (its daemon is not running)."""

    def __init__(self) -> None:
        raise KeyringLocked("the collection is locked")


def state(tmp_path: Path, **values: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", **values)  # type: ignore[arg-type]


def open_store(
    tmp_path: Path, env: dict[str, str] | None = None, **values: object
) -> KeyringSecretStore:
    return open_secret_store(state(tmp_path, **values), env or {})


def record_path(tmp_path: Path, owner: int = 1000, sid: str = SID, name: str = "oauth") -> Path:
    return tmp_path / "state" / "users" / str(owner) / "secrets" / sid / f"{name}.secret"


def kept_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# The record format, without files.


def test_a_sealed_record_opens_only_in_its_own_context() -> None:
    sealer = sealed.Sealer(os.urandom(32))
    record = sealer.seal(b"payload", sealed.context("vpnd/1000/" + SID, "oauth"))
    assert sealer.open(record, sealed.context("vpnd/1000/" + SID, "oauth")) == (b"payload", False)
    assert record[:5] == b"VPNS\x01"
    for service, name in [("vpnd/1001/" + SID, "oauth"), ("vpnd/1000/" + SID, "keys")]:
        with pytest.raises(sealed.RecordUnreadable, match="moved here"):
            sealer.open(record, sealed.context(service, name))


def test_each_record_has_its_own_nonce() -> None:
    sealer = sealed.Sealer(os.urandom(32))
    ctx = sealed.context("vpnd/0/" + SID, "oauth")
    assert sealer.seal(b"same", ctx) != sealer.seal(b"same", ctx)


def test_an_older_key_still_opens_and_says_so() -> None:
    old, new = os.urandom(32), os.urandom(32)
    ctx = sealed.context("vpnd/0/" + SID, "oauth")
    record = sealed.Sealer(old).seal(b"x", ctx)
    assert sealed.Sealer(new, [old]).open(record, ctx) == (b"x", True)
    with pytest.raises(sealed.RecordUnreadable, match="another store key"):
        sealed.Sealer(new).open(record, ctx)


def test_an_unknown_format_is_named() -> None:
    sealer = sealed.Sealer(os.urandom(32))
    ctx = sealed.context("vpnd/0/" + SID, "oauth")
    record = bytearray(sealer.seal(b"x", ctx))
    record[4] = 2
    with pytest.raises(sealed.RecordUnreadable, match="format 2"):
        sealer.open(bytes(record), ctx)


# The encrypted-file store.


def test_round_trip_per_owner_server_and_name(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.get(1000, SID, "oauth") is None
    store.set(1000, SID, "oauth", {"access_token": TOKEN, "expires": 3.5})
    store.set(1000, SID, "keys", {"private": "k"})
    store.set(1000, OTHER_SID, "oauth", {"access_token": "other"})
    store.set(1001, SID, "oauth", {"access_token": "theirs"})
    reopened = open_store(tmp_path)
    assert reopened.get(1000, SID, "oauth") == {"access_token": TOKEN, "expires": 3.5}
    assert reopened.get(1000, SID, "keys") == {"private": "k"}
    assert reopened.get(1001, SID, "oauth") == {"access_token": "theirs"}
    assert reopened.get(1002, SID, "oauth") is None
    reopened.set(1000, SID, "oauth", {"access_token": "replaced"})
    assert reopened.get(1000, SID, "oauth") == {"access_token": "replaced"}
    reopened.delete(1000, SID, "oauth")
    reopened.delete(1000, SID, "oauth")
    assert reopened.get(1000, SID, "oauth") is None
    assert reopened.get(1000, SID, "keys") == {"private": "k"}
    reopened.delete_server(1000, SID)
    assert reopened.get(1000, SID, "keys") is None
    assert not record_path(tmp_path).parent.exists()
    assert reopened.get(1000, OTHER_SID, "oauth") == {"access_token": "other"}
    assert reopened.get(1001, SID, "oauth") == {"access_token": "theirs"}


def test_no_plaintext_on_disk_and_everything_root_only(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"access_token": TOKEN, "refresh_token": "refresh-" + TOKEN})
    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert record_path(tmp_path) in files
    for path in files:
        content = path.read_bytes()
        assert TOKEN.encode() not in content, path
        assert b"access_token" not in content, path
        assert mode(path) == 0o600, path
    for path in (tmp_path / "state").rglob("*"):
        if path.is_dir():
            assert mode(path) == 0o700, path


@pytest.mark.parametrize(
    ("offset", "what"),
    [(0, "magic"), (4, "format"), (6, "key id"), (12, "nonce"), (30, "ciphertext"), (-1, "tag")],
)
def test_a_tampered_record_fails_by_name_and_is_kept(
    tmp_path: Path, offset: int, what: str
) -> None:
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    path = record_path(tmp_path)
    damaged = bytearray(path.read_bytes())
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(StorageFailed, match=re.escape(str(path))):
        store.get(1000, SID, "oauth")
    [aside] = kept_aside(path)
    assert aside.read_bytes() == bytes(damaged)
    # Found once, reported once; the user can then log in again.
    assert store.get(1000, SID, "oauth") is None
    store.set(1000, SID, "oauth", {"access_token": "new"})
    assert store.get(1000, SID, "oauth") == {"access_token": "new"}
    assert aside.read_bytes() == bytes(damaged)


@pytest.mark.parametrize("keep", [0, 3, 9, 20, 36, -1])
def test_a_truncated_record_fails_by_name_and_is_kept(tmp_path: Path, keep: int) -> None:
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    path = record_path(tmp_path)
    truncated = path.read_bytes()[:keep]
    path.write_bytes(truncated)
    with pytest.raises(StorageFailed, match=re.escape(str(path))):
        store.get(1000, SID, "oauth")
    [aside] = kept_aside(path)
    assert aside.read_bytes() == truncated


def test_setting_over_a_damaged_record_keeps_the_damaged_one(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    path = record_path(tmp_path)
    path.write_bytes(b"VPNS\x01garbage")
    store.set(1000, SID, "oauth", {"access_token": "new"})
    assert [p.read_bytes() for p in kept_aside(path)] == [b"VPNS\x01garbage"]
    assert store.get(1000, SID, "oauth") == {"access_token": "new"}


@pytest.mark.parametrize(
    "target",
    [
        {"owner": 1001},  # copied into another user's directory
        {"sid": OTHER_SID},  # into another server's
        {"name": "keys"},  # renamed
    ],
)
def test_a_record_moved_elsewhere_does_not_open(tmp_path: Path, target: dict[str, object]) -> None:
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    store.set(1001, OTHER_SID, "other", {"x": 1})  # so the target's directories exist
    source = record_path(tmp_path)
    moved = record_path(tmp_path, **target)  # type: ignore[arg-type]
    moved.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    moved.write_bytes(source.read_bytes())
    owner = int(target.get("owner", 1000))  # type: ignore[call-overload]
    sid = str(target.get("sid", SID))
    name = str(target.get("name", "oauth"))
    with pytest.raises(StorageFailed, match="moved here from another"):
        store.get(owner, sid, name)
    assert kept_aside(moved)
    assert store.get(1000, SID, "oauth") == {"access_token": TOKEN}


def test_a_record_written_with_another_key_fails_and_is_kept(tmp_path: Path) -> None:
    open_store(tmp_path).set(1000, SID, "oauth", {"access_token": TOKEN})
    path = record_path(tmp_path)
    written = path.read_bytes()
    (tmp_path / "state" / "store.key").write_bytes(os.urandom(32))
    with pytest.raises(StorageFailed, match="another store key"):
        open_store(tmp_path).get(1000, SID, "oauth")
    assert [p.read_bytes() for p in kept_aside(path)] == [written]


def test_malformed_names_are_refused_and_nothing_escapes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for owner, sid, name in [
        (1000, "../../../etc/x", "oauth"),
        (1000, SID + "\n", "oauth"),
        (1000, SID, "../oauth"),
        (1000, SID, "oauth\n"),
        (1000, SID, ".names"),
        (-1, SID, "oauth"),
        (True, SID, "oauth"),
    ]:
        with pytest.raises(StorageFailed, match="malformed"):
            store.set(owner, sid, name, {})
        with pytest.raises(StorageFailed, match="malformed"):
            store.get(owner, sid, name)
    assert list((tmp_path / "state" / "users").rglob("*.secret")) == []


def test_the_backend_refuses_foreign_services(tmp_path: Path) -> None:
    backend = open_store(tmp_path).backend
    for service in ["vpnd/01000/" + SID, "vpnd/1000/" + SID + "/..", "other/1000/" + SID]:
        with pytest.raises(StorageFailed, match="malformed"):
            backend.get_password(service, "oauth")


def test_the_default_store_does_not_import_keyring() -> None:
    # keyring and its discovery machinery cost a root daemon about 10 MiB.
    code = (
        "import sys, tempfile, pathlib\n"
        "from vpnd.config import Settings\n"
        "from vpnd.store.secret_store import open_secret_store\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "open_secret_store(Settings(state_dir=d), environ={}).set(0, 16 * '0', 'oauth', {'a': 1})\n"
        "print('keyring' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_keyring_discovery_never_picks_vpnds_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a KeyringBackend subclass, so keyring's discovery cannot even see it.
    assert EncryptedFileKeyring not in set(KeyringBackend.get_viable_backends())
    monkeypatch.setenv("KEYRING_PROPERTY_USERS", "/tmp/elsewhere")
    store = open_store(tmp_path)
    store.set(1000, SID, "oauth", {"a": 1})
    assert record_path(tmp_path).exists()


# The key.


def test_the_key_file_is_created_once_root_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "vpnd.store")
    key_file = tmp_path / "state" / "store.key"
    open_store(tmp_path).set(1000, SID, "oauth", {"access_token": TOKEN})
    key = key_file.read_bytes()
    info = key_file.stat()
    assert len(key) == 32 and mode(key_file) == 0o600 and info.st_uid == 0
    assert "created now" in caplog.text
    caplog.clear()
    assert open_store(tmp_path).get(1000, SID, "oauth") == {"access_token": TOKEN}
    assert key_file.read_bytes() == key
    assert "existing" in caplog.text and "key file" in caplog.text
    assert key.hex() not in caplog.text
    assert [p.name for p in key_file.parent.iterdir() if "store.key" in p.name] == ["store.key"]


def test_creating_the_key_file_never_replaces_one(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    assert create_key_file(path) is True
    key = path.read_bytes()
    assert create_key_file(path) is False
    assert path.read_bytes() == key
    assert [p.name for p in tmp_path.iterdir()] == ["store.key"]


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    barrier = threading.Barrier(8)
    keys: list[bytes] = []
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            keys.append(load_store_keys(path, {}).current)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(keys) == 8 and set(keys) == {path.read_bytes()}


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: os.chmod(p, 0o640), "readable by root alone"),
        (lambda p: os.chmod(p, 0o604), "readable by root alone"),
        (lambda p: os.chown(p, 1000, 1000), "owned by uid 1000"),
        (lambda p: p.write_bytes(os.urandom(31)), "holds 31 bytes"),
        (lambda p: p.write_bytes(os.urandom(33)), "holds 33 bytes"),
        (lambda p: p.write_bytes(b""), "holds 0 bytes"),
    ],
)
def test_an_unsafe_key_file_is_refused(tmp_path: Path, prepare: object, message: str) -> None:
    key_file = tmp_path / "state" / "store.key"
    open_store(tmp_path)
    prepare(key_file)  # type: ignore[operator]
    before = key_file.read_bytes()
    with pytest.raises(StorageFailed, match=message):
        open_store(tmp_path)
    assert key_file.read_bytes() == before


def test_a_key_file_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    real.write_bytes(os.urandom(32))
    real.chmod(0o600)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "store.key").symlink_to(real)
    with pytest.raises(StorageFailed, match="cannot read the key file"):
        open_store(tmp_path)


def test_the_key_file_setting_is_used(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "vpnd.key"
    open_store(tmp_path, store_key_file=key_file).set(1000, SID, "oauth", {"a": 1})
    assert len(key_file.read_bytes()) == 32
    assert not (tmp_path / "state" / "store.key").exists()


def test_the_credential_is_preferred(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "vpnd.store")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key = os.urandom(32)
    (credentials / CREDENTIAL_NAME).write_bytes(key)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    open_store(tmp_path, env).set(1000, SID, "oauth", {"access_token": TOKEN})
    assert not (tmp_path / "state" / "store.key").exists()
    assert f"credential {CREDENTIAL_NAME}" in caplog.text
    assert key.hex() not in caplog.text
    assert open_store(tmp_path, env).get(1000, SID, "oauth") == {"access_token": TOKEN}
    # Without the credential, the records do not open with a new key file.
    with pytest.raises(StorageFailed, match="another store key"):
        open_store(tmp_path).get(1000, SID, "oauth")


def test_a_credential_directory_without_ours_falls_back_to_the_key_file(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    open_store(tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert (tmp_path / "state" / "store.key").exists()


def test_a_credential_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / CREDENTIAL_NAME).write_bytes(b"short")
    with pytest.raises(StorageFailed, match="holds 5 bytes"):
        open_store(tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})


def test_records_under_the_key_file_move_to_a_credential_added_later(tmp_path: Path) -> None:
    open_store(tmp_path).set(1000, SID, "oauth", {"access_token": TOKEN})
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    key = os.urandom(32)
    (credentials / CREDENTIAL_NAME).write_bytes(key)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    assert open_store(tmp_path, env).get(1000, SID, "oauth") == {"access_token": TOKEN}
    # Read once, sealed again under the credential's key: no key file needed any more.
    assert record_path(tmp_path).read_bytes()[5:9] == sealed.key_id(key)
    (tmp_path / "state" / "store.key").unlink()
    assert open_store(tmp_path, env).get(1000, SID, "oauth") == {"access_token": TOKEN}


# Any keyring backend, through the adapter.

MEMORY = f"{__name__}:MemoryKeyring"


def test_a_configured_backend_is_the_one_used(tmp_path: Path) -> None:
    store = open_store(tmp_path, secret_backend=MEMORY)
    backend = store.backend
    assert isinstance(backend, MemoryKeyring)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    store.set(1000, SID, "keys", {"k": 1})
    store.set(1000, OTHER_SID, "oauth", {"access_token": "other"})
    assert store.get(1000, SID, "oauth") == {"access_token": TOKEN}
    assert json.loads(backend.data[(f"vpnd/1000/{SID}", "oauth")]) == {"access_token": TOKEN}
    assert not (tmp_path / "state" / "store.key").exists()
    store.delete(1000, SID, "keys")
    store.delete(1000, SID, "keys")
    assert store.get(1000, SID, "keys") is None
    store.set(1000, SID, "keys", {"k": 2})
    store.delete_server(1000, SID)
    assert store.get(1000, SID, "oauth") is None
    assert set(backend.data) == {
        (f"vpnd/1000/{OTHER_SID}", "oauth"),
        (f"vpnd/1000/{OTHER_SID}", ".names"),
    }
    store.delete_server(1000, OTHER_SID)
    assert backend.data == {}


def test_keyrings_own_discovery_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("keyring's discovery was used")

    monkeypatch.setattr(keyring.core, "init_backend", refuse)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    for values in [{}, {"secret_backend": MEMORY}]:
        store = open_store(tmp_path / str(len(values)), **values)
        store.set(1000, SID, "oauth", {"a": 1})
        store.delete_server(1000, SID)


def test_a_failing_backend_is_a_storage_failure_without_its_words(tmp_path: Path) -> None:
    store = open_store(tmp_path, secret_backend=MEMORY)
    store.set(1000, SID, "oauth", {"access_token": TOKEN})
    backend = store.backend
    assert isinstance(backend, MemoryKeyring)
    backend.fail_with = KeyringLocked(f"cannot unlock for {TOKEN}")
    for call in [
        lambda: store.get(1000, SID, "oauth"),
        lambda: store.set(1000, SID, "oauth", {}),
        lambda: store.delete(1000, SID, "oauth"),
        lambda: store.delete_server(1000, SID),
    ]:
        with pytest.raises(StorageFailed, match="KeyringLocked") as caught:
            call()
        assert TOKEN not in caught.value.message
    backend.fail_with = None
    backend.data[(f"vpnd/1000/{SID}", "oauth")] = "not json"
    with pytest.raises(StorageFailed, match="not valid JSON"):
        store.get(1000, SID, "oauth")


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("vpnd_no_such_module:Keyring", InvalidArgument, "cannot import"),
        (f"{__name__}:state", InvalidArgument, "not a keyring backend"),
        (f"{__name__}:Missing", InvalidArgument, "not a keyring backend"),
        ("keyring.backends.chainer:ChainerBackend", InvalidArgument, "cannot be configured"),
        ("vpnd.store.encrypted_file:EncryptedFileKeyring", InvalidArgument, "cannot be configured"),
        (f"{__name__}:BrokenKeyring", StorageFailed, "cannot start it"),
    ],
)
def test_a_bad_backend_setting_is_named(spec: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        load_backend(spec)


# Migration from the plain files of the previous version.


def write_plain(tmp_path: Path, owner: int, sid: str, data: object) -> Path:
    secrets = tmp_path / "state" / "users" / str(owner) / "secrets"
    secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secrets / f"{sid}.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("backend", ["encrypted-file", MEMORY])
def test_plain_secrets_are_migrated_once(tmp_path: Path, backend: str) -> None:
    a = write_plain(tmp_path, 1000, SID, {"oauth": {"access_token": TOKEN}, "keys": {"k": 1}})
    b = write_plain(tmp_path, 1001, OTHER_SID, {"oauth": {"access_token": "theirs"}})
    store = open_store(tmp_path, secret_backend=backend)
    assert not a.exists() and not b.exists()
    assert store.get(1000, SID, "oauth") == {"access_token": TOKEN}
    assert store.get(1000, SID, "keys") == {"k": 1}
    assert store.get(1001, OTHER_SID, "oauth") == {"access_token": "theirs"}
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    if backend == "encrypted-file":
        store = open_store(tmp_path)
        assert store.get(1000, SID, "oauth") == {"access_token": TOKEN}


def test_a_damaged_plain_file_is_kept_aside_and_the_others_migrate(tmp_path: Path) -> None:
    bad = write_plain(tmp_path, 1000, SID, ["not", "an", "object"])
    good = write_plain(tmp_path, 1000, OTHER_SID, {"oauth": {"access_token": TOKEN}})
    store = open_store(tmp_path)
    assert not bad.exists() and not good.exists()
    [aside] = kept_aside(bad)
    assert json.loads(aside.read_text()) == ["not", "an", "object"]
    assert store.get(1000, OTHER_SID, "oauth") == {"access_token": TOKEN}
    assert store.get(1000, SID, "oauth") is None


def test_a_failed_migration_keeps_the_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = write_plain(tmp_path, 1000, SID, {"oauth": {"access_token": TOKEN}})

    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vpnd.store.encrypted_file.write_atomic", full_disk)
    with pytest.raises(StorageFailed, match="No space left"):
        open_store(tmp_path)
    assert json.loads(plain.read_text()) == {"oauth": {"access_token": TOKEN}}
    monkeypatch.undo()
    assert open_store(tmp_path).get(1000, SID, "oauth") == {"access_token": TOKEN}
    assert not plain.exists()


# Whatever bytes a record file holds, the reader answers with StorageFailed.

_KEY = os.urandom(32)
_CTX = sealed.context(f"vpnd/1000/{SID}", "oauth")
_VALID = sealed.Sealer(_KEY).seal(b'{"access_token":"x"}', _CTX)


def _flipped(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= 1 << bit
    return bytes(out)


record_bytes = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda tail: _VALID[:9] + tail),
    st.builds(_flipped, st.just(_VALID), st.integers(0, len(_VALID) - 1), st.integers(0, 7)),
    st.integers(0, len(_VALID) - 1).map(lambda n: _VALID[:n]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=record_bytes)
def test_arbitrary_bytes_never_crash_the_reader(tmp_path: Path, data: bytes) -> None:
    users = tmp_path / "users"
    backend = EncryptedFileKeyring(users, sealed.Sealer(_KEY))
    store = KeyringSecretStore(backend)
    path = users / "1000" / "secrets" / SID / "oauth.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(StorageFailed, match=re.escape(str(path))):
        store.get(1000, SID, "oauth")
    [aside] = kept_aside(path)
    assert aside.read_bytes() == data
    aside.unlink()


def test_a_valid_record_written_by_hand_opens(tmp_path: Path) -> None:
    # The counterpart of the property above: the same setup accepts a good record.
    users = tmp_path / "users"
    store = KeyringSecretStore(EncryptedFileKeyring(users, sealed.Sealer(_KEY)))
    path = users / "1000" / "secrets" / SID / "oauth.secret"
    path.parent.mkdir(parents=True)
    path.write_bytes(_VALID)
    assert store.get(1000, SID, "oauth") == {"access_token": "x"}


def test_new_server_ids_are_valid_services(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sid = new_server_id()
    store.set(0, sid, "oauth", {"a": 1})
    assert store.get(0, sid, "oauth") == {"a": 1}
