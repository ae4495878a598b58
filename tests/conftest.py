"""Fixtures shared by bus and end-to-end tests: a private system bus, a real vpnd, a user's environment.

`lab_pki` is defined here for the bus tests; tests/e2e overrides it with the
one its openvpn lab uses, and the fixtures below follow the override.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.browser import write_browser_script
from tests.lab.daemon import VpndProcess
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI


@pytest.fixture(scope="session")
def lab_pki(tmp_path_factory: pytest.TempPathFactory) -> LabPKI:
    return LabPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def private_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateSystemBus]:
    with PrivateSystemBus(tmp_path_factory.mktemp("bus")) as bus:
        yield bus


@pytest.fixture
def vpnd(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> Iterator[VpndProcess]:
    """A fresh vpnd (empty state) on the private bus, trusting the lab CA."""
    daemon = VpndProcess(tmp_path / "vpnd", private_bus.env({}), ca_file=lab_pki.ca_path)
    daemon.start()
    yield daemon
    status = daemon.stop()
    assert status == 0, daemon.log()
    assert "Traceback" not in daemon.log(), daemon.log()


@pytest.fixture
def client_env(tmp_path: Path, private_bus: PrivateSystemBus, lab_pki: LabPKI) -> dict[str, str]:
    """The environment of a person running vpnctl: the bus, a browser, a language."""
    browser = write_browser_script(tmp_path, ca_file=str(lab_pki.ca_path))
    return {
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
        "BROWSER": str(browser),
        "LANG": "C.UTF-8",
        "LANGUAGE": "",
        "LC_ALL": "",
        "LC_MESSAGES": "",
    }
