"""Bounds on everything a server sends, through the real daemon and vpnctl.

A hostile portal (tests/lab/portal.py, `hostile` knob) answers slowly, not
at all, endlessly, hugely, deeply nested or with poisoned text; each time
vpnctl gets one named error line, nothing stored changes, no openvpn is
started and the daemon neither hangs nor balloons. One daemon serves the
whole module, with a short HTTP deadline so that the deadline cases stay
cheap.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.browser import write_browser_script
from tests.lab.daemon import VpndProcess, failed, ok, state_files, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.pki import LabPKI
from tests.lab.portal import Hostile, HostileServed, TestPortal

pytestmark = pytest.mark.bus

HTTP_TIMEOUT = 1
HUGE = 50 << 20
MAX_BODY = 1 << 20
WELL_KNOWN = "/.well-known/vpn-user-portal"
INFO = "/api/v3/info"
CONNECT = "/api/v3/connect"
TOKEN = "/oauth/token"
DEADLINE = f"did not answer within {HTTP_TIMEOUT} seconds"
TOO_LARGE = f"larger than {MAX_BODY} bytes"


def children(daemon: VpndProcess) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-P", str(daemon.pid), "-a"], capture_output=True, text=True, check=False
    )
    return out.stdout.splitlines()


def memory_kib(daemon: VpndProcess, field: str) -> int:
    text = Path(f"/proc/{daemon.pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.M)
    assert match is not None, text
    return int(match.group(1))


def served(portal: TestPortal, path: str) -> HostileServed:
    """The record of the hostile reply on `path`, once its handler has finished."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [record for record in portal.hostile_served if record.path == path]
        if found:
            return found[-1]
        time.sleep(0.02)
    raise AssertionError(f"the hostile reply on {path} never finished")


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> Iterator[VpndProcess]:
    """One vpnd for the module, with a short HTTP deadline."""
    process = VpndProcess(
        tmp_path_factory.mktemp("bounds") / "vpnd",
        private_bus.env({}),
        ca_file=lab_pki.ca_path,
        settings={"http_timeout": HTTP_TIMEOUT},
    )
    process.start()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> dict[str, str]:
    browser = write_browser_script(tmp_path_factory.mktemp("browser"), ca_file=str(lab_pki.ca_path))
    return {
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
        "BROWSER": str(browser),
        "LANG": "C.UTF-8",
        "LANGUAGE": "",
        "LC_ALL": "",
        "LC_MESSAGES": "",
    }


@pytest.fixture(scope="module")
def server(daemon: VpndProcess, session_portal: TestPortal, env: dict[str, str]) -> str:
    """The portal, added and logged in once for the module; its URL."""
    session_portal.reset()
    ok(vpnctl(["add", session_portal.base_url], env))
    ok(vpnctl(["login", session_portal.base_url], env))
    return session_portal.base_url


@pytest.fixture
def quiet(daemon: VpndProcess, env: dict[str, str]) -> Iterator[None]:
    """After the test: no connection left over, no child process, no traceback."""
    yield
    vpnctl(["disconnect"], env)
    assert children(daemon) == []
    assert "Traceback" not in daemon.log()


# --- the HTTP layer, seen through `vpnctl add` ---------------------------------

DISCOVERY_CASES = [
    ("silent", Hostile("silent"), DEADLINE),
    ("drip", Hostile("drip"), DEADLINE),
    ("drip-headers", Hostile("drip_headers"), DEADLINE),
    ("huge", Hostile("huge", size=HUGE), TOO_LARGE),
    ("huge-chunked", Hostile("huge_chunked", size=HUGE), TOO_LARGE),
    ("huge-unframed", Hostile("huge_unframed", size=HUGE), TOO_LARGE),
    ("gzip-bomb", Hostile("gzip_bomb", size=200 << 20), "invalid JSON"),
    ("nested", Hostile("raw", body=b"[" * 10_000 + b"]" * 10_000), "nested too deeply"),
    (
        "nested-objects",
        Hostile("raw", body=b'{"api":' * 10_000 + b"1" + b"}" * 10_000),
        "nested too deeply",
    ),
    (
        "header-1mib",
        Hostile("raw", head=b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_BODY + b"\r\n\r\n"),
        "failed",
    ),
    (
        "endless-header-list",
        Hostile("raw", head=b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100_000 + b"\r\n"),
        "failed",
    ),
    (
        "content-length-5000-digits",
        Hostile("raw", head=b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"),
        "Content-Length",
    ),
    (
        "nul-in-header",
        Hostile("raw", head=b"HTTP/1.1 200 OK\r\nX: a\x00\x1b[2J\r\nContent-Length: 0\r\n\r\n"),
        "failed",
    ),
    ("no-http-at-all", Hostile("raw", head=b"\x1b[2J\x00\xff" * 100), "failed"),
    (
        "control-characters-in-json",
        Hostile("raw", body=b'{"api": {"\x1b[2J": 1}, "v": "\x00"}'),
        "invalid JSON",
    ),
]


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [pytest.param(h, e, id=name) for name, h, e in DISCOVERY_CASES],
)
def test_a_hostile_discovery_document_is_named_and_changes_nothing(
    daemon: VpndProcess,
    server: str,
    portal: TestPortal,
    env: dict[str, str],
    quiet: None,
    hostile: Hostile,
    expected: str,
    request: pytest.FixtureRequest,
) -> None:
    prefix = "/" + request.node.callspec.id
    portal.hostile[prefix + WELL_KNOWN] = hostile
    before = state_files(daemon)
    line = failed(vpnctl(["add", portal.base_url.rstrip("/") + prefix + "/"], env))
    assert expected in line
    assert state_files(daemon) == before
    record = served(portal, prefix + WELL_KNOWN)
    if hostile.kind.startswith("huge"):
        # The daemon hung up long before the 50 MiB were through.
        assert record.ended == "client closed"
        assert record.sent < hostile.size
    # The daemon still answers, and its one server is still there.
    listed = json.loads(ok(vpnctl(["list", "--json"], env)))
    listed = listed["servers"] if isinstance(listed, dict) else listed
    assert [s["url"] for s in listed] == [server]


def test_replies_are_asked_for_uncompressed(
    server: str, portal: TestPortal, env: dict[str, str]
) -> None:
    ok(vpnctl(["profiles", server], env))
    assert portal.requests
    for method, path, headers in portal.requests:
        assert headers.get("accept-encoding") == "identity", (method, path, headers)


def test_redirects_share_one_deadline(
    daemon: VpndProcess, server: str, portal: TestPortal, env: dict[str, str], quiet: None
) -> None:
    # Each hop alone is well within the deadline; together they are not.
    hop = HTTP_TIMEOUT * 0.6
    for here, there in (("/hop1", "/hop2"), ("/hop2", "")):
        portal.hostile[here + WELL_KNOWN] = Hostile(
            "raw",
            delay=hop,
            # Connection: close, or the client may send the next hop on a
            # connection the raw reply is about to close.
            head=b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n" % (there + WELL_KNOWN).encode(),
        )
    before = state_files(daemon)
    line = failed(vpnctl(["add", portal.base_url + "hop1/"], env))
    assert DEADLINE in line
    assert state_files(daemon) == before


def test_huge_replies_do_not_grow_the_daemon(
    daemon: VpndProcess, server: str, portal: TestPortal, env: dict[str, str], quiet: None
) -> None:
    ok(vpnctl(["profiles", server], env))  # httpx and TLS are loaded
    # Forget the peak so far; VmHWM then tells the peak of what follows.
    Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")
    before = memory_kib(daemon, "VmRSS")
    for kind in ("huge", "huge_chunked", "huge_unframed"):
        portal.hostile[INFO] = Hostile(kind, size=HUGE)
        assert TOO_LARGE in failed(vpnctl(["profiles", server], env))
    # Each reply is 50 MiB and the daemon reads at most 1 MiB of one. The
    # peak may grow by what the allocator and TLS buffers keep, which differs
    # between machines; holding one whole reply would exceed half of it.
    assert memory_kib(daemon, "VmHWM") - before < (HUGE // 2) // 1024


# --- /info ----------------------------------------------------------------------


def info_reply(profiles: list[dict[str, Any]]) -> Hostile:
    return Hostile("raw", body=json.dumps({"info": {"profile_list": profiles}}).encode())


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        pytest.param(Hostile("huge_chunked", size=HUGE), TOO_LARGE, id="huge"),
        pytest.param(
            Hostile("raw", body=b'{"info": {"profile_list": ' + b"[" * 10_000),
            "nested too deeply",
            id="nested",
        ),
        pytest.param(
            info_reply([{"profile_id": f"p{i}"} for i in range(1001)]),
            "more than 1000 profiles",
            id="too-many-profiles",
        ),
        pytest.param(
            info_reply([{"profile_id": "p", "vpn_proto_list": ["open\u001bvpn"]}]),
            "vpn_proto_list",
            id="control-character-in-a-list",
        ),
        pytest.param(
            info_reply([{"profile_id": "../../etc"}]), "profile_id", id="path-as-profile-id"
        ),
    ],
)
def test_a_hostile_profile_list_is_named(
    server: str, portal: TestPortal, env: dict[str, str], hostile: Hostile, expected: str
) -> None:
    portal.hostile[INFO] = hostile
    assert expected in failed(vpnctl(["profiles", server], env))


def test_display_names_cannot_forge_output(
    server: str, portal: TestPortal, env: dict[str, str]
) -> None:
    portal.hostile[INFO] = info_reply(
        [
            {"profile_id": "a", "display_name": "Office\x1b[2J\x1b[31m\nb  FAKE  yes  openvpn"},
            {"profile_id": "b", "display_name": {"en": "Home\x00\u202e\u2028", "nl": "Thuis"}},
            {"profile_id": "c", "display_name": "x" * 100_000},
        ]
    )
    table = ok(vpnctl(["profiles", server], env))
    assert all(line.isprintable() for line in table.splitlines())
    assert len(table.strip().splitlines()) == 4  # the heading and three profiles
    assert "FAKE" in table.splitlines()[1]  # on the line of profile a, not a row of its own
    records = json.loads(ok(vpnctl(["profiles", server, "--json"], env)))
    records = records["profiles"] if isinstance(records, dict) else records
    names = [r["display_name"] for r in records]
    assert names[1] == "Home"
    assert len(names[2]) == 200
    assert all(name.isprintable() for name in names)


# --- /oauth/token ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostile", "expected"),
    [
        pytest.param(Hostile("silent"), DEADLINE, id="silent"),
        pytest.param(Hostile("huge", size=HUGE), TOO_LARGE, id="huge"),
        pytest.param(Hostile("raw", body=b"[" * 10_000), "invalid JSON", id="nested"),
        pytest.param(
            Hostile("raw", body=b'{"access_token": "a\\u0000b", "token_type": "bearer"}'),
            "access_token",
            id="nul-in-token",
        ),
    ],
)
def test_a_hostile_token_endpoint_is_named_and_keeps_the_old_tokens(
    daemon: VpndProcess,
    server: str,
    portal: TestPortal,
    env: dict[str, str],
    hostile: Hostile,
    expected: str,
) -> None:
    before = state_files(daemon)
    portal.hostile[TOKEN] = hostile
    assert expected in failed(vpnctl(["login", server], env))
    assert state_files(daemon) == before
    portal.hostile.clear()
    ok(vpnctl(["profiles", server], env))


# --- /connect ---------------------------------------------------------------------

OPENVPN_PROFILE = "application/x-openvpn-profile"


@pytest.mark.parametrize(
    ("filter_or_hostile", "error", "expected"),
    [
        pytest.param(Hostile("drip"), "ServerUnreachable", DEADLINE, id="drip"),
        pytest.param(Hostile("huge", size=HUGE), "ServerError", TOO_LARGE, id="huge-declared"),
        pytest.param(
            Hostile("huge_unframed", size=HUGE), "ServerError", TOO_LARGE, id="huge-undeclared"
        ),
        pytest.param(
            lambda text: text + "\n" * 100_000,
            "ConfigRejected",
            "more than 2000 lines",
            id="100000-lines",
        ),
        pytest.param(
            lambda text: text + "#" * MAX_BODY + "\n",
            "ServerError",
            TOO_LARGE,
            id="1mib-line",
        ),
        pytest.param(
            lambda text: text + "#" * (MAX_BODY - 64 * 1024) + "\n",
            "ConfigRejected",
            "larger than 256 KiB",
            id="almost-1mib-line",
        ),
        pytest.param(
            lambda text: text + "#" * 5000 + "\n",
            "ConfigRejected",
            "line longer than 4096",
            id="5000-character-line",
        ),
        pytest.param(
            lambda text: text.replace("verb 3", "verb 3\0"), "ConfigRejected", "NUL", id="nul"
        ),
        pytest.param(
            lambda text: text.replace("verb 3", "verb 3\x1b[2J"),
            "ConfigRejected",
            "control character",
            id="escape",
        ),
        pytest.param(
            lambda text: text.replace("verb 3", "verb 3\u0085"),
            "ConfigRejected",
            "control character",
            id="c1-control",
        ),
        pytest.param(
            lambda text: text.replace("<tls-crypt>\n", "<tls-crypt>\n" + ("A" * 63 + "\n") * 1100),
            "ConfigRejected",
            "64 KiB",
            id="inline-block-over-64kib",
        ),
        pytest.param(
            Hostile("raw", body=b"client\ndev tun\n\xff\n", content_type=OPENVPN_PROFILE),
            "ConfigRejected",
            "UTF-8",
            id="not-utf-8",
        ),
    ],
)
def test_a_hostile_config_is_refused_before_openvpn_runs(
    daemon: VpndProcess,
    server: str,
    portal: TestPortal,
    env: dict[str, str],
    quiet: None,
    filter_or_hostile: Any,
    error: str,
    expected: str,
) -> None:
    if isinstance(filter_or_hostile, Hostile):
        portal.hostile[CONNECT] = filter_or_hostile
    else:
        portal.config_filter = filter_or_hostile
    log_start = len(daemon.log())
    line = failed(vpnctl(["connect", server, "--profile", "employees"], env))
    assert expected in line
    now = status(env)
    assert now["state"] == "failed"
    assert now["error"] == f"org.vpnd.Error.{error}"
    assert children(daemon) == []
    # openvpn may have been started ahead of the config, but never got it.
    assert "released from hold" not in daemon.log()[log_start:]
