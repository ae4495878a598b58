"""Connect latency of vpnd side by side with eduvpn-common and plain openvpn (issue 10).

    make bench-deps     # once: eduvpn-common 5.0.2 in .venv-bench, hashed
    sudo .venv/bin/python -m benchmarks.side_by_side [--rounds N]

One lab (the openvpn server in its namespace, the API v3 portal over TLS on
loopback, a private system bus), and in each round, one after the other:

1. plain `openvpn --config` on a config of the same kind, start → "Initialization
   Sequence Completed" (the baseline, as in run.py);
2. eduvpn-common, the official eduVPN client library, driven in its own venv
   by benchmarks/eduvpn_common_driver.py: `get_config` (over TLS to the
   portal) and then `openvpn --config` on the config it returned, until
   "Initialization Sequence Completed";
3. vpnd: D-Bus `Server1.Connect` → `Connection1.State` = "connected";
4. `vpnctl connect` against the same vpnd, wall time from start to exit.

Each path is logged in once and warmed up once before the rounds. Prints the
medians as a Markdown table, the difference of each over plain openvpn, and
one connect and disconnect of each path as the portal saw it (its TCP
accepts and answers, in ms from the start). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from jeepney.io.blocking import open_dbus_connection
from tests.lab.browser import write_browser_script
from tests.lab.daemon import REPO, VpndProcess, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

from benchmarks.run import (
    find_server,
    logged_in,
    plain_openvpn_connect,
    vpnd_connect_instants,
    wall,
)

BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
DRIVER = Path(__file__).resolve().with_name("eduvpn_common_driver.py")
PROFILE = "employees"
# As vpn-user-portal sends them: eduvpn-common 5.0.2 takes a profile's
# display_name only as a string, not as the language map the lab portal's
# default "employees" profile has (its /info fails to parse).
PROFILES: list[dict[str, Any]] = [
    {
        "profile_id": PROFILE,
        "display_name": "Employees",
        "vpn_proto_list": ["openvpn"],
        "default_gateway": False,
    },
    {
        "profile_id": "guests",
        "display_name": "Guests",
        "vpn_proto_list": ["openvpn"],
        "default_gateway": False,
    },
]


class EduvpnCommon:
    """eduvpn_common_driver.py in .venv-bench, logged in to the portal."""

    def __init__(self, portal: TestPortal, pki: LabPKI, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        browser = write_browser_script(workdir, ca_file=str(pki.ca_path))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
        # The lab CA for the library's Go TLS stack, for this process only.
        env["SSL_CERT_FILE"] = str(pki.ca_path)
        self.log = workdir / "driver.log"
        self._log = self.log.open("w")
        self._process = subprocess.Popen(
            [
                str(BENCH_PYTHON),
                "-I",  # nothing from the project's paths or environment
                str(DRIVER),
                f"--server={portal.base_url}",
                f"--profile={PROFILE}",
                f"--browser={browser}",
                f"--workdir={workdir}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        try:
            self.login = float(self._answer()["login"])
        except BaseException:
            self._process.kill()
            self._process.wait()
            self._log.close()
            raise

    def _stream(self) -> tuple[IO[str], IO[str]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout

    def _answer(self) -> dict[str, Any]:
        _, stdout = self._stream()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"eduvpn-common driver exited: {self.log.read_text()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"eduvpn-common driver: {answer}")
        return answer

    def _ask(self, command: str) -> dict[str, Any]:
        stdin, _ = self._stream()
        stdin.write(command + "\n")
        stdin.flush()
        return self._answer()

    def connect(self) -> dict[str, float]:
        """One connect and disconnect: the driver's "connect" answer."""
        answer = self._ask("connect")
        self._ask("disconnect")
        return {key: float(value) for key, value in answer.items()}

    def close(self) -> None:
        stdin, _ = self._stream()
        try:
            stdin.write("quit\n")
            stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def __enter__(self) -> EduvpnCommon:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PortalClock:
    """When the portal accepted each TCP connection and answered each request.

    Stamped with time.monotonic (CLOCK_MONOTONIC, the same clock in every
    process here). It wraps the lab portal's request handler and its
    server's accept, a benchmark's look inside a test fixture.
    """

    def __init__(self, portal: TestPortal) -> None:
        self.events: list[tuple[float, str]] = []
        handle = portal.handle

        def timed(method: str, target: str, headers: dict[str, str], body: bytes) -> Any:
            try:
                return handle(method, target, headers, body)
            finally:
                self.events.append((time.monotonic(), f"{method} {urlsplit(target).path}"))

        portal.handle = timed  # type: ignore[method-assign]
        server = portal._server
        assert server is not None
        accept = server.get_request

        def accepted() -> tuple[socket.socket, Any]:
            request = accept()
            self.events.append((time.monotonic(), "TCP accept"))
            return request

        server.get_request = accepted  # type: ignore[method-assign]

    def last(self, what: str, after: float, before: float) -> float:
        """When `what` (e.g. "POST /api/v3/connect") last happened in (after, before)."""
        stamps = [t for t, event in self.events if event == what and after < t < before]
        if not stamps:
            raise RuntimeError(f"no {what} between the timestamps")
        return stamps[-1]

    def timeline(self, started: float, marks: dict[str, float], until: float) -> str:
        """The portal's events and `marks` from `started` to `until`, in ms after `started`."""
        events = [(t, what) for t, what in self.events if started <= t <= until]
        events += [(t, what) for what, t in marks.items()]
        return ", ".join(f"{what} +{(t - started) * 1000:.1f}" for t, what in sorted(events))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(samples: list[float]) -> str:
    return f"{ms(statistics.median(samples))} (min {ms(min(samples))}, n={len(samples)})"


def over(samples: list[float], baseline: list[float]) -> str:
    return f"{(statistics.median(samples) - statistics.median(baseline)) * 1000:+.1f} ms"


def measure(rounds: int, workdir: Path, log_level: str = "info") -> list[str]:
    """Run the rounds; returns the report's lines (Markdown)."""
    pki = LabPKI.create(workdir / "pki")
    plain: list[float] = []
    common: dict[str, list[float]] = {"up": [], "get_config": [], "openvpn": []}
    vpnd: dict[str, list[float]] = {"up": [], "config": [], "openvpn": []}
    through_vpnctl: list[float] = []
    timelines: dict[str, str] = {}
    with (
        OpenVPNLab(pki, workdir / "lab") as lab,
        TestPortal(pki, lab, profiles=PROFILES) as portal,
        PrivateSystemBus(workdir / "bus") as bus,
        VpndProcess(
            workdir / "vpnd", bus.env({}), ca_file=pki.ca_path, log_level=log_level
        ),
        EduvpnCommon(portal, pki, workdir / "eduvpn-common") as library,
    ):
        clock = PortalClock(portal)
        env = logged_in(bus.address, portal, pki, workdir)
        connect = ["connect", portal.host, "--profile", PROFILE]
        vpnctl_connect = [sys.executable, "-m", "vpnctl", *connect]
        vpnctl_env = {**os.environ, **env, "PYTHONPATH": str(REPO / "client")}
        with open_dbus_connection(bus="SYSTEM") as conn:
            server_path = find_server(conn, portal.host)

            def disconnect_vpnctl() -> None:
                result = vpnctl(["disconnect"], env)
                if result.returncode != 0:
                    raise RuntimeError(result.stderr)

            # Warm-up, untimed: first TLS connections, imports, page cache.
            plain_openvpn_connect(lab, pki, workdir)
            library.connect()
            vpnd_connect_instants(conn, server_path, PROFILE)
            wall(vpnctl_connect, vpnctl_env)
            disconnect_vpnctl()

            for i in range(rounds):
                last = i == rounds - 1
                plain.append(plain_openvpn_connect(lab, pki, workdir))

                answer = library.connect()
                for key in common:
                    common[key].append(answer[key])
                if last:
                    started = answer["started_at"]
                    marks = {
                        "get_config returned": answer["got_config_at"],
                        "tunnel up": started + answer["up"],
                    }
                    timelines["eduvpn-common"] = clock.timeline(started, marks, time.monotonic())

                started, connected = vpnd_connect_instants(conn, server_path, PROFILE)
                answered = clock.last("POST /api/v3/connect", started, connected)
                vpnd["up"].append(connected - started)
                vpnd["config"].append(answered - started)
                vpnd["openvpn"].append(connected - answered)
                if last:
                    marks = {"connected": connected}
                    timelines["vpnd"] = clock.timeline(started, marks, time.monotonic())

                started = time.monotonic()
                through_vpnctl.append(wall(vpnctl_connect, vpnctl_env))
                exited = time.monotonic()
                disconnect_vpnctl()
                if last:
                    marks = {"vpnctl connect exited": exited}
                    timelines["vpnctl"] = clock.timeline(started, marks, time.monotonic())

    vpnd_added = statistics.median(vpnd["up"]) - statistics.median(plain)
    common_added = statistics.median(common["up"]) - statistics.median(plain)
    verdict = "met" if vpnd_added <= common_added else "not met"
    return [
        "| path | time to tunnel up (median) | over plain openvpn |",
        "|---|---|---|",
        f"| plain `openvpn --config` | {summary(plain)} | baseline |",
        f"| eduvpn-common `get_config` + `openvpn --config` | {summary(common['up'])} "
        f"| {over(common['up'], plain)} |",
        f"| … `get_config` returned | {summary(common['get_config'])} | |",
        f"| … then openvpn | {summary(common['openvpn'])} | |",
        f"| vpnd D-Bus Connect → connected | {summary(vpnd['up'])} | {over(vpnd['up'], plain)} |",
        f"| … portal answered /connect | {summary(vpnd['config'])} | |",
        f"| … then openvpn (and vpnd) | {summary(vpnd['openvpn'])} | |",
        f"| `vpnctl connect` (start → exit) | {summary(through_vpnctl)} "
        f"| {over(through_vpnctl, plain)} |",
        "",
        f"Target, vpnd over plain ≤ eduvpn-common over plain: {ms(vpnd_added)} against "
        f"{ms(common_added)}, {verdict}.",
        "",
        "One connect and disconnect of the last round, in ms from its start (the portal's",
        "TCP accepts and answers, and the client's milestones):",
        "",
        *(f"- {path}: {line}" for path, line in timelines.items()),
    ]


def openvpn_version() -> str:
    result = subprocess.run(["openvpn", "--version"], capture_output=True, text=True, check=False)
    return (result.stdout.splitlines() or ["openvpn ?"])[0].split(" x86_64")[0]


def eduvpn_common_version() -> str:
    result = subprocess.run(
        [str(BENCH_PYTHON), "-I", "-c", "import eduvpn_common; print(eduvpn_common.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR and keep it, with vpnd at debug level: its log (vpnd/vpnd.log) has"
        " each connect's steps (debug logging itself slows vpnd down a little)",
    )
    args = parser.parse_args()
    if not BENCH_PYTHON.exists():
        print(f"{BENCH_PYTHON} is missing: run `make bench-deps` first", file=sys.stderr)
        return 2
    if args.keep is not None:
        # Kept to read the steps of each connect, which vpnd logs at debug level.
        lines = measure(args.rounds, args.keep, log_level="debug")
    else:
        with tempfile.TemporaryDirectory(prefix="vpnd-bench-") as tmp:
            lines = measure(args.rounds, Path(tmp))
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"machine: {platform.machine()}, nproc {len(os.sched_getaffinity(0))}, kernel {platform.release()}, "
        f"Python {platform.python_version()}, {openvpn_version()}, "
        f"eduvpn-common {eduvpn_common_version()}"
    )
    print(f"command: .venv/bin/python -m benchmarks.side_by_side --rounds {args.rounds}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
