"""Crash safety of the store: a writer killed at random instants loses nothing it acknowledged.

A writer process runs vpnd's own store code the way the daemon does: it
opens the store (key file included), refreshes a server's tokens through
`TokenKeeper` (the refresh saves the new pair), adds servers (the list, then
a key pair in the secrets) and removes them. After each change returns it
writes an acknowledgement to a pipe. The test kills it with SIGKILL at a
random instant, hundreds of times, and after every kill opens the store
afresh and checks that it opens, that nothing was moved aside as damaged,
and that every acknowledged change is there (a removal: that the server is
gone).

Starting a Python interpreter per round would cost more than the rounds
themselves, so one process imports the store once and forks a writer per
round: each writer is a real process of its own that opens the store from
disk and is killed by a real SIGKILL. Some rounds start from an empty state
directory, so that the creation of the key file is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.daemon import REPO

OWNERS = (0, 1000)
TOKEN_URL = "https://tokens.example.org/"
MAX_SERVERS = 12
# The whole test stays within about this many seconds.
BUDGET = 45.0
ROUNDS = 400
FRESH_EVERY = 40


def _ack(line: str) -> None:
    os.write(1, (line + "\n").encode())


class _Quiet:
    """The manager's listener: the bus is not part of this test."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


@dataclass
class _Provider:
    async def discover(self, base_url: str) -> None:
        """Servers here need no discovery: the test is about the disk."""


@dataclass
class _Login:
    def authorized(self, record: object) -> bool:
        return False


@dataclass
class _Family:
    kind: str
    provider: _Provider = field(default_factory=_Provider)
    login: _Login = field(default_factory=_Login)


class _Families:
    """The one server family this test adds (no network: the store is under test)."""

    def of(self, kind: str) -> _Family:
        return _Family(kind)


def _writer(state_dir: Path, seed: int) -> None:
    """Change the store until killed; acknowledge each change once it returned."""
    from vpnd.auth.tokens import TokenKeeper
    from vpnd.config import Settings
    from vpnd.manager import Manager
    from vpnd.protocols.eduvpn import Endpoints
    from vpnd.protocols.oauth import Tokens
    from vpnd.store.store import Store

    rng = random.Random(seed)
    store = Store(state_dir)
    manager = Manager(
        Settings(state_dir=state_dir),
        store,
        _Families(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        _Quiet(),  # type: ignore[arg-type]
    )
    manager.load()
    _ack("open")
    endpoints = Endpoints("https://vpn.example.org/api/v3", "https://a", "https://t")

    async def grant(_endpoints: Endpoints, _form: dict[str, str], spent: str | None) -> Tokens:
        n = int(spent[1:]) + 1 if spent else 0
        # Expired at once: the next call refreshes again.
        return Tokens(f"a{n}", f"r{n}", time.time() - 60)

    async def use(token: str) -> str:
        return token

    async def work() -> None:
        keeper = TokenKeeper(store.secrets, "client", grant)
        listed = [s for s in manager.servers_of(0) if s.url == TOKEN_URL]
        token_server = listed[0] if listed else await manager.add_server(0, TOKEN_URL, "eduvpn-v3")
        if keeper.load(0, token_server.server_id) is None:
            keeper.save(0, token_server.server_id, Tokens("a0", "r0", time.time() - 60))
            _ack("T 0")
        while True:
            owner = rng.choice(OWNERS)
            servers = [s for s in manager.servers_of(owner) if s is not token_server]
            choice = rng.random()
            if choice < 0.5:
                sid = token_server.server_id
                token = await keeper.call(0, sid, "lab", endpoints, use)
                _ack(f"T {token[1:]}")
            elif choice < 0.8 or len(servers) < 2:
                if len(servers) >= MAX_SERVERS:
                    continue
                url = f"https://s{rng.randrange(1 << 40)}.example.org/"
                server = await manager.add_server(owner, url, "eduvpn-v3")
                # As a provider keeps a key pair once authorized.
                store.secrets.set(owner, server.server_id, "keypair", {"private": url})
                _ack(f"S {owner} {server.server_id} {url}")
            else:
                gone = rng.choice(servers)
                # Said before: if killed during the removal, the server may be gone or whole.
                _ack(f"r {owner} {gone.server_id}")
                await manager.remove_server(gone)
                _ack(f"R {owner} {gone.server_id}")

    asyncio.run(work())


def _zygote() -> None:
    """Read `go STATE_DIR SEED` lines; fork a writer for each, report its pid and its end."""
    # Imported once, before forking: each writer starts at once.
    from cryptography.exceptions import InvalidTag  # noqa: F401
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401

    import vpnd.auth.tokens
    import vpnd.manager
    import vpnd.store.secret_store
    import vpnd.store.store  # noqa: F401

    for line in sys.stdin:
        _, state_dir, seed = line.split()
        pid = os.fork()
        if pid == 0:
            _ack(f"pid {os.getpid()}")
            try:
                _writer(Path(state_dir), int(seed))
            except BaseException as exc:
                _ack(f"error {type(exc).__name__}: {exc}")
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        _ack(f"ended {status}")


@dataclass
class Acknowledged:
    """What the writers said they did, across every round on one state directory."""

    token: int = -1
    servers: dict[str, tuple[int, str]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    # The server whose removal had begun when the writer was killed.
    removing: str | None = None

    def take(self, line: str) -> None:
        kind, *rest = line.split()
        self.removing = None
        if kind == "r":
            self.removing = rest[1]
        elif kind == "T":
            self.token = max(self.token, int(rest[0]))
        elif kind == "S":
            self.servers[rest[1]] = (int(rest[0]), rest[2])
        elif kind == "R":
            self.servers.pop(rest[1], None)
            self.removed.add(rest[1])


def _check(state_dir: Path, acked: Acknowledged, round_no: int) -> tuple[set[str], int]:
    """Check the store against what was acknowledged; the ids of the listed
    servers and the number of the stored tokens."""
    from vpnd.auth.tokens import TokenKeeper
    from vpnd.store.store import Store

    where = f"after kill {round_no}"
    store = Store(state_dir)
    leftovers = sorted(state_dir.rglob(".*.tmp"))
    assert not leftovers, f"{where}: writes cut short are left: {leftovers}"
    damaged = [p for p in state_dir.rglob("*") if ".damaged-" in p.name]
    assert not damaged, f"{where}: moved aside as damaged: {damaged}"
    records = store.load_servers()
    servers = {r.server_id: (r.owner, r.url) for r in records}
    for server_id, (owner, url) in acked.servers.items():
        if server_id == acked.removing and server_id not in servers:
            continue  # the removal went through; it only was not acknowledged
        assert servers.get(server_id) == (owner, url), f"{where}: acknowledged {url} is lost"
        keypair = store.secrets.get(owner, server_id, "keypair")
        assert keypair == {"private": url}, f"{where}: the key pair of {url} is lost"
    # Secrets only of listed servers: a removal cut short leaves none behind.
    for owner in OWNERS:
        secrets = state_dir / "users" / str(owner) / "secrets"
        kept = {p.name for p in secrets.iterdir()} if secrets.is_dir() else set()
        unlisted = kept - {sid for sid, (o, _) in servers.items() if o == owner}
        assert not unlisted, f"{where}: secrets of servers no longer listed: {unlisted}"
    for server_id in acked.removed:
        assert server_id not in servers, f"{where}: removed server {server_id} came back"
    n = -1
    if acked.token >= 0:
        token_server = next(r for r in records if r.url == TOKEN_URL)
        tokens = TokenKeeper(store.secrets, "client", None).load(0, token_server.server_id)
        assert tokens is not None, f"{where}: the tokens are lost"
        n = int(tokens.refresh_token[1:])
        # One more than acknowledged: the kill came after the save, before the acknowledgement.
        assert acked.token <= n <= acked.token + 1, (
            f"{where}: tokens r{n}, acknowledged r{acked.token}"
        )
        assert tokens.access_token == f"a{n}", f"{where}: torn token pair"
    return set(servers), n


def _read_round(out: int, buffer: bytearray, deadline: float) -> list[str]:
    """Lines of one round, up to and including `ended`."""
    lines: list[str] = []
    while True:
        while b"\n" in buffer:
            raw, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            line = raw.decode()
            lines.append(line)
            if line.startswith("ended"):
                return lines
        left = deadline - time.monotonic()
        assert left > 0, f"the writer did not end: {lines}"
        ready, _, _ = select.select([out], [], [], left)
        if ready:
            chunk = os.read(out, 65536)
            assert chunk, f"the writer process went away: {lines}"
            buffer += chunk


def test_killed_writer_loses_no_acknowledged_change(tmp_path: Path) -> None:
    seed = int(os.environ.get("VPND_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'daemon'}:{REPO}"}
    zygote = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.test_crash_safety"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    out = zygote.stdout.fileno()
    buffer = bytearray()
    started = time.monotonic()
    kills = acknowledged = 0
    generation = 0
    state_dir = tmp_path / "state0"
    acked = Acknowledged()
    history: list[list[str]] = []
    key: bytes | None = None
    try:
        for round_no in range(ROUNDS):
            if time.monotonic() - started > BUDGET:
                break
            if round_no % FRESH_EVERY == 0 and round_no:
                generation += 1
                state_dir = tmp_path / f"state{generation}"
                acked = Acknowledged()
                key = None
            zygote.stdin.write(f"go {state_dir} {rng.randrange(1 << 30)}\n".encode())
            zygote.stdin.flush()
            # The pid line comes first; then the writer runs until killed.
            first = _read_round_until_pid(out, buffer)
            pid = int(first.split()[1])
            # A random instant within the work, however fast the machine: after
            # some changes (none: while the store opens), then a little more.
            _wait_for_changes(out, buffer, rng.choice((0, 0, 1, 2, 3, 5, 8, 13)))
            time.sleep(rng.uniform(0, 0.003))
            with contextlib.suppress(ProcessLookupError):  # it failed: the lines say why
                os.kill(pid, signal.SIGKILL)
            kills += 1
            lines = _read_round(out, buffer, time.monotonic() + 10)
            errors = [line for line in lines if line.startswith("error")]
            assert not errors, f"seed {seed}: the writer failed: {errors}"
            assert lines[-1] == f"ended {signal.SIGKILL}", f"seed {seed}: {lines}"
            history.append(lines)
            for line in lines[:-1]:
                if line != "open":
                    acked.take(line)
                    acknowledged += not line.startswith("r ")
            if (state_dir / "store.key").exists():
                current = (state_dir / "store.key").read_bytes()
                if key is not None:
                    assert current == key, f"seed {seed}: the key file changed"
                if acked.token >= 0 or acked.servers:
                    key = current
            if not (state_dir / "store.key").exists():
                # Killed before the key file was made: nothing can have been acknowledged.
                assert not acknowledged_here(acked), f"seed {seed}: changes without a key file"
                continue
            try:
                listed, token = _check(state_dir, acked, kills)
            except AssertionError as exc:
                listing = sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob("*"))
                raise AssertionError(
                    f"seed {seed}: {exc}; rounds: {history[-3:]}; files: {listing}"
                ) from None
            if acked.removing is not None and acked.removing not in listed:
                acked.take(f"R 0 {acked.removing}")  # the removal had gone through
            # A change done but not acknowledged before the kill is the next writer's start.
            acked.token = max(acked.token, token)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=10)
    # The rounds must have tested something: kills in the middle of real work.
    assert kills >= 200, f"only {kills} kills within {BUDGET} s"
    assert acknowledged >= kills, f"only {acknowledged} acknowledged changes in {kills} rounds"


def acknowledged_here(acked: Acknowledged) -> bool:
    """Whether any change on this state directory was acknowledged."""
    return acked.token >= 0 or bool(acked.servers) or bool(acked.removed)


def _wait_for_changes(out: int, buffer: bytearray, count: int) -> None:
    """Wait until the writer acknowledged `count` changes (or ended); reads
    into `buffer` without taking lines out of it."""
    deadline = time.monotonic() + 10
    while True:
        lines = bytes(buffer).split(b"\n")[:-1]
        if sum(line != b"open" for line in lines) >= count or any(
            line.startswith((b"ended", b"error")) for line in lines
        ):
            return
        left = deadline - time.monotonic()
        assert left > 0, f"the writer made no {count} changes: {lines}"
        ready, _, _ = select.select([out], [], [], left)
        if ready:
            chunk = os.read(out, 65536)
            assert chunk, "the writer process went away"
            buffer += chunk


def _read_round_until_pid(out: int, buffer: bytearray) -> str:
    deadline = time.monotonic() + 10
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        assert left > 0, "the writer process did not fork"
        ready, _, _ = select.select([out], [], [], left)
        if ready:
            chunk = os.read(out, 65536)
            assert chunk, "the writer process went away"
            buffer += chunk
    raw, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    line = raw.decode()
    assert line.startswith("pid "), line
    return line


if __name__ == "__main__":
    _zygote()
