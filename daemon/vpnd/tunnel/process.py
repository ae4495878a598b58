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
import os
import signal
import subprocess
from pathlib import Path
from typing import Protocol

from vpnd.errors import TunnelFailed

# openvpn's output lines longer than this are skipped (asyncio's default bound).
_OUTPUT_LINE_LIMIT = 2**16

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
        """Spawn openvpn in a session of its own, output and errors on one pipe.

        The spawn runs in a thread: it returns only once openvpn is executing,
        and the event loop (the bus, the HTTP calls in flight) goes on meanwhile.
        """
        del name, socket_path, account  # openvpn's own options carry the account
        try:
            popen = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Keeps a terminal's Ctrl-C away from openvpn: the daemon stops it.
                start_new_session=True,
                env=env,
            )
        except OSError as error:
            raise TunnelFailed(f"cannot run {argv[0]}: {error.strerror or error}") from None
        try:
            return await ChildProcess.attach(popen)
        except BaseException:
            popen.kill()
            await asyncio.to_thread(popen.wait)
            raise


class ChildProcess:
    """An openvpn started by `ChildLauncher`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
    ) -> None:
        """Use attach()."""
        self._popen = popen
        self._stdin = stdin
        self._stdout = stdout
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @classmethod
    async def attach(cls, popen: subprocess.Popen[bytes]) -> ChildProcess:
        """Follow `popen`, started with pipes for standard input and output:
        the pipes on the event loop, its exit through a pidfd (no thread waits)."""
        assert popen.stdin is not None and popen.stdout is not None
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader(limit=_OUTPUT_LINE_LIMIT, loop=loop)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), popen.stdout)
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), popen.stdin
        )
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        child = cls(popen, stdin, stdout)
        pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(pidfd, child._on_exit, pidfd)
        return child

    def _on_exit(self, pidfd: int) -> None:
        try:
            pid, status = os.waitpid(self._popen.pid, os.WNOHANG)
        except ChildProcessError:
            returncode = 255  # reaped by someone else: its status is lost
        else:
            if pid == 0:
                return  # still running
            returncode = os.waitstatus_to_exitcode(status)
        # Popen must not reap it again (or wait for it).
        self._popen.returncode = returncode
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        if not self._exited.done():
            self._exited.set_result(returncode)

    @property
    def label(self) -> str:
        """The process id."""
        return f"pid {self._popen.pid}"

    @property
    def pid(self) -> int:
        """Known from the start."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Once reaped: the exit status, or minus the signal for a killed process."""
        return self._exited.result() if self._exited.done() else None

    async def send_input(self, data: bytes) -> None:
        """Write the config and close standard input."""
        await send_and_close(self._stdin, data)

    async def readline(self) -> bytes:
        """The next line of output."""
        return await self._stdout.readline()

    async def wait(self) -> int:
        """Reap the child."""
        self._stdin.close()
        return await asyncio.shield(self._exited)

    async def is_peer(self, pid: int, uid: int) -> bool:
        """The child itself, whatever user it runs as by then."""
        del uid
        return pid == self._popen.pid

    def send_signal(self, signum: signal.Signals) -> None:
        """Signal the child unless it has been reaped."""
        if self._exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            # Popen checks that it has not reaped the process itself.
            self._popen.send_signal(signum)

    def exit_reason(self, returncode: int) -> str | None:
        """openvpn's own output always tells more."""
        del returncode
        return None
