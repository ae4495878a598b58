"""vpnd under a flood of readers while its owner connects and disconnects (issue 8).

    sudo .venv/bin/python -m benchmarks.flood [--rounds 100] [--readers 50] [--watchers 5]

`--readers` unprivileged bus connections (as `nobody`, ten per process, one
thread each) call Properties.Get(ActiveConnection) and ListServers in a
loop; `--watchers` connections of the owner (root) do the same and also
count the signals vpnd sends them. Meanwhile the owner connects and
disconnects `--rounds` times over D-Bus (a real openvpn in the lab's network
namespaces). Reported, in one run:

- failed calls other than org.freedesktop.DBus.Error.LimitsExceeded (the
  named refusal past vpnd's limit of calls in flight per connection), and
  how many calls were so refused;
- failed connects, and connect time under load against idle (same run);
- Get(ActiveConnection) latency p50/p99 as the readers see it;
- vpnd's open fds, RSS and threads before and after (asyncio tasks are not
  visible from outside; a leak of them shows in RSS);
- whether vpnd ever lost the bus.

Figures, not pass/fail: the targets are p99 < 20 ms and connect under load
≤ 2× idle. Needs root, openvpn and network namespaces, like benchmarks.run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jeepney.io.blocking import open_dbus_connection
from tests.lab.daemon import VpndProcess
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

from benchmarks.run import find_server, logged_in, median_ms, rss_kib, vpnd_connect

NOBODY = 65534
PER_PROCESS = 10

# One process of reader threads; runs until stdin closes, then prints a JSON
# summary. argv: number of threads, seconds each waits after its pair of calls.
READERS = r"""
import collections, json, sys, threading, time
from jeepney import DBusAddress, HeaderFields, MatchRule, MessageType, message_bus, new_method_call
from jeepney.io.blocking import open_dbus_connection

ROOT = "/org/vpnd/Daemon"
GET = new_method_call(DBusAddress(ROOT, "org.vpnd.Daemon", "org.freedesktop.DBus.Properties"),
                      "Get", "ss", ("org.vpnd.Manager1", "ActiveConnection"))
LIST = new_method_call(DBusAddress(ROOT, "org.vpnd.Daemon", "org.vpnd.Manager1"), "ListServers")
stop = threading.Event()
lock = threading.Lock()
outcomes = collections.Counter()
latencies = []
signals = collections.Counter()

def reader():
    conn = open_dbus_connection(bus="SYSTEM")
    mine, seen, got = [], collections.Counter(), collections.Counter()
    # Matched here by header, where the sender is vpnd's unique name; the
    # bus daemon matches AddMatch's well-known name itself.
    with conn.filter(MatchRule(type="signal"), bufsize=100000) as queue:
        conn.send_and_get_reply(LIST, timeout=30)
        conn.send_and_get_reply(message_bus.AddMatch(
            MatchRule(type="signal", sender="org.vpnd.Daemon")), timeout=30)
        while not stop.is_set():
            for message, timed in ((GET, True), (LIST, False)):
                started = time.monotonic()
                try:
                    reply = conn.send_and_get_reply(message, timeout=30)
                except Exception as exc:
                    got["exception " + type(exc).__name__] += 1
                    continue
                if timed:
                    mine.append(time.monotonic() - started)
                if reply.header.message_type is MessageType.error:
                    got[reply.header.fields[HeaderFields.error_name]] += 1
                else:
                    got["ok"] += 1
            if pause:
                stop.wait(pause)
            while queue:
                fields = queue.popleft().header.fields
                if fields.get(HeaderFields.sender) != "org.freedesktop.DBus":
                    seen[fields.get(HeaderFields.member)] += 1
    conn.close()
    with lock:
        outcomes.update(got)
        latencies.extend(mine)
        signals.update(seen)

pause = float(sys.argv[2])
threads = [threading.Thread(target=reader) for _ in range(int(sys.argv[1]))]
for thread in threads:
    thread.start()
print("started", flush=True)
sys.stdin.read()
stop.set()
for thread in threads:
    thread.join()
print(json.dumps({"outcomes": outcomes, "latencies": latencies, "signals": signals}))
"""


def start_readers(
    bus: PrivateSystemBus, count: int, uid: int | None, pause: float = 0.0
) -> list[subprocess.Popen[str]]:
    processes = []
    while count > 0:
        threads = min(PER_PROCESS, count)
        count -= threads
        command = [sys.executable, "-c", READERS, str(threads), str(pause)]
        if uid is not None:
            command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
        process = subprocess.Popen(
            command, env=bus.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != "started":
            raise RuntimeError("a reader process did not start")
        processes.append(process)
    return processes


def stop_readers(processes: list[subprocess.Popen[str]]) -> dict[str, Any]:
    total: dict[str, Any] = {"outcomes": {}, "latencies": [], "signals": {}}
    for process in processes:
        out, _err = process.communicate(timeout=120)
        summary = json.loads(out.strip().splitlines()[-1])
        for key in ("outcomes", "signals"):
            for name, n in summary[key].items():
                total[key][name] = total[key].get(name, 0) + n
        total["latencies"] += summary["latencies"]
    return total


def vitals(pid: int) -> dict[str, int]:
    threads = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_kib": rss_kib(pid),
        "threads": threads,
        "cpu_ticks": cpu_ticks,
    }


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(
    rounds: int, readers: int, watchers: int, workdir: Path, pause: float = 0.0
) -> list[tuple[str, str, str]]:
    pki = LabPKI.create(workdir / "pki")
    with (
        OpenVPNLab(pki, workdir / "lab") as lab,
        TestPortal(pki, lab) as portal,
        PrivateSystemBus(workdir / "bus") as bus,
        VpndProcess(workdir / "vpnd", bus.env({}), ca_file=pki.ca_path, log_level="info") as daemon,
    ):
        logged_in(bus.address, portal, pki, workdir)
        with open_dbus_connection(bus="SYSTEM") as conn:
            server_path = find_server(conn, portal.host)
            vpnd_connect(conn, server_path)  # warm-up: first use loads httpx and TLS
            idle_rounds = max(3, rounds // 10)
            idle = [vpnd_connect(conn, server_path) for _ in range(idle_rounds)]
            before = vitals(daemon.pid)

            flood = start_readers(bus, readers, NOBODY, pause) + start_readers(
                bus, watchers, None, pause
            )
            loaded: list[float] = []
            failed_connects: list[str] = []
            started = time.monotonic()
            try:
                for _ in range(rounds):
                    try:
                        loaded.append(vpnd_connect(conn, server_path))
                    except Exception as exc:
                        failed_connects.append(f"{type(exc).__name__}: {exc}")
            finally:
                elapsed = time.monotonic() - started
                results = stop_readers(flood)
            after = vitals(daemon.pid)
            # The state read afterwards is the truth: no connection is up.
            assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
        lost = daemon.log().count("lost the system bus connection")

    outcomes: dict[str, int] = results["outcomes"]
    limited = outcomes.get("org.freedesktop.DBus.Error.LimitsExceeded", 0)
    failed = sum(
        n
        for name, n in outcomes.items()
        if name not in ("ok", "org.freedesktop.DBus.Error.LimitsExceeded")
    )
    calls = sum(outcomes.values())
    latencies: list[float] = results["latencies"]
    rows = [
        ("readers / watchers (bus connections)", f"{readers} as nobody / {watchers} as root", ""),
        ("calls answered during the loop", f"{calls} ({calls / elapsed:.0f}/s)", ""),
        (
            "failed calls (not LimitsExceeded)",
            str(failed),
            "target 0" + (f": {outcomes}" if failed else ""),
        ),
        ("calls refused with LimitsExceeded", str(limited), ""),
        (
            "signals received by the watchers",
            str(sum(results["signals"].values())),
            json.dumps(results["signals"]),
        ),
        (
            "Get(ActiveConnection) p50 / p99",
            f"{percentile(latencies, 0.5) * 1000:.1f} ms / {percentile(latencies, 0.99) * 1000:.1f} ms",
            "target p99 < 20 ms",
        ),
        ("connect → connected, idle", median_ms(idle), "baseline (same run)"),
        (
            "connect → connected, under load",
            median_ms(loaded) if loaded else "none",
            "target ≤ 2× idle",
        ),
        ("failed connects", f"{len(failed_connects)} of {rounds}", "; ".join(failed_connects[:3])),
        ("vpnd fds before → after", f"{before['fds']} → {after['fds']}", ""),
        (
            "vpnd RSS before → after",
            f"{before['rss_kib'] / 1024:.1f} → {after['rss_kib'] / 1024:.1f} MiB",
            "",
        ),
        ("vpnd threads before → after", f"{before['threads']} → {after['threads']}", ""),
        (
            "vpnd CPU during the loop",
            f"{(after['cpu_ticks'] - before['cpu_ticks']) / os.sysconf('SC_CLK_TCK') / elapsed * 100:.0f} % of one core",
            "",
        ),
        ("times vpnd lost the bus", str(lost), "target 0"),
    ]
    if loaded:
        ratio = statistics.median(loaded) / statistics.median(idle)
        rows.insert(9, ("connect under load / idle (medians)", f"{ratio:.2f}×", "target ≤ 2×"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=100, help="connect/disconnect cycles")
    parser.add_argument("--readers", type=int, default=50, help="unprivileged reader connections")
    parser.add_argument("--watchers", type=int, default=5, help="the owner's connections")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="what each reader waits after its two calls (default 0: as fast as it can, which"
        " measures the readers' own queueing as much as vpnd)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vpnd-flood-") as tmp:
        rows = measure(args.rounds, args.readers, args.watchers, Path(tmp), args.pause)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| what | figure | note |\n|---|---|---|")
    for what, value, note in rows:
        print(f"| {what} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
