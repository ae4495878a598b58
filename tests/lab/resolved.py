"""systemd-resolved, or resolvconf, for a `SystemdWorld`, never for the host.

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

Debian's resolvconf (the fallback where resolved does not run) would take
over the host's /etc/resolv.conf as well; a world gets it the same way, with
its own /etc/resolv.conf a link to resolvconf's file in the world's /run.
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


_RESOLVCONF_FILES = {
    "sbin/resolvconf": 0o755,
    "lib/resolvconf/list-records": 0o755,
    "lib/resolvconf/normalize-resolvconf": 0o755,
    "etc/resolvconf/interface-order": 0o644,
    "etc/resolvconf/resolv.conf.d/base": 0o644,
    "etc/resolvconf/resolv.conf.d/head": 0o644,
    "etc/resolvconf/update.d/libc": 0o755,
    "usr/lib/tmpfiles.d/resolvconf.conf": 0o644,
}
RESOLV_CONF_LINK = "../run/resolvconf/resolv.conf"


class ResolvedUnavailable(RuntimeError):
    """A package cannot be had here (no apt, no network, another systemd)."""


def _systemd_version() -> str:
    return subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "systemd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def unpacked(cache: Path, package: str = PACKAGE, version: str | None = None) -> Path:
    """`package` (by default the one matching the host's systemd), downloaded to
    and unpacked in `cache`."""
    if version is None and package == PACKAGE:
        try:
            version = _systemd_version()
        except (OSError, subprocess.CalledProcessError) as error:
            raise ResolvedUnavailable(f"cannot tell the host's systemd version: {error}") from None
    root = cache / f"{package}-{version or 'candidate'}"
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        download = subprocess.run(
            ["apt-get", "download", f"{package}={version}" if version else package],
            cwd=cache,
            capture_output=True,
            text=True,
            check=False,
        )
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise ResolvedUnavailable(
                f"apt-get download {package} failed: {download.stderr.strip()}"
            )
    partial = root.with_name(root.name + ".partial")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], check=True)
    partial.rename(root)
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


def resolvconf_world_files(cache: Path) -> dict[str, str | bytes | WorldFile]:
    """The files to give a world so that it runs Debian's resolvconf (and no resolved);
    link its /etc/resolv.conf to RESOLV_CONF_LINK."""
    root = unpacked(cache, "resolvconf")
    return {
        f"/{path}": WorldFile((root / path).read_bytes(), mode)
        for path, mode in _RESOLVCONF_FILES.items()
    }


def start_resolvconf(world: SystemdWorld) -> None:
    """resolvconf's run-time directory, and updates on, as its boot service does."""
    world.run("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/resolvconf.conf")
    world.run("resolvconf", "--enable-updates")
