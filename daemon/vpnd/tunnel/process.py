"""How an openvpn process comes to run: as the daemon's child, or as a systemd unit.

A `Tunnel` does not care which: it hands a launcher openvpn's command line
and environment and gets back an `OpenVPNProcess`, through which it sends the
config (standard input), reads openvpn's output, learns how it exited, checks
who connected to the management socket and sends signals.

`ChildLauncher` starts openvpn as a child of the daemon, as root, and openvpn
switches to its own user itself (`--user`/`--group`) once the tun device is
open; the daemon needs CAP_SETUID, CAP_SETGID, CAP_SETPCAP and CAP_KILL for
that. `vpnd.tunnel.systemd.SystemdLauncher` asks the service manager to run
openvpn as a transient unit under its own user from the start, so the daemon
needs none of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Protocol

from vpnd.errors import TunnelFailed

# What a child openvpn needs of the daemon: its tun device, routes and the
# switch to its own user (linux/capability.h numbers).
CHILD_CAPABILITIES = {"CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_ADMIN": 12}


def missing_child_capabilities(proc_status: str) -> list[str]:
    """The capabilities of CHILD_CAPABILITIES that /proc/self/status's CapEff lacks."""
    for line in proc_status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            effective = int(value.strip(), 16)
            return [name for name, bit in CHILD_CAPABILITIES.items() if not effective >> bit & 1]
    return list(CHILD_CAPABILITIES)


async def send_and_close(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data` to openvpn's standard input and close it; quiet if openvpn is gone."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # openvpn is gone; its exit tells why
    finally:
        stdin.close()


class OpenVPNProcess(Protocol):
    """One started openvpn, whichever way it was started."""

    @property
    def label(self) -> str:
        """How logs name it: "pid 1234" or a unit name."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id, once known."""
        ...

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit status, or minus the signal that ended it."""
        ...

    async def send_input(self, data: bytes) -> None:
        """Write `data` to openvpn's standard input and close it; quiet if openvpn is gone."""
        ...

    async def readline(self) -> bytes:
        """One line of openvpn's output; b"" once it has closed it.

        Raises ValueError for an overlong line (which is then skipped) and
        OSError if reading fails.
        """
        ...

    async def wait(self) -> int:
        """Wait until openvpn has exited and return `returncode`."""
        ...

    async def is_peer(self, pid: int, uid: int) -> bool:
        """Whether `pid` (running as `uid`), which connected to the management socket, is it."""
        ...

    def send_signal(self, signum: signal.Signals) -> None:
        """Send `signum` if openvpn still runs; may take effect a little later."""
        ...

    def exit_reason(self, returncode: int) -> str | None:
        """Why openvpn never really ran, where the launcher knows better than openvpn's output."""
        ...


class Launcher(Protocol):
    """Starts openvpn processes."""

    @property
    def switches_user(self) -> bool:
        """True if openvpn starts as root and must switch to its user itself."""
        ...

    @property
    def socket_mode(self) -> int:
        """Mode of the management socket file, which sits in the daemon's 0700 runtime dir."""
        ...

    def management_path(self, socket_path: Path) -> str:
        """Where openvpn finds the management socket created at `socket_path`."""
        ...

    async def launch(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        socket_path: Path,
        account: tuple[str, str] | None,
    ) -> OpenVPNProcess:
        """Start openvpn with `argv` and exactly `env`; raise TunnelFailed if it cannot be.

        `account` is the (user, group) openvpn is to run as, None for root.
        """
        ...


class ChildLauncher:
    """openvpn as a child process of the daemon."""

    switches_user = True
    socket_mode = 0o600

    def management_path(self, socket_path: Path) -> str:
        """The socket's own path: the child runs as root until it is connected."""
        return str(socket_path)

    async def launch(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        socket_path: Path,
        account: tuple[str, str] | None,
    ) -> OpenVPNProcess:
        """Spawn openvpn in a session of its own, output and errors on one pipe."""
        del name, socket_path, account  # openvpn's own options carry the account
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # Keeps a terminal's Ctrl-C away from openvpn: the daemon stops it.
                start_new_session=True,
                env=env,
            )
        except OSError as error:
            raise TunnelFailed(f"cannot run {argv[0]}: {error.strerror or error}") from None
        return ChildProcess(proc)


class ChildProcess:
    """An openvpn started by `ChildLauncher`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """Wrap `proc`, started with pipes for standard input and output."""
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout

    @property
    def label(self) -> str:
        """The process id."""
        return f"pid {self._proc.pid}"

    @property
    def pid(self) -> int:
        """Known from the start."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """As asyncio reports it: minus the signal for a killed process."""
        return self._proc.returncode

    async def send_input(self, data: bytes) -> None:
        """Write the config and close standard input."""
        await send_and_close(self._stdin, data)

    async def readline(self) -> bytes:
        """The next line of output."""
        return await self._stdout.readline()

    async def wait(self) -> int:
        """Reap the child."""
        self._stdin.close()
        return await self._proc.wait()

    async def is_peer(self, pid: int, uid: int) -> bool:
        """The child itself, whatever user it runs as by then."""
        del uid
        return pid == self._proc.pid

    def send_signal(self, signum: signal.Signals) -> None:
        """Signal the child unless it has been reaped."""
        with contextlib.suppress(ProcessLookupError):
            if self._proc.returncode is None:
                self._proc.send_signal(signum)

    def exit_reason(self, returncode: int) -> str | None:
        """openvpn's own output always tells more."""
        del returncode
        return None
