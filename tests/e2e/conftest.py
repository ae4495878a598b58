"""Fixtures for the lab: a throw-away PKI, a real openvpn server in a namespace, the test portal."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.lab.browser import write_browser_script
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import KeyType, LabPKI
from tests.lab.portal import TestPortal
from tests.lab.portal_v2 import TestPortalV2
from tests.lab.require import missing, require_root, require_tool
from tests.lab.systemd import SystemdWorld, python_binds
from tests.lab.systemd import available as systemd_world_available
from tests.lab.vpnd_unit import UnitDaemon, world_files

ProfileFactory = Callable[..., str]


def require_lab() -> None:
    """Skip (fail under CI) unless this process can build network namespaces and run openvpn."""
    require_root("the lab (network namespaces, tun devices)")
    for tool, package in (("openvpn", "openvpn"), ("ip", "iproute2"), ("ping", "iputils-ping")):
        require_tool(tool, package)


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    """A CA with portal, server and client certificates, for the whole session."""
    return LabPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def openvpn_lab(lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenVPNLab]:
    """The openvpn servers (UDP and TCP) in their namespace, started once per session."""
    require_lab()
    with OpenVPNLab(lab_pki, tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@pytest.fixture(scope="session")
def portal_session(lab_pki: LabPKI, openvpn_lab: OpenVPNLab) -> Iterator[TestPortal]:
    """The test portal handing out profiles for `openvpn_lab`, started once per session."""
    with TestPortal(lab_pki, openvpn_lab) as portal:
        yield portal


@pytest.fixture
def portal(portal_session: TestPortal) -> Iterator[TestPortal]:
    """The session's portal with its knobs and records reset before and after each test."""
    portal_session.reset()
    yield portal_session
    portal_session.reset()


@pytest.fixture
def portal_http(lab_pki: LabPKI) -> Iterator[httpx.Client]:
    """An httpx client that trusts the lab CA and ignores proxy settings."""
    context = ssl.create_default_context(cafile=str(lab_pki.ca_path))
    with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def client_profile_factory(lab_pki: LabPKI, openvpn_lab: OpenVPNLab) -> ProfileFactory:
    """Make fresh client profiles for the lab: ``factory(prefer_tcp=False, key_type="ec")``."""
    counter = iter(range(1_000_000))

    def make(
        *, prefer_tcp: bool = False, key_type: KeyType = "ec", common_name: str | None = None
    ) -> str:
        name = common_name or f"profile-{os.getpid()}-{next(counter)}-{key_type}"
        cert_pem, key_pem = lab_pki.issue_client(name, key_type=key_type)
        return openvpn_lab.client_config(cert_pem, key_pem, prefer_tcp=prefer_tcp)

    return make


@pytest.fixture
def client_profile(client_profile_factory: ProfileFactory) -> str:
    """A fresh client profile (UDP first) for the session's lab, with a new EC certificate."""
    return client_profile_factory()


@pytest.fixture(scope="session")
def lab_browser(lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable to put in $BROWSER: it approves the lab portal's authorization pages."""
    return write_browser_script(tmp_path_factory.mktemp("browser"), ca_file=str(lab_pki.ca_path))


@pytest.fixture(scope="session")
def unit_world(lab_pki: LabPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnitDaemon]:
    """A systemd world with vpnd installed as vpnd.service and its system bus up (not vpnd)."""
    reason = systemd_world_available()
    if reason is not None:
        missing(reason)
    world = SystemdWorld(
        tmp_path_factory.mktemp("world"), files=world_files(lab_pki), binds=python_binds()
    )
    with world:
        yield UnitDaemon(world, world.start_system_bus())


@pytest.fixture
def unit_daemon(unit_world: UnitDaemon) -> Iterator[UnitDaemon]:
    """vpnd.service in the world, stopped and without state; left that way afterwards."""
    yield from unit_world.fresh()
    assert unit_world.openvpn_units() == []


@pytest.fixture(scope="session")
def portal_v2_session(lab_pki: LabPKI, openvpn_lab: OpenVPNLab) -> Iterator[TestPortalV2]:
    """The API v2/v1 portal handing out profiles for `openvpn_lab`, started once per session."""
    with TestPortalV2(lab_pki, openvpn_lab) as portal:
        yield portal


@pytest.fixture
def portal_v2(portal_v2_session: TestPortalV2) -> Iterator[TestPortalV2]:
    """The session's API v2/v1 portal with its knobs and records reset before and after."""
    portal_v2_session.reset()
    yield portal_v2_session
    portal_v2_session.reset()
