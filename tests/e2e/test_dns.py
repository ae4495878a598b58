"""DNS that follows the tunnel, against the real systemd-resolved.

vpnd runs as vpnd.service in a systemd world (tests/lab/vpnd_unit.py) that
also runs systemd-resolved, unpacked from its Debian package into the
world only (tests/lab/resolved.py). An openvpn lab server of its own pushes
`dhcp-option DNS/DNS6/DOMAIN`. What resolved holds for the tunnel's link is
read with `resolvectl` inside the world: set once the tunnel is up, gone
after a disconnect, and after the daemon was killed and came back. A link
that a killed run left DNS on and that is still there is reverted by the
next start.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.test_systemd import connected
from tests.lab import resolved
from tests.lab.daemon import ok, status, vpnctl
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import DEFAULT_PROFILES, TestPortal
from tests.lab.require import missing
from tests.lab.systemd import SystemdWorld, WorldFile, python_binds
from tests.lab.systemd import available as systemd_world_available
from tests.lab.vpnd_unit import UNIT, UnitDaemon, world_files

DNS4 = "192.0.2.53"
DNS6 = "2001:db8::53"
DOMAIN = "dns-lab.example"
PUSHED = (
    f'push "dhcp-option DNS {DNS4}"',
    f'push "dhcp-option DNS6 {DNS6}"',
    f'push "dhcp-option DOMAIN {DOMAIN}"',
)
RECORD = "/run/vpnd/dns.json"
# What /info names for the profile, once vpnd has listed the profiles.
PROFILE_DOMAIN = "profile-lab.example"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")


@pytest.fixture(scope="module", autouse=True)
def host_resolver_untouched() -> Iterator[None]:
    """Whatever the worlds do, the host's resolver configuration stays as it was."""
    before = HOST_RESOLV_CONF.read_bytes(), os.path.islink(HOST_RESOLV_CONF)
    yield
    assert (HOST_RESOLV_CONF.read_bytes(), os.path.islink(HOST_RESOLV_CONF)) == before
    assert not Path("/run/resolvconf").exists()


@pytest.fixture(scope="module")
def dns_lab(lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenVPNLab]:
    """An openvpn lab whose servers push DNS servers and a domain."""
    from tests.e2e.conftest import require_lab

    require_lab()
    with OpenVPNLab(
        lab_pki, tmp_path_factory.mktemp("dnslab"), name="vpnd-dns", server_lines=PUSHED
    ) as lab:
        yield lab


@pytest.fixture(scope="module")
def dns_portal(lab_pki: LabPKI, dns_lab: OpenVPNLab) -> Iterator[TestPortal]:
    profiles = [{**p, "dns_search_domain_list": [PROFILE_DOMAIN]} for p in DEFAULT_PROFILES]
    # A profile that, by /info, carries all traffic (the lab pushes no
    # redirect-gateway all the same: the host keeps its routes).
    profiles.append(
        {
            "profile_id": "everything",
            "display_name": "All traffic",
            "vpn_proto_list": ["openvpn"],
            "default_gateway": True,
        }
    )
    with TestPortal(lab_pki, dns_lab, profiles=profiles) as portal:
        yield portal


def resolver_world(
    lab_pki: LabPKI,
    tmp_path_factory: pytest.TempPathFactory,
    resolver_files: Callable[[Path], dict[str, str | bytes | WorldFile]],
    start_resolver: Callable[[SystemdWorld], None],
    symlinks: dict[str, str] | None = None,
) -> Iterator[UnitDaemon]:
    """A world with vpnd.service and a resolver of its own: `resolver_files(cache)`
    puts it in the world, `start_resolver(world)` runs it."""
    reason = systemd_world_available()
    if reason is not None:
        missing(reason)
    try:
        extra = resolver_files(tmp_path_factory.mktemp("resolver"))
    except resolved.ResolvedUnavailable as error:
        missing(str(error))
    world = SystemdWorld(
        tmp_path_factory.mktemp("world"),
        files=world_files(lab_pki) | extra,
        symlinks=symlinks,
        binds=python_binds(),
    )
    with world:
        bus = world.start_system_bus()
        start_resolver(world)
        yield UnitDaemon(world, bus)


@pytest.fixture(scope="module")
def dns_world(lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnitDaemon]:
    """A world with vpnd.service and a running systemd-resolved of its own."""
    yield from resolver_world(lab_pki, tmp_path_factory, resolved.world_files, resolved.start)


@pytest.fixture
def daemon(dns_world: UnitDaemon) -> Iterator[UnitDaemon]:
    yield from dns_world.fresh()


def tunnel_link(address: str) -> str:
    """The host's link that holds `address`."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "to", address],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out, f"no link holds {address}"
    return out.split()[1]


def record_exists(daemon: UnitDaemon) -> bool:
    return daemon.world.host_path(RECORD).exists()


def all_dns(world: SystemdWorld) -> str:
    return world.run("resolvectl", "dns", check=False).stdout


def test_pushed_dns_is_on_the_link_while_up_and_gone_after_disconnect(
    daemon: UnitDaemon, dns_portal: TestPortal, client_env: dict[str, str]
) -> None:
    env = connected(daemon, dns_portal, client_env)
    now = status(env)
    assert now["state"] == "connected"
    link = tunnel_link(now["tunnel_ip"])
    daemon.wait_for(lambda: DNS4 in resolved.link_dns(daemon.world, link)[0])
    servers, domains = resolved.link_dns(daemon.world, link)
    assert DNS4 in servers and DNS6 in servers, servers
    assert DOMAIN in domains, domains
    # A split tunnel with a domain: only names under it go to the tunnel.
    assert "~." not in domains
    daemon.wait_for(lambda: status(env)["dns_servers"] != [])
    now = status(env)
    assert now["dns_servers"] == [DNS4, DNS6] and now["dns_domains"] == [DOMAIN]
    human = ok(vpnctl(["status"], env))
    assert f"{DNS4} {DNS6} {DOMAIN}" in human
    # The profile's search domains from /info join once vpnd has read them.
    ok(vpnctl(["profiles", dns_portal.host], env))
    ok(vpnctl(["disconnect"], env))
    ok(vpnctl(["connect", dns_portal.host, "--profile", "employees"], env))
    link = tunnel_link(status(env)["tunnel_ip"])
    daemon.wait_for(lambda: PROFILE_DOMAIN in resolved.link_dns(daemon.world, link)[1])
    daemon.wait_for(lambda: status(env)["dns_domains"] == [DOMAIN, PROFILE_DOMAIN])
    record = json.loads(daemon.world.read_file(RECORD))
    assert record["link"] == link and record["backend"] == "systemd-resolved"
    daemon.wait_for(lambda: f"DNS on {link} through systemd-resolved" in daemon.log())

    ok(vpnctl(["disconnect"], env))
    assert DNS4 not in all_dns(daemon.world)
    assert DNS4 not in resolved.link_dns(daemon.world, link)[0]
    assert not record_exists(daemon)
    daemon.wait_for(lambda: f"took back the DNS on {link}" in daemon.log())
    assert status(env)["dns_servers"] == []


def test_a_killed_daemon_leaves_no_dns_behind(
    daemon: UnitDaemon, dns_portal: TestPortal, client_env: dict[str, str]
) -> None:
    env = connected(daemon, dns_portal, client_env)
    daemon.wait_for(lambda: DNS4 in all_dns(daemon.world))
    pid = daemon.pid
    daemon.world.systemctl("kill", "--signal=KILL", UNIT)
    daemon.wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
    # Restart=on-failure brings the daemon back; it finds the record and clears up.
    daemon.wait_for(daemon.active, timeout=15)
    daemon.wait_for(lambda: not record_exists(daemon), timeout=15)
    assert DNS4 not in all_dns(daemon.world)
    daemon.wait_for(lambda: "earlier run" in daemon.log())  # the journal may lag
    assert status(env)["state"] == "disconnected"


def test_a_start_reverts_dns_a_killed_run_left_on_a_live_link(
    daemon: UnitDaemon, dns_lab: OpenVPNLab
) -> None:
    # A link that outlived the run that set its DNS (as a persistent tun would).
    link = f"vpnddns{dns_lab.slot}"
    subprocess.run(["ip", "tuntap", "add", "dev", link, "mode", "tun"], check=True)
    try:
        subprocess.run(["ip", "link", "set", link, "up"], check=True)
        world = daemon.world
        world.run("resolvectl", "dns", link, "192.0.2.99")
        world.run("resolvectl", "domain", link, "~.")
        assert "192.0.2.99" in resolved.link_dns(world, link)[0]
        index = int(Path(f"/sys/class/net/{link}/ifindex").read_text())
        world.write_file(
            RECORD,
            json.dumps({"backend": "systemd-resolved", "link": link, "ifindex": index}),
            mode=0o600,
        )
        world.systemctl("start", UNIT)
        assert "192.0.2.99" not in resolved.link_dns(world, link)[0]
        assert "~." not in resolved.link_dns(world, link)[1]
        said = f"took back the DNS an earlier run left on {link}"
        daemon.wait_for(lambda: said in daemon.log())  # the journal may lag
        assert not record_exists(daemon)
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)


# --- resolvconf, where resolved does not run ------------------------------------


@pytest.fixture(scope="module")
def resolvconf_world(
    lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UnitDaemon]:
    """A world with vpnd.service and Debian's resolvconf, its /etc/resolv.conf resolvconf's."""
    yield from resolver_world(
        lab_pki,
        tmp_path_factory,
        resolved.resolvconf_world_files,
        resolved.start_resolvconf,
        symlinks={"/etc/resolv.conf": resolved.RESOLV_CONF_LINK},
    )


@pytest.fixture
def rc_daemon(resolvconf_world: UnitDaemon) -> Iterator[UnitDaemon]:
    yield from resolvconf_world.fresh()


def test_resolvconf_gets_the_dns_and_loses_it_on_disconnect_and_after_a_kill(
    rc_daemon: UnitDaemon, dns_portal: TestPortal, client_env: dict[str, str]
) -> None:
    world = rc_daemon.world
    before = world.read_file("/etc/resolv.conf")
    assert DNS4 not in before
    env = connected(rc_daemon, dns_portal, client_env)
    link = tunnel_link(status(env)["tunnel_ip"])
    rc_daemon.wait_for(lambda: f"nameserver {DNS4}" in world.read_file("/etc/resolv.conf"))
    text = world.read_file("/etc/resolv.conf")
    assert f"search {DOMAIN}" in text
    assert DNS6 in text  # resolvconf takes IPv6 servers too
    assert world.read_file(f"/run/resolvconf/interface/{link}.vpnd")
    rc_daemon.wait_for(lambda: f"DNS on {link} through resolvconf" in rc_daemon.log())
    assert json.loads(world.read_file(RECORD))["backend"] == "resolvconf"

    ok(vpnctl(["disconnect"], env))
    assert world.read_file("/etc/resolv.conf") == before
    assert not record_exists(rc_daemon)

    ok(vpnctl(["connect", dns_portal.host, "--profile", "employees"], env))
    rc_daemon.wait_for(lambda: DNS4 in world.read_file("/etc/resolv.conf"))
    pid = rc_daemon.pid
    world.systemctl("kill", "--signal=KILL", UNIT)
    rc_daemon.wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
    rc_daemon.wait_for(rc_daemon.active, timeout=15)
    # The entry outlives the link: the restarted daemon takes it back.
    rc_daemon.wait_for(lambda: not record_exists(rc_daemon), timeout=15)
    assert world.read_file("/etc/resolv.conf") == before
    said = f"took back the DNS an earlier run left on {link}"
    rc_daemon.wait_for(lambda: said in rc_daemon.log())  # the journal may lag


def test_a_full_tunnel_profile_takes_every_name(
    daemon: UnitDaemon, dns_portal: TestPortal, client_env: dict[str, str]
) -> None:
    env = daemon.env(client_env)
    ok(vpnctl(["add", dns_portal.base_url], env))
    ok(vpnctl(["login", dns_portal.host], env))
    ok(vpnctl(["profiles", dns_portal.host], env))  # vpnd learns default_gateway here
    ok(vpnctl(["connect", dns_portal.host, "--profile", "everything"], env))
    link = tunnel_link(status(env)["tunnel_ip"])
    daemon.wait_for(lambda: "~." in resolved.link_dns(daemon.world, link)[1])
    assert DOMAIN in resolved.link_dns(daemon.world, link)[1]
    route = daemon.world.run("resolvectl", "default-route", link).stdout
    assert route.strip().endswith("yes"), route
    daemon.wait_for(lambda: status(env)["dns_domains"] == [DOMAIN, "~."])
    ok(vpnctl(["disconnect"], env))
    assert DNS4 not in all_dns(daemon.world)
