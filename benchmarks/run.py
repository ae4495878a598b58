"""Figures for vpnd on the local lab, side by side with their baselines.

    sudo .venv/bin/python -m benchmarks.run [--rounds N]

1. connect latency: D-Bus Connect → State "connected", against plain
   `openvpn --config` (start → "Initialization Sequence Completed") on the
   same kind of config and the same server;
2. `vpnctl status` wall time, against `busctl get-property` on the same daemon;
3. vpnd start → READY=1, and its resident memory when idle;
4. the connect latency again with vpnd as vpnd.service under a real systemd
   (tests/lab/systemd.py), where openvpn runs as a transient unit.

Prints a Markdown table; RESULTS.md keeps the recorded runs. These are
figures, not pass/fail checks: the machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jeepney import DBusAddress, MatchRule, Properties, message_bus, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.low_level import HeaderFields
from tests.lab.browser import write_browser_script
from tests.lab.daemon import REPO, VpndProcess, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from tests.lab.systemd import SystemdWorld, python_binds
from tests.lab.systemd import available as systemd_world_available
from tests.lab.vpnd_unit import UnitDaemon, world_files

DEST = "org.vpnd.Daemon"
ROOT = "/org/vpnd/Daemon"


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f}, n={len(samples)})"


def plain_openvpn_connect(lab: OpenVPNLab, pki: LabPKI, workdir: Path) -> float:
    """Seconds from starting openvpn to 'Initialization Sequence Completed'."""
    cert, key = pki.issue_client(f"bench-{time.monotonic_ns()}")
    config = workdir / "plain.ovpn"
    config.write_text(lab.client_config(cert, key))
    config.chmod(0o600)
    started = time.monotonic()
    process = subprocess.Popen(
        ["openvpn", "--config", str(config), "--verb", "3", "--suppress-timestamps"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if "Initialization Sequence Completed" in line:
                return time.monotonic() - started
        raise RuntimeError("openvpn exited before connecting")
    finally:
        process.terminate()
        process.wait(10)
        config.unlink()


def _get(conn: DBusConnection, path: str, interface: str, name: str) -> object:
    reply = conn.send_and_get_reply(
        Properties(DBusAddress(path, DEST, interface)).get(name), timeout=10
    )
    return reply.body[0][1]


def _wait_state(conn: DBusConnection, path: str, wanted: set[str], timeout: float = 30) -> str:
    """Wait for the connection's State to be one of `wanted` (PropertiesChanged, no polling)."""
    rule = MatchRule(
        type="signal",
        interface="org.freedesktop.DBus.Properties",
        member="PropertiesChanged",
        path=path,
    )
    deadline = time.monotonic() + timeout
    conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
    with conn.filter(rule) as queue:
        state = str(_get(conn, path, "org.vpnd.Connection1", "State"))
        while state not in wanted:
            message = conn.recv_until_filtered(queue, timeout=deadline - time.monotonic())
            changed = message.body[1]
            if "State" in changed:
                state = str(changed["State"][1])
    return state


def _error_message(conn: DBusConnection, path: str) -> str:
    """The connection's ErrorMessage, read once it has ended."""
    reply = conn.send_and_get_reply(
        new_method_call(
            DBusAddress(path, DEST, "org.freedesktop.DBus.Properties"),
            "Get",
            "ss",
            ("org.vpnd.Connection1", "ErrorMessage"),
        ),
        timeout=10,
    )
    return str(reply.body[0][1])


def vpnd_connect_instants(
    conn: DBusConnection, server_path: str, profile: str = "employees"
) -> tuple[float, float]:
    """D-Bus Connect → State "connected", then Disconnect; the monotonic instants of
    the Connect call and of "connected" (well-known, /connect and openvpn between)."""
    rule = MatchRule(
        type="signal",
        interface="org.freedesktop.DBus.Properties",
        member="PropertiesChanged",
        path_namespace=f"{ROOT}/connections",
    )
    conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=10)
    with conn.filter(rule) as queue:
        started = time.monotonic()
        reply = conn.send_and_get_reply(
            new_method_call(
                DBusAddress(server_path, DEST, "org.vpnd.Server1"),
                "Connect",
                "sa{sv}",
                (profile, {}),
            ),
            timeout=30,
        )
        path = reply.body[0]
        while True:
            message = conn.recv_until_filtered(queue, timeout=30)
            changed = message.body[1]
            if message.header.fields.get(HeaderFields.path) == path and "State" in changed:
                state = changed["State"][1]
                if state == "connected":
                    connected = time.monotonic()
                    break
                if state in ("failed", "disconnected"):
                    reason = changed.get("ErrorMessage", ("s", ""))[1] or _error_message(conn, path)
                    raise RuntimeError(f"connect ended {state}: {reason}")
    conn.send_and_get_reply(
        new_method_call(DBusAddress(ROOT, DEST, "org.vpnd.Manager1"), "Disconnect"), timeout=30
    )
    _wait_state(conn, path, {"disconnected"})
    return started, connected


def vpnd_connect(conn: DBusConnection, server_path: str) -> float:
    """Seconds from the Connect call to State "connected"."""
    started, connected = vpnd_connect_instants(conn, server_path)
    return connected - started


def logged_in(bus_address: str, portal: TestPortal, pki: LabPKI, workdir: Path) -> dict[str, str]:
    """Add the portal and log in through the lab browser; vpnctl's environment.

    Also points this process's system bus at `bus_address`, for jeepney.
    """
    env = {
        "DBUS_SYSTEM_BUS_ADDRESS": bus_address,
        "BROWSER": str(write_browser_script(workdir, ca_file=str(pki.ca_path))),
    }
    for args in (["add", portal.base_url], ["login", portal.host]):
        result = vpnctl(args, env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    return env


def find_server(conn: DBusConnection, host: str) -> str:
    """The object path of the server named `host`."""
    reply = conn.send_and_get_reply(
        new_method_call(DBusAddress(ROOT, DEST, "org.vpnd.Manager1"), "FindServer", "s", (host,))
    )
    path: str = reply.body[0]
    return path


def a_day(
    conn: DBusConnection, server_path: str, portal: TestPortal, env: dict[str, str], rounds: int
) -> None:
    """A day's use of a logged-in daemon, `rounds` times: a new login, a connect
    whose access token has expired (vpnd refreshes it first) and another connect."""
    for _ in range(rounds):
        result = vpnctl(["login", portal.host], env)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        portal.expire_access_tokens()
        vpnd_connect(conn, server_path)
        vpnd_connect(conn, server_path)


def rss_split(pid: int) -> str:
    """VmRSS, and how much of it is anonymous memory (the rest is mapped files:
    the interpreter, OpenSSL and extension modules, shared with other processes)."""
    rollup = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        rollup[name.rstrip(":")] = int(value)
    return f"{rss_kib(pid) / 1024:.1f} MiB ({rollup['Anonymous'] / 1024:.1f} MiB anonymous)"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, capture_output=True, check=True)
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(rounds: int, workdir: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    pki = LabPKI.create(workdir / "pki")
    with (
        OpenVPNLab(pki, workdir / "lab") as lab,
        TestPortal(pki, lab) as portal,
        PrivateSystemBus(workdir / "bus") as bus,
    ):
        ready: list[float] = []
        idle_rss: list[int] = []
        for i in range(rounds):
            daemon = VpndProcess(
                workdir / f"start{i}", bus.env({}), ca_file=pki.ca_path, log_level="info"
            )
            daemon.start()
            ready.append(daemon.ready_after)
            time.sleep(0.5)  # let start-up settle before reading RSS
            idle_rss.append(rss_kib(daemon.pid))
            daemon.stop()
        rows.append(("vpnd start → READY=1", median_ms(ready), "target ≤ 150 ms"))
        rows.append(
            (
                "vpnd RSS when idle",
                f"{statistics.median(idle_rss) / 1024:.1f} MiB",
                "target ≤ 40 MiB, also after a day's use",
            )
        )

        with VpndProcess(
            workdir / "vpnd", bus.env({}), ca_file=pki.ca_path, log_level="info"
        ) as daemon:
            env = logged_in(bus.address, portal, pki, workdir)
            after_login = rss_split(daemon.pid)
            with open_dbus_connection(bus="SYSTEM") as conn:
                server_path = find_server(conn, portal.host)
                vpnd_connect(conn, server_path)  # warm-up: first use loads httpx and TLS
                plain = [plain_openvpn_connect(lab, pki, workdir) for _ in range(rounds)]
                through_vpnd = [vpnd_connect(conn, server_path) for _ in range(rounds)]
                after_cycles = rss_split(daemon.pid)
                a_day(conn, server_path, portal, env, rounds)
            added = statistics.median(through_vpnd) - statistics.median(plain)
            rows.append(("plain `openvpn --config` → connected", median_ms(plain), "baseline"))
            rows.append(("vpnd D-Bus Connect → connected", median_ms(through_vpnd), ""))
            rows.append(
                (
                    "added by vpnd (medians)",
                    f"{added * 1000:.1f} ms",
                    "target: ≤ eduvpn-common's (benchmarks.side_by_side)",
                )
            )
            rows.append(("vpnd RSS after the first login", after_login, ""))
            rows.append(("vpnd RSS after connect cycles", after_cycles, ""))
            rows.append(
                (
                    f"vpnd RSS after a day: {rounds} more logins, token refreshes, {rounds * 2} connects",
                    rss_split(daemon.pid),
                    "target ≤ 40 MiB",
                )
            )

            vpnctl_bin = [sys.executable, "-m", "vpnctl", "status"]
            full_env = {**os.environ, **env, "PYTHONPATH": str(REPO / "client")}
            busctl = [
                "busctl",
                f"--address={bus.address}",
                "get-property",
                DEST,
                ROOT,
                "org.vpnd.Manager1",
                "ActiveConnection",
            ]
            n = rounds * 4
            status = [wall(vpnctl_bin, full_env) for _ in range(n)]
            baseline = [wall(busctl, full_env) for _ in range(n)]
            rows.append(("`busctl get-property`", median_ms(baseline), "baseline"))
            rows.append(("`vpnctl status`", median_ms(status), "target < 80 ms"))
        rows += measure_under_systemd(rounds, workdir, pki, portal, statistics.median(plain))
    return rows


def measure_under_systemd(
    rounds: int, workdir: Path, pki: LabPKI, portal: TestPortal, plain: float
) -> list[tuple[str, str, str]]:
    """The same connect as vpnd.service under a real systemd, openvpn in a transient unit."""
    reason = systemd_world_available()
    if reason is not None:
        return [("vpnd.service under systemd", "not measured", reason)]
    files = world_files(pki)
    with SystemdWorld(workdir / "world", files=files, binds=python_binds()) as world:
        daemon = UnitDaemon(world, world.start_system_bus())
        logged_in(daemon.bus_address, portal, pki, workdir)
        with open_dbus_connection(bus="SYSTEM") as conn:
            server_path = find_server(conn, portal.host)
            vpnd_connect(conn, server_path)  # warm-up
            samples = [vpnd_connect(conn, server_path) for _ in range(rounds)]
        added = statistics.median(samples) - plain
        return [
            ("vpnd.service Connect → connected (openvpn as a unit)", median_ms(samples), ""),
            (
                "added by vpnd under systemd (medians)",
                f"{added * 1000:.1f} ms",
                "target: ≤ 1.5× eduvpn-common's",
            ),
            ("vpnd.service RSS after connect cycles", f"{rss_kib(daemon.pid) / 1024:.1f} MiB", ""),
        ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vpnd-bench-") as tmp:
        rows = measure(args.rounds, Path(tmp))
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| what | median | note |\n|---|---|---|")
    for what, value, note in rows:
        print(f"| {what} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
