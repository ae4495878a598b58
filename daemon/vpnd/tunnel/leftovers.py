"""Tunnels an earlier run left behind: found at start and removed.

A vpnd that was killed (a crash, SIGKILL, the watchdog) could not stop its
openvpn. As the daemon's child, openvpn normally ends by itself once its
management connection closes (`--management-client`), but one that is slow
or stuck would keep the tunnel, its routes and its device. A transient
systemd unit is bound to the daemon's unit where the daemon runs as one;
one that was not bound, or is still on its way out, keeps the tunnel and
the unit name the new run's first tunnel takes.

At start, before anyone can connect, the new run looks for both and stops
them. It does not adopt them: the previous run's session, its prompts and
its state are gone with it, and a tunnel the daemon does not drive is one
whose state it cannot report truthfully. A connection marked to connect at
start is made again afterwards, as at every start.

openvpn processes are recognised by their command line: vpnd starts each
with `--management-client --management {runtime_dir}/{tunnel}.sock unix`, so
the runtime directory names the daemon they belong to. Units by their names
(`vpnd-openvpn-*.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from vpnd.tunnel import unit
from vpnd.tunnel.systemd import SystemdError, SystemdLauncher

log = logging.getLogger("vpnd.tunnel")

# How long an openvpn gets to end after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
_SYSTEMD = "org.freedesktop.systemd1"
_MANAGER_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_UNIT = "org.freedesktop.systemd1.Unit"
_PROPERTIES = "org.freedesktop.DBus.Properties"
_RUNNING = {"active", "activating", "deactivating", "reloading"}
_POLL = 0.1


@dataclass(frozen=True)
class Leftover:
    """An openvpn of an earlier run: its process id and the tunnel it was."""

    pid: int
    tunnel: str


def tunnel_of(cmdline: bytes, runtime_dir: Path) -> str | None:
    """The tunnel name if `cmdline` (/proc/PID/cmdline) is an openvpn that a
    vpnd with `runtime_dir` started as its child; else None."""
    argv = cmdline.rstrip(b"\0").split(b"\0")
    if not argv or not os.path.basename(argv[0]).startswith(b"openvpn"):
        return None
    if b"--management-client" not in argv:
        return None
    for i, word in enumerate(argv[:-1]):
        if word != b"--management":
            continue
        socket_path = Path(os.fsdecode(argv[i + 1]))
        if socket_path.parent == runtime_dir and socket_path.suffix == ".sock":
            return socket_path.stem
    return None


def find_processes(runtime_dir: Path, proc: Path = Path("/proc")) -> list[Leftover]:
    """The openvpn processes a vpnd with `runtime_dir` started and left."""
    found: list[Leftover] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        tunnel = tunnel_of(cmdline, runtime_dir)
        if tunnel is not None:
            found.append(Leftover(int(entry.name), tunnel))
    return sorted(found, key=lambda leftover: leftover.pid)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def _exited(pidfd: int, timeout: float) -> bool:
    """Whether the process behind `pidfd` exits within `timeout` seconds."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        async with asyncio.timeout(timeout):
            await done
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


async def stop_process(leftover: Leftover, runtime_dir: Path, timeout: float = STOP_TIMEOUT) -> str:
    """End a leftover openvpn: SIGTERM (and SIGCONT, should it be stopped),
    then SIGKILL if it has not ended within `timeout`. How it ended, in words."""
    try:
        pidfd = os.pidfd_open(leftover.pid)
    except ProcessLookupError:
        return "it had ended by itself"
    try:
        # Signals go through the pidfd, opened before this check: never to a
        # process that took the number over after openvpn ended.
        if tunnel_of(_cmdline(leftover.pid), runtime_dir) != leftover.tunnel:
            return "it had ended by itself"
        try:
            for signum in (signal.SIGTERM, signal.SIGCONT):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(pidfd, signum)
            if await _exited(pidfd, timeout):
                return "it ended on SIGTERM"
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except PermissionError:
            # A daemon without CAP_KILL cannot end another user's process.
            return "it could not be stopped: vpnd may not signal it; stop it by hand"
        if await _exited(pidfd, timeout):
            return f"it did not end within {timeout:g} s of SIGTERM and was killed"
        return "it did not end even on SIGKILL"
    finally:
        os.close(pidfd)


async def remove_processes(runtime_dir: Path) -> list[str]:
    """Stop every openvpn an earlier run with `runtime_dir` left; what was found, in words."""
    leftovers = find_processes(runtime_dir)
    reports = await asyncio.gather(*(stop_process(one, runtime_dir) for one in leftovers))
    said = []
    for leftover, how in zip(leftovers, reports, strict=True):
        sentence = (
            f"openvpn (pid {leftover.pid}, tunnel {leftover.tunnel}) of an earlier run: {how}"
        )
        log.warning("removed %s", sentence)
        said.append(sentence)
    return said


async def remove_units(launcher: SystemdLauncher) -> list[str]:
    """Stop the openvpn units (`vpnd-openvpn-*.service`) an earlier run left;
    what was found, in words."""
    try:
        reply = await launcher.call(
            _MANAGER_PATH, _MANAGER, "ListUnitsByPatterns", "asas", [], [f"{unit.UNIT_PREFIX}*"]
        )
    except SystemdError as error:
        log.warning("cannot look for openvpn units of an earlier run: %s", error.message)
        return []
    said = []
    for name, _description, _load, active, *_rest in reply.body[0]:
        if not name.startswith(unit.UNIT_PREFIX) or not name.endswith(".service"):
            continue
        how = await _stop_unit(launcher, name, active)
        sentence = f"openvpn unit {name} ({active}) of an earlier run: {how}"
        log.warning("removed %s", sentence)
        said.append(sentence)
    return said


async def _stop_unit(launcher: SystemdLauncher, name: str, active: str) -> str:
    path = unit.unit_object_path(name)
    try:
        if active in _RUNNING:
            await launcher.call(_MANAGER_PATH, _MANAGER, "StopUnit", "ss", name, "replace")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2 * STOP_TIMEOUT
            while loop.time() < deadline:
                try:
                    reply = await launcher.call(
                        path, _PROPERTIES, "Get", "ss", _UNIT, "ActiveState"
                    )
                except SystemdError:
                    break  # unloaded: gone
                if reply.body[0].value not in _RUNNING:
                    break
                await asyncio.sleep(_POLL)
            else:
                return "it did not stop"
        with contextlib.suppress(SystemdError):
            # A failed unit keeps its name until reset; the next tunnel may need it.
            await launcher.call(_MANAGER_PATH, _MANAGER, "ResetFailedUnit", "s", name)
    except SystemdError as error:
        return f"it could not be stopped ({error.message})"
    return "stopped" if active in _RUNNING else "its record was cleared"


async def remove_leftovers(runtime_dir: Path, launcher: object) -> list[str]:
    """Remove every tunnel an earlier run left (processes, and units where
    `launcher` starts openvpn as units); what was found, in words."""
    found = await remove_processes(runtime_dir)
    if isinstance(launcher, SystemdLauncher):
        found += await remove_units(launcher)
    return found
