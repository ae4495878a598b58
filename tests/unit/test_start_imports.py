"""What a start loads, and the server families made at their first use.

The daemon reaches READY sooner and stays smaller when the modules a start
does not need (the tunnel and its management protocol, the logins and
providers of each server family, HTTP, the network watch) are loaded at
their first use. These tests fail when a module-level import brings one of
them back into the start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vpnd.config import Settings
from vpnd.http import HttpClient
from vpnd.providers import default_families
from vpnd.store.store import Store

# Loaded at the first connect, login or HTTP request, or after READY.
NOT_AT_START = (
    "vpnd.tunnel.openvpn",
    "vpnd.protocols.management",
    "vpnd.protocols.credentials",
    "vpnd.protocols.dns",
    "vpnd.protocols.ovpnconfig",
    "vpnd.protocols.pksign",
    "vpnd.protocols.netlink",
    "vpnd.netwatch",
    "vpnd.auth.oauth_code",
    "vpnd.auth.implicit",
    "vpnd.auth.access_server",
    "vpnd.providers.eduvpn_v3",
    "vpnd.providers.eduvpn_v2",
    "vpnd.providers.eduvpn_v1",
    "vpnd.providers.access_server",
    "vpnd.providers.secure_internet",
    "httpx",
    "cryptography",
)

# Runs the daemon's start up to the bus, which is not there: every import
# `run()` makes before it connects has happened when it gives up.
_START_WITHOUT_A_BUS = """
import asyncio, json, sys
from pathlib import Path
from vpnd import config, service
root = Path(sys.argv[1])
settings = config.Settings(
    state_dir=root / "state", runtime_dir=root / "run", openvpn_launcher="child", discovery_url=""
)
status = asyncio.run(service.run(settings))
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


def test_a_start_loads_no_tunnel_login_provider_or_http_module(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-bus'}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "daemon"),
    }
    out = subprocess.run(
        [sys.executable, "-c", _START_WITHOUT_A_BUS, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["status"] == 1, out.stderr  # it stopped at the missing bus
    assert "cannot connect to the system bus" in out.stderr
    modules = set(result["modules"])
    assert "vpnd.manager" in modules and "vpnd.bus.objects" in modules
    loaded = sorted(
        m for m in modules if any(m == lazy or m.startswith(lazy + ".") for lazy in NOT_AT_START)
    )
    assert loaded == []


def _families(tmp_path: Path) -> tuple[Settings, HttpClient, Store]:
    settings = Settings(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run")
    return settings, HttpClient(ca_file=None, timeout=5), Store(settings.state_dir)


def test_a_family_is_made_at_its_first_use_and_then_kept(tmp_path: Path) -> None:
    settings, http, store = _families(tmp_path)
    families = default_families(http, store.secrets, settings)
    assert families.kinds == [
        "eduvpn-v3",
        "eduvpn-v2",
        "eduvpn-v1",
        "access-server",
        "secure-internet",
    ]
    v3 = families.of("eduvpn-v3")
    assert v3.kind == "eduvpn-v3" and v3.detected
    assert families.of("eduvpn-v3") is v3
    access_server = families.of("access-server")
    assert access_server.kind == "access-server" and not access_server.detected
    # One login for the OAuth families: a secure-internet server logs in at its home server.
    assert families.of("eduvpn-v2").login is v3.login
    secure_internet = families.of("secure-internet")
    assert secure_internet.kind == "secure-internet" and not secure_internet.detected
