"""The transient unit openvpn runs in: names, object paths, properties, exit codes."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from dbus_fast import Message, Variant
from hypothesis import given
from hypothesis import strategies as st

from tests.lab.require import require_tool
from vpnd.tunnel import unit
from vpnd.tunnel.process import CHILD_CAPABILITIES, missing_child_capabilities

REQUEST = unit.UnitRequest(
    name="c1-2",
    argv=["/usr/sbin/openvpn", "--config", "/dev/stdin"],
    environment={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
    user="vpnd-openvpn",
    group="vpnd-openvpn",
    socket_path="/run/vpnd/c1-2.sock",
    bound_to="vpnd.service",
)
_UNESCAPE = re.compile(r"_([0-9a-f]{2})")


def props(request: unit.UnitRequest = REQUEST) -> dict[str, list[Any]]:
    """Each property's values (SystemCallFilter comes twice)."""
    table: dict[str, list[Any]] = {}
    for name, variant in unit.properties(request, 0, 1):
        table.setdefault(name, []).append(variant.value)
    return table


def unescape(label: str) -> str:
    return _UNESCAPE.sub(lambda m: chr(int(m[1], 16)), label)


def test_unit_name() -> None:
    assert unit.unit_name("c1-2") == "vpnd-openvpn-c1-2.service"
    for bad in ("", "a/b", "a b", "ä", "x" * 300):
        with pytest.raises(ValueError):
            unit.unit_name(bad)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        # As systemd itself names these objects.
        ("dbus.service", "/org/freedesktop/systemd1/unit/dbus_2eservice"),
        ("vpnd-openvpn-c1.service", "/org/freedesktop/systemd1/unit/vpnd_2dopenvpn_2dc1_2eservice"),
        ("1x.service", "/org/freedesktop/systemd1/unit/_31x_2eservice"),
        ("a_b.service", "/org/freedesktop/systemd1/unit/a_5fb_2eservice"),
    ],
)
def test_unit_object_path(name: str, path: str) -> None:
    assert unit.unit_object_path(name) == path


@given(st.text(alphabet="abcXYZ019:_.\\-", min_size=1, max_size=40))
def test_object_paths_are_valid_and_reversible(name: str) -> None:
    path = unit.unit_object_path(name)
    label = path.removeprefix("/org/freedesktop/systemd1/unit/")
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label)
    assert unescape(label) == name


def test_properties_marshal_as_start_transient_unit_arguments() -> None:
    message = Message(
        destination="org.freedesktop.systemd1",
        path="/org/freedesktop/systemd1",
        interface="org.freedesktop.systemd1.Manager",
        member="StartTransientUnit",
        signature="ssa(sv)a(sa(sv))",
        body=["vpnd-openvpn-c1-2.service", "fail", unit.properties(REQUEST, 0, 1), []],
        unix_fds=[5, 6],
    )
    assert len(message._marshall(negotiate_unix_fd=True)) > 1000


def test_openvpn_runs_as_its_user_with_net_admin_alone() -> None:
    table = props()
    assert table["User"] == ["vpnd-openvpn"]
    assert table["Group"] == ["vpnd-openvpn"]
    assert table["CapabilityBoundingSet"] == [1 << 12]
    assert table["AmbientCapabilities"] == [1 << 12]
    assert table["NoNewPrivileges"] == [True]
    argv = ["/usr/sbin/openvpn", "--config", "/dev/stdin"]
    assert table["ExecStart"] == [[["/usr/sbin/openvpn", argv, False]]]
    assert table["Environment"] == [["PATH=/usr/bin:/bin", "LC_ALL=C"]]


def test_what_reaches_into_the_unit() -> None:
    table = props()
    # Config in, output out: both on the daemon's pipes (fd indices 0 and 1).
    assert table["StandardInputFileDescriptor"] == [0]
    assert table["StandardOutputFileDescriptor"] == table["StandardErrorFileDescriptor"] == [1]
    assert table["BindPaths"] == [[["/run/vpnd/c1-2.sock", unit.MANAGEMENT_PATH, False, 0]]]
    assert unit.MANAGEMENT_PATH.startswith("/tmp/")
    assert table["PrivateTmp"] == [True]
    assert table["PrivateDevices"] == [True]
    assert table["DeviceAllow"] == [[["/dev/net/tun", "rw"]]]
    assert table["BindReadOnlyPaths"] == [[["/dev/net/tun", "/dev/net/tun", False, 0]]]


def test_sandbox() -> None:
    table = props()
    assert table["ProtectSystem"] == ["strict"]
    assert table["ProtectHome"] == ["yes"]
    assert table["ProtectProc"] == ["invisible"]
    assert table["RestrictNamespaces"] == [0]
    assert table["MemoryDenyWriteExecute"] == [True]
    assert table["SystemCallFilter"] == [[False, list(unit.DENIED_SYSTEM_CALLS)]]
    families = table["RestrictAddressFamilies"]
    assert families == [[True, ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]]]


def test_bound_to_the_daemon_only_when_it_is_a_unit() -> None:
    assert props()["StopPropagatedFrom"] == [["vpnd.service"]]
    # A restart of the daemon would be passed on to a unit bound to it.
    assert "BindsTo" not in props()
    assert props()["Before"] == [["vpnd.service"]]
    loose = unit.UnitRequest(**{**REQUEST.__dict__, "bound_to": None})
    assert "StopPropagatedFrom" not in props(loose)
    assert "Before" not in props(loose)


def test_every_property_is_a_variant_once() -> None:
    names = [name for name, _ in unit.properties(REQUEST, 0, 1)]
    assert len(names) == len(set(names))
    assert all(isinstance(v, Variant) for _, v in unit.properties(REQUEST, 0, 1))


@pytest.mark.parametrize(
    ("code", "status", "returncode"),
    [
        (unit.CLD_EXITED, 0, 0),
        (unit.CLD_EXITED, 1, 1),
        (unit.CLD_KILLED, 9, -9),
        (unit.CLD_DUMPED, 11, -11),
        (0, 0, 0),
    ],
)
def test_returncode(code: int, status: int, returncode: int) -> None:
    assert unit.returncode(code, status) == returncode


def test_exit_reason_names_systemd_failures_only() -> None:
    reason = unit.exit_reason(203, "vpnd-openvpn-x.service")
    assert reason is not None
    assert "could not execute the openvpn binary" in reason
    assert "journalctl -u vpnd-openvpn-x.service" in reason
    assert unit.exit_reason(1, "u") is None
    assert unit.exit_reason(0, "u") is None
    assert unit.exit_reason(-9, "u") is None


def test_as_dict() -> None:
    assert unit.as_dict({"A": Variant("s", "x"), "B": 3}) == {"A": "x", "B": 3}
    assert unit.as_dict(["not", "a", "dict"]) == {}


def syscall_groups() -> dict[str, set[str]]:
    """systemd's own system call groups, each expanded to system call names."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    raw: dict[str, list[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            raw[current] = []
        elif current and line.strip() and not line.lstrip().startswith("#"):
            raw[current].append(line.strip())

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(item) for item in raw.get(name, [])))

    return {group: expand(group) for group in raw}


def test_the_deny_list_blocks_what_the_service_allow_list_would() -> None:
    require_tool("systemd-analyze", "systemd")
    groups = syscall_groups()
    known = groups["@known"]
    allowed_by_service = groups["@system-service"] - groups["@privileged"] - groups["@resources"]
    denied: set[str] = set()
    for item in unit.DENIED_SYSTEM_CALLS:
        denied |= groups[item] if item.startswith("@") else {item}
    # Everything the allow list kept out, the deny list keeps out too, except
    # calls that do not exist on this architecture and a few harmless ones.
    let_through = known - allowed_by_service - denied
    native = {name for name in let_through if not name.startswith(_FOREIGN)}
    assert native <= _HARMLESS, sorted(native - _HARMLESS)
    # And it takes nothing away that openvpn needs.
    assert not denied & {"socket", "connect", "sendto", "recvfrom", "ioctl", "epoll_wait"}


# Names of other architectures' calls, which x86_64 and arm64 never see.
_FOREIGN = (
    "osf_",
    "arc_",
    "s390_",
    "spu_",
    "or1k_",
    "atomic_",
    "utrap_",
    "perfctr",
    "syscall",
    "sysmips",
)
# Let through by the deny list: reading one's own host name and page size,
# futex variants, landlock (which can only restrict), memory protection keys
# and mincore act on the caller itself; seccomp can only add filters.
_HARMLESS = {
    "cachectl", "dipc", "exec_with_loader", "execv", "futex_requeue", "futex_wait",
    "futex_wake", "getdomainname", "getdtablesize", "gethostname", "getpagesize",
    "getxgid", "getxpid", "getxuid", "kern_features", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "map_shadow_stack",
    "memory_ordering", "mincore", "multiplexer", "old_adjtimex", "oldumount",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "sched_get_affinity",
    "sched_set_affinity", "seccomp", "sethae", "setpgrp", "timerfd",
}  # fmt: skip


@pytest.mark.parametrize(
    ("cap_eff", "missing"),
    [
        ("000001ffffffffff", []),
        ("0000000000001000", ["CAP_SETGID", "CAP_SETUID"]),
        ("00000000000010c0", []),
        ("0000000000000000", ["CAP_SETGID", "CAP_SETUID", "CAP_NET_ADMIN"]),
    ],
)
def test_missing_child_capabilities(cap_eff: str, missing: list[str]) -> None:
    status = f"Name:\tvpnd\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n"
    assert missing_child_capabilities(status) == missing


def test_missing_child_capabilities_without_the_line() -> None:
    assert missing_child_capabilities("Name:\tvpnd\n") == list(CHILD_CAPABILITIES)
