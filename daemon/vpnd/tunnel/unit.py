"""The transient systemd unit openvpn runs in: its name, properties and exit codes.

No I/O here: `vpnd.tunnel.systemd` sends what this module builds to the
service manager (org.freedesktop.systemd1, StartTransientUnit).

openvpn runs as its own user with CAP_NET_ADMIN as its only capability,
ambient so that it holds it without ever being root. Its sandbox has the
settings of the daemon's own unit (the system call filter is a deny list,
see DENIED_SYSTEM_CALLS), plus netlink for its links and routes and the tun
device. Three things reach in from outside:

- the config on standard input, a pipe the daemon writes and closes;
- the management socket, a file in the daemon's 0700 runtime directory that
  is bound into the unit's private /tmp, the only way openvpn's user can
  reach it; the daemon accepts only the unit's main process on it;
- /dev/net/tun, the one device in its private /dev.

Output and errors go to a pipe the daemon reads, so its log lines pass the
same redaction as those of a child process.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbus_fast import Variant

UNIT_PREFIX = "vpnd-openvpn-"
#: Where openvpn finds the management socket: inside its own private /tmp.
MANAGEMENT_PATH = "/tmp/vpnd-management.sock"  # noqa: S108 (a private /tmp)
CAP_NET_ADMIN = 12
_EPERM = 1
_TUN = "/dev/net/tun"
_STOP_TIMEOUT_USEC = 10_000_000

# The system call filter is a deny list: an allow list of @system-service
# costs systemd about 18 ms to compile at every start of openvpn (3 ms for
# this list), which is most of what a connect may add. It denies every group
# @system-service leaves out (tests/unit/test_openvpn_unit.py compares the
# two with systemd's own tables), and @resources, which openvpn does not
# need either; what it lets through beyond that are calls newer than the
# running systemd's tables.
DENIED_SYSTEM_CALLS = (
    "@clock",
    "@cpu-emulation",
    "@debug",
    "@module",
    "@mount",
    "@obsolete",
    "@privileged",
    "@raw-io",
    "@reboot",
    "@resources",
    "@swap",
    "memfd_secret",
    "process_mrelease",
    "syslog",
)

# Unit names may hold these; a tunnel name is a subset already.
_UNIT_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")

# siginfo codes in ExecMainCode.
CLD_EXITED = 1
CLD_KILLED = 2
CLD_DUMPED = 3

# Exit statuses systemd uses when it could not set up or run the process
# (systemd.exec(5), "Process Exit Codes"); openvpn itself exits 0 or 1.
_SETUP_FAILURES = {
    200: "could not change to its working directory",
    202: "could not close its file descriptors",
    203: "could not execute the openvpn binary",
    204: "ran out of memory",
    208: "could not set up its standard input",
    209: "could not set up its standard output",
    216: "could not switch to openvpn's group",
    217: "could not switch to openvpn's user",
    218: "could not set its capabilities",
    219: "could not set up its control group",
    222: "could not set up its standard error",
    226: "could not set up its file system namespace",
    227: "could not set no-new-privileges",
    228: "could not install its system call filter",
    230: "could not lock its execution domain",
    232: "could not restrict its address families",
    237: "could not set up its kernel keyring",
    242: "could not set its NUMA policy",
}


@dataclass(frozen=True)
class UnitRequest:
    """What a transient unit for one openvpn needs."""

    name: str  # the tunnel's name
    argv: Sequence[str]
    environment: dict[str, str]
    user: str
    group: str
    socket_path: str  # the management socket on the host
    bound_to: str | None = None  # the daemon's own service unit, if it is one


def unit_name(tunnel_name: str) -> str:
    """The unit for the tunnel `tunnel_name`."""
    name = f"{UNIT_PREFIX}{tunnel_name}.service"
    if _UNIT_NAME_CHARS.fullmatch(tunnel_name) is None or len(name) > 255:
        raise ValueError(f"{tunnel_name!r} cannot be part of a unit name")
    return name


def unit_object_path(unit: str) -> str:
    """systemd's D-Bus object path for `unit` (sd_bus's label escaping)."""
    label = "".join(
        chr(byte) if _keeps(byte, first=index == 0) else f"_{byte:02x}"
        for index, byte in enumerate(unit.encode())
    )
    return "/org/freedesktop/systemd1/unit/" + (label or "_")


def _keeps(byte: int, *, first: bool) -> bool:
    """Letters stay, and digits except a leading one; all else is escaped."""
    if ord("a") <= byte <= ord("z") or ord("A") <= byte <= ord("Z"):
        return True
    return not first and ord("0") <= byte <= ord("9")


def properties(request: UnitRequest, stdin_fd: int, output_fd: int) -> list[tuple[str, Variant]]:
    """StartTransientUnit's properties; `stdin_fd`/`output_fd` index the message's fds."""
    capabilities = 1 << CAP_NET_ADMIN
    props: list[tuple[str, Variant]] = [
        ("Description", Variant("s", f"openvpn for vpnd tunnel {request.name}")),
        ("ExecStart", Variant("a(sasb)", [[request.argv[0], list(request.argv), False]])),
        ("Type", Variant("s", "exec")),
        ("Environment", Variant("as", [f"{k}={v}" for k, v in request.environment.items()])),
        ("StandardInputFileDescriptor", Variant("h", stdin_fd)),
        ("StandardOutputFileDescriptor", Variant("h", output_fd)),
        ("StandardErrorFileDescriptor", Variant("h", output_fd)),
        # The unit stays until the daemon has read how openvpn ended, and
        # goes away afterwards even if it failed.
        ("AddRef", Variant("b", True)),
        ("CollectMode", Variant("s", "inactive-or-failed")),
        ("TimeoutStopUSec", Variant("t", _STOP_TIMEOUT_USEC)),
        # Who it is and what it may do.
        ("User", Variant("s", request.user)),
        ("Group", Variant("s", request.group)),
        ("CapabilityBoundingSet", Variant("t", capabilities)),
        ("AmbientCapabilities", Variant("t", capabilities)),
        ("NoNewPrivileges", Variant("b", True)),
        ("UMask", Variant("u", 0o077)),
        # What it sees.
        ("ProtectSystem", Variant("s", "strict")),
        ("ProtectHome", Variant("s", "yes")),
        ("PrivateTmp", Variant("b", True)),
        ("PrivateDevices", Variant("b", True)),
        ("DevicePolicy", Variant("s", "closed")),
        ("DeviceAllow", Variant("a(ss)", [[_TUN, "rw"]])),
        (
            "BindReadOnlyPaths",
            Variant("a(ssbt)", [[_TUN, _TUN, False, 0]]),
        ),
        (
            "BindPaths",
            Variant("a(ssbt)", [[request.socket_path, MANAGEMENT_PATH, False, 0]]),
        ),
        ("PrivateIPC", Variant("b", True)),
        ("RemoveIPC", Variant("b", True)),
        ("ProtectProc", Variant("s", "invisible")),
        ("ProcSubset", Variant("s", "pid")),
        ("ProtectKernelTunables", Variant("b", True)),
        ("ProtectKernelModules", Variant("b", True)),
        ("ProtectKernelLogs", Variant("b", True)),
        ("ProtectControlGroups", Variant("b", True)),
        ("ProtectClock", Variant("b", True)),
        ("ProtectHostname", Variant("b", True)),
        ("KeyringMode", Variant("s", "private")),
        # What it may call.
        (
            "RestrictAddressFamilies",
            Variant("(bas)", [True, ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]]),
        ),
        ("RestrictNamespaces", Variant("t", 0)),  # the namespaces allowed: none
        ("RestrictRealtime", Variant("b", True)),
        ("RestrictSUIDSGID", Variant("b", True)),
        ("LockPersonality", Variant("b", True)),
        ("MemoryDenyWriteExecute", Variant("b", True)),
        ("SystemCallArchitectures", Variant("as", ["native"])),
        ("SystemCallFilter", Variant("(bas)", [False, list(DENIED_SYSTEM_CALLS)])),
        ("SystemCallErrorNumber", Variant("i", _EPERM)),
    ]
    if request.bound_to is not None:
        # Stopped with the daemon; and stopped after it, so that a daemon on
        # its way down still disconnects its tunnels itself. Not BindsTo=:
        # systemd passes a restart of the daemon on to units bound to it, so
        # the old openvpn's unit was queued to start again and the daemon's
        # shutdown waited for it in vain.
        props.append(("StopPropagatedFrom", Variant("as", [request.bound_to])))
        props.append(("Before", Variant("as", [request.bound_to])))
    return props


def returncode(exec_main_code: int, exec_main_status: int) -> int:
    """A subprocess-style return code from ExecMainCode and ExecMainStatus."""
    if exec_main_code in (CLD_KILLED, CLD_DUMPED):
        return -exec_main_status
    return exec_main_status


def exit_reason(returncode: int, unit: str) -> str | None:
    """Why systemd could not run openvpn, for the exit statuses systemd itself uses."""
    failure = _SETUP_FAILURES.get(returncode)
    if failure is None:
        return None
    return f"systemd {failure} (status {returncode}); `journalctl -u {unit}` tells more"


def as_dict(changed: Any) -> dict[str, Any]:
    """Plain values from an a{sv} of PropertiesChanged or GetAll."""
    if not isinstance(changed, dict):
        return {}
    return {
        key: value.value if isinstance(value, Variant) else value for key, value in changed.items()
    }
