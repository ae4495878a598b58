"""systemd-resolved for a `SystemdWorld`, never for the host.

Installing Debian's systemd-resolved package replaces the machine's
/etc/resolv.conf with resolved's stub, which breaks name resolution on a
host where resolved cannot run (a container, a CI machine). So the package
is only downloaded (`apt-get download`, the version of the host's own
systemd, whose private library it needs) and unpacked; its program, unit,
bus policy and `resolvectl` go into the world's overlay as files. In the
world resolved listens on nothing: no stub listener on 127.0.0.53 (the
world shares the host's network, and two worlds would fight over the
port), no LLMNR, no mDNS. It only keeps per-link settings, which is what
vpnd sets.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.lab.systemd import SystemdWorld, WorldFile

PACKAGE = "systemd-resolved"
UNIT = "systemd-resolved.service"
_FILES = {
    "lib/systemd/systemd-resolved": 0o755,
    "usr/bin/resolvectl": 0o755,
    "lib/systemd/system/systemd-resolved.service": 0o644,
    "usr/share/dbus-1/system.d/org.freedesktop.resolve1.conf": 0o644,
    "usr/lib/sysusers.d/systemd-resolve.conf": 0o644,
}
_CONFIG = """\
# The lab's resolved keeps link settings and listens on nothing.
[Resolve]
DNSStubListener=no
LLMNR=no
MulticastDNS=no
"""


class ResolvedUnavailable(RuntimeError):
    """The package cannot be had here (no apt, no network, another systemd)."""


def _systemd_version() -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "systemd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def unpacked(cache: Path) -> Path:
    """The package matching the host's systemd, downloaded to and unpacked in `cache`."""
    try:
        version = _systemd_version()
    except (OSError, subprocess.CalledProcessError) as error:
        raise ResolvedUnavailable(f"cannot tell the host's systemd version: {error}") from None
    root = cache / f"{PACKAGE}-{version}"
    if (root / next(iter(_FILES))).exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        download = subprocess.run(
            ["apt-get", "download", f"{PACKAGE}={version}"],
            cwd=cache,
            capture_output=True,
            text=True,
            check=False,
        )
        debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise ResolvedUnavailable(
                f"apt-get download {PACKAGE}={version} failed: {download.stderr.strip()}"
            )
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root


def world_files(cache: Path) -> dict[str, str | bytes | WorldFile]:
    """The files to give a world so that it can run systemd-resolved."""
    root = unpacked(cache)
    files: dict[str, str | bytes | WorldFile] = {
        f"/{path}": WorldFile((root / path).read_bytes(), mode) for path, mode in _FILES.items()
    }
    files["/etc/systemd/resolved.conf.d/lab.conf"] = _CONFIG
    return files


def start(world: SystemdWorld) -> None:
    """Create resolved's user in the world and start it."""
    world.run("systemd-sysusers", "/usr/lib/sysusers.d/systemd-resolve.conf")
    world.systemctl("daemon-reload")
    world.systemctl("start", UNIT)


def link_dns(world: SystemdWorld, link: str) -> tuple[str, str]:
    """`resolvectl dns LINK` and `resolvectl domain LINK` in the world ("" if the link is gone)."""
    dns = world.run("resolvectl", "dns", link, check=False)
    domain = world.run("resolvectl", "domain", link, check=False)
    return (dns.stdout if dns.returncode == 0 else ""), (
        domain.stdout if domain.returncode == 0 else ""
    )
