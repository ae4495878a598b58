"""`make demo`: the whole product on one machine, on an embedded default.

Builds a throw-away lab (a CA, a real openvpn server in its own network
namespace, an eduVPN API v3 portal on loopback TLS), starts vpnd on a private
system bus with the project's own policy, and drives it with vpnctl the way a
person would: add, login (a scripted browser approves in the portal), list
profiles, connect, ping through the tunnel, status, disconnect, remove.
Everything is torn down at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.lab.browser import write_browser_script
from tests.lab.daemon import VpndProcess, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

BOLD = "\033[1m" if sys.stdout.isatty() else ""
PLAIN = "\033[0m" if sys.stdout.isatty() else ""


class DemoFailed(Exception):
    """A step of the demo did not do what it should."""


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{PLAIN}", flush=True)


def step(args: Sequence[str], env: Mapping[str, str], *, timeout: float = 90) -> str:
    """Run one vpnctl command, show it and its output, fail the demo if it fails."""
    print(f"$ vpnctl {shlex.join(args)}", flush=True)
    result = vpnctl(args, env, timeout=timeout)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output, flush=True)
    if result.returncode != 0:
        raise DemoFailed(f"`vpnctl {shlex.join(args)}` exited with {result.returncode}")
    return result.stdout


def shell(args: Sequence[str]) -> None:
    """Run and show a plain command."""
    print(f"$ {shlex.join(args)}", flush=True)
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    print((result.stdout + result.stderr).rstrip(), flush=True)
    if result.returncode != 0:
        raise DemoFailed(f"`{shlex.join(args)}` exited with {result.returncode}")


def run(workdir: Path) -> None:
    """The demo itself."""
    say("Building the lab: a CA, an openvpn server in a network namespace, an API v3 portal")
    pki = LabPKI.create(workdir / "pki")
    with (
        OpenVPNLab(pki, workdir / "lab") as lab,
        TestPortal(pki, lab) as portal,
        PrivateSystemBus(workdir / "bus") as bus,
    ):
        print(f"portal:         {portal.base_url}")
        print(f"openvpn server: {lab.server_address} (udp {lab.udp_port}, tcp {lab.tcp_port})")
        print(f"system bus:     {bus.address} (private, with data/dbus/org.vpnd.Daemon.conf)")

        say("Starting vpnd (it trusts the lab CA through ca_file)")
        daemon = VpndProcess(workdir / "vpnd", bus.env({}), ca_file=pki.ca_path)
        with daemon:
            print(
                f"vpnd is ready (pid {daemon.pid}, READY=1 after {daemon.ready_after * 1000:.0f} ms)"
            )
            env = {
                "DBUS_SYSTEM_BUS_ADDRESS": bus.address,
                "BROWSER": str(write_browser_script(workdir, ca_file=str(pki.ca_path))),
                "LANG": os.environ.get("LANG", "C.UTF-8"),
            }
            say("Adding the server and logging in (a scripted browser approves in the portal)")
            step(["add", portal.base_url], env)
            step(["login", portal.host], env)
            step(["list"], env)

            say("Profiles, named in the user's language")
            step(["profiles", portal.host], env)

            say("Connecting with a real openvpn")
            step(["connect", portal.host, "--profile", "employees"], env)
            step(["status"], env)

            say("Traffic through the tunnel")
            shell(["ping", "-c", "3", "-W", "2", lab.tunnel_gateway_udp])
            step(["status"], env)

            say("Disconnecting and forgetting the server")
            step(["disconnect"], env)
            step(["status"], env)
            step(["remove", portal.host], env)
            step(["list"], env)
        say("Done: vpnd stopped, lab torn down")


def main() -> int:
    """Entry point of `make demo`."""
    if os.geteuid() != 0:
        print(
            "make demo needs root: it creates a network namespace and a tun device", file=sys.stderr
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vpnd-demo-"))
    try:
        run(workdir)
    except DemoFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        log = workdir / "vpnd" / "vpnd.log"
        if log.exists():
            print(f"--- the daemon's log ---\n{log.read_text(errors='replace')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
