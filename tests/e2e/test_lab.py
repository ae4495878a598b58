"""The lab itself: the test portal's OAuth and API, and real tunnels through the namespace."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import ProfileFactory, require_lab
from tests.lab.browser import approve
from tests.lab.netns import OpenVPNLab, PlainClient, link_exists, netns_exists
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

pytestmark = pytest.mark.e2e

CLIENT_ID = "org.eduvpn.app.linux"
OPENVPN = "application/x-openvpn-profile"
REPO = Path(__file__).resolve().parents[2]


# --- a loopback redirect target, standing in for the application's listener ---


@dataclass
class Callback:
    """What the loopback listener received."""

    redirect_uri: str
    queries: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def callback() -> Iterator[Callback]:
    """A loopback HTTP listener on an ephemeral port that records /callback queries."""
    received: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, body = 404, b"not here"
            if url.path == "/callback":
                received.append({k: v[0] for k, v in parse_qs(url.query).items()})
                status, body = 200, b"authorized, you may close this window"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield Callback(f"http://127.0.0.1:{port}/callback", received)
    finally:
        server.shutdown()
        server.server_close()


def pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_url(portal: TestPortal, redirect_uri: str, challenge: str, /, **extra: str) -> str:
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": "config",
        "state": "st-" + secrets.token_hex(8),
        "code_challenge_method": "S256",
        "code_challenge": challenge,
        **extra,
    }
    return f"{portal.base_url}oauth/authorize?{urlencode(params)}"


def obtain_code(portal: TestPortal, lab_pki: LabPKI, callback: Callback) -> tuple[str, str]:
    """Run the browser part of the flow; returns (code, verifier)."""
    verifier, challenge = pkce()
    page = approve(
        authorize_url(portal, callback.redirect_uri, challenge), ca_file=str(lab_pki.ca_path)
    )
    assert page == "authorized, you may close this window"
    return callback.queries[-1]["code"], verifier


def token_request(http: httpx.Client, portal: TestPortal, **form: str) -> httpx.Response:
    return http.post(f"{portal.base_url}oauth/token", data=form)


def exchange(
    http: httpx.Client, portal: TestPortal, callback: Callback, code: str, verifier: str
) -> httpx.Response:
    return token_request(
        http,
        portal,
        grant_type="authorization_code",
        code=code,
        redirect_uri=callback.redirect_uri,
        client_id=CLIENT_ID,
        code_verifier=verifier,
    )


def login(
    http: httpx.Client, portal: TestPortal, lab_pki: LabPKI, callback: Callback
) -> dict[str, Any]:
    code, verifier = obtain_code(portal, lab_pki, callback)
    response = exchange(http, portal, callback, code, verifier)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def connect(
    http: httpx.Client, portal: TestPortal, tokens: dict[str, Any], **form: str
) -> httpx.Response:
    return http.post(
        f"{portal.api_endpoint}/connect",
        data={"profile_id": "employees", **form},
        headers={**bearer(tokens), "Accept": OPENVPN},
    )


def inline_block(config: str, tag: str) -> str:
    match = re.search(rf"<{tag}>\n(.*?)</{tag}>", config, re.DOTALL)
    assert match is not None, f"no <{tag}> in the profile"
    return match.group(1)


# --- the portal ---


def test_well_known_names_the_v3_endpoints(portal: TestPortal, portal_http: httpx.Client) -> None:
    response = portal_http.get(f"{portal.base_url}.well-known/vpn-user-portal")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    document = response.json()
    assert document["api"]["http://eduvpn.org/api#3"] == {
        "api_endpoint": f"{portal.base_url}api/v3",
        "authorization_endpoint": f"{portal.base_url}oauth/authorize",
        "token_endpoint": f"{portal.base_url}oauth/token",
    }
    assert isinstance(document["v"], str)
    assert portal.base_url == f"https://127.0.0.1:{portal.port}/"
    assert portal.host == "127.0.0.1"


def test_full_flow_authorize_info_connect_disconnect(
    portal: TestPortal,
    portal_http: httpx.Client,
    lab_pki: LabPKI,
    openvpn_lab: OpenVPNLab,
    callback: Callback,
) -> None:
    verifier, challenge = pkce()
    url = authorize_url(portal, callback.redirect_uri, challenge, state="the-state")
    approve(url, ca_file=str(lab_pki.ca_path))
    [query] = callback.queries
    assert query["state"] == "the-state"
    tokens = exchange(portal_http, portal, callback, query["code"], verifier).json()
    assert tokens["token_type"].lower() == "bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["refresh_token"]

    info = portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(tokens))
    assert info.status_code == 200
    profiles = info.json()["info"]["profile_list"]
    assert [p["profile_id"] for p in profiles] == ["employees", "guests"]
    assert profiles[0]["display_name"] == {"en": "Employees", "nl": "Medewerkers"}

    before = time.time()
    response = connect(portal_http, portal, tokens, prefer_tcp="no")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OPENVPN
    expires = email.utils.parsedate_to_datetime(response.headers["expires"]).timestamp()
    assert before + 90 * 86400 - 5 <= expires <= time.time() + 90 * 86400 + 5
    config = response.text
    remotes = re.findall(r"^remote (\S+) (\d+) (\w+)$", config, re.MULTILINE)
    assert remotes == [
        (openvpn_lab.server_address, str(openvpn_lab.udp_port), "udp"),
        (openvpn_lab.server_address, str(openvpn_lab.tcp_port), "tcp"),
    ]
    directives = [
        "client",
        "dev tun",
        "nobind",
        "remote-cert-tls server",
        "reneg-sec 0",
        "tls-version-min 1.3",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
    ]
    for directive in directives:
        assert f"\n{directive}\n" in f"\n{config}"
    assert "redirect-gateway" not in config
    assert inline_block(config, "ca").strip() == lab_pki.ca_pem.strip()
    assert inline_block(config, "tls-crypt").strip() == lab_pki.tls_crypt_key.strip()
    cert = x509.load_pem_x509_certificate(inline_block(config, "cert").encode())
    [common_name] = portal.issued_common_names
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_name
    assert portal.connect_calls == [{"profile_id": "employees", "prefer_tcp": "no"}]

    tcp_first = connect(portal_http, portal, tokens, profile_id="guests", prefer_tcp="yes")
    assert re.findall(r"^remote \S+ \d+ (\w+)$", tcp_first.text, re.MULTILINE) == ["tcp", "udp"]
    assert len(set(portal.issued_common_names)) == 2

    disconnect = portal_http.post(f"{portal.api_endpoint}/disconnect", headers=bearer(tokens))
    assert disconnect.status_code == 204
    assert portal.disconnect_calls == 1


def test_refresh_tokens_rotate_and_are_single_use(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    refreshed = token_request(
        portal_http, portal, grant_type="refresh_token",
        refresh_token=tokens["refresh_token"], client_id=CLIENT_ID,
    )  # fmt: skip
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["access_token"] != tokens["access_token"]
    assert portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(new)).status_code == 200

    reused = token_request(
        portal_http, portal, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert reused.status_code == 400
    assert reused.json() == {"error": "invalid_grant"}
    assert portal.token_grants == ["authorization_code", "refresh_token", "refresh_token"]


def test_codes_are_single_use_and_bound_to_the_verifier(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    code, verifier = obtain_code(portal, lab_pki, callback)
    wrong = exchange(portal_http, portal, callback, code, verifier + "x")
    assert (wrong.status_code, wrong.json()) == (400, {"error": "invalid_grant"})
    # The failed attempt used the code up.
    assert exchange(portal_http, portal, callback, code, verifier).status_code == 400

    code, verifier = obtain_code(portal, lab_pki, callback)
    assert exchange(portal_http, portal, callback, code, verifier).status_code == 200
    assert exchange(portal_http, portal, callback, code, verifier).status_code == 400

    missing = token_request(portal_http, portal, grant_type="authorization_code")
    assert (missing.status_code, missing.json()) == (400, {"error": "invalid_request"})
    unknown = token_request(portal_http, portal, grant_type="password")
    assert unknown.json() == {"error": "unsupported_grant_type"}


def test_denied_authorization_redirects_with_access_denied(
    portal: TestPortal, lab_pki: LabPKI, callback: Callback
) -> None:
    _, challenge = pkce()
    url = authorize_url(portal, callback.redirect_uri, challenge, state="s1")
    approve(url, ca_file=str(lab_pki.ca_path), approve=False)
    assert callback.queries == [{"error": "access_denied", "state": "s1"}]


def test_authorize_validates_the_request(
    portal: TestPortal, portal_http: httpx.Client, callback: Callback
) -> None:
    _, challenge = pkce()
    for bad in (
        {"client_id": "org.example.other"},
        {"redirect_uri": "http://192.0.2.1:8080/callback"},
        {"redirect_uri": "https://127.0.0.1:8080/callback"},
        {"redirect_uri": callback.redirect_uri.replace("/callback", "/other")},
    ):
        response = portal_http.get(authorize_url(portal, callback.redirect_uri, challenge, **bad))
        assert response.status_code == 400, bad

    v6 = authorize_url(portal, "http://[::1]:4242/callback", challenge)
    assert portal_http.get(v6).status_code == 200
    lc = authorize_url(
        portal, callback.redirect_uri, challenge, client_id="org.letsconnect-vpn.app.linux"
    )
    assert portal_http.get(lc).status_code == 200

    for bad, error in (
        ({"scope": "other"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
    ):
        response = portal_http.get(authorize_url(portal, callback.redirect_uri, challenge, **bad))
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith(callback.redirect_uri + "?")
        assert parse_qs(urlsplit(location).query)["error"] == [error]


def test_revoke_all_invalidates_access_and_refresh_tokens(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    portal.revoke_all()
    info = portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(tokens))
    assert info.status_code == 401
    assert "error" in info.json()
    assert connect(portal_http, portal, tokens).status_code == 401
    refreshed = token_request(
        portal_http, portal, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert (refreshed.status_code, refreshed.json()) == (400, {"error": "invalid_grant"})
    assert portal.connect_calls == []


def test_expired_access_tokens_can_be_refreshed(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    portal.expire_access_tokens()
    assert portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(tokens)).status_code == 401
    refreshed = token_request(
        portal_http, portal, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(new)).status_code == 200


def test_token_lifetimes_follow_the_knobs(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    portal.access_token_seconds = 0
    portal.session_seconds = 120
    tokens = login(portal_http, portal, lab_pki, callback)
    assert tokens["expires_in"] == 0
    assert portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(tokens)).status_code == 401

    portal.access_token_seconds = 3600
    tokens = login(portal_http, portal, lab_pki, callback)
    response = connect(portal_http, portal, tokens)
    expires = email.utils.parsedate_to_datetime(response.headers["expires"]).timestamp()
    assert abs(expires - (time.time() + 120)) < 5


def test_api_rejects_bad_requests(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    assert connect(portal_http, portal, tokens, profile_id="nope").status_code == 404
    assert connect(portal_http, portal, tokens, prefer_tcp="maybe").status_code == 400
    wireguard_only = portal_http.post(
        f"{portal.api_endpoint}/connect",
        data={"profile_id": "employees"},
        headers={**bearer(tokens), "Accept": "application/x-wireguard-profile"},
    )
    assert wireguard_only.status_code == 406
    assert "error" in wireguard_only.json()
    no_token = portal_http.get(f"{portal.api_endpoint}/info")
    assert no_token.status_code == 401
    assert portal_http.get(f"{portal.base_url}nothing-here").status_code == 404
    assert portal.connect_calls == []


def test_custom_profiles(lab_pki: LabPKI, portal_http: httpx.Client, callback: Callback) -> None:
    profiles = [{"profile_id": "only", "display_name": "Only", "vpn_proto_list": ["openvpn"],
                 "default_gateway": True}]  # fmt: skip
    with TestPortal(lab_pki, profiles=profiles) as lone:
        tokens = login(portal_http, lone, lab_pki, callback)
        info = portal_http.get(f"{lone.api_endpoint}/info", headers=bearer(tokens))
        assert info.json() == {"info": {"profile_list": profiles}}
        response = connect(portal_http, lone, tokens, profile_id="only")
        assert response.status_code == 200
        # Without a lab the profile still parses, pointing at the loopback.
        assert re.findall(r"^remote (\S+)", response.text, re.MULTILINE) == ["127.0.0.1"] * 2
        url = f"{lone.base_url}.well-known/vpn-user-portal"
    with pytest.raises(httpx.ConnectError):
        portal_http.get(url)


@pytest.mark.parametrize(
    "fault",
    [
        "well_known_invalid_json",
        "well_known_missing_keys",
        "info_invalid_json",
        "info_missing_keys",
        "connect_500",
        "token_500",
        "connect_bad_config",
    ],
)
def test_fault_knobs(
    fault: str,
    portal: TestPortal,
    portal_http: httpx.Client,
    lab_pki: LabPKI,
    callback: Callback,
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    portal.fault = fault
    well_known = portal_http.get(f"{portal.base_url}.well-known/vpn-user-portal")
    info = portal_http.get(f"{portal.api_endpoint}/info", headers=bearer(tokens))
    profile = connect(portal_http, portal, tokens)
    refresh = token_request(
        portal_http, portal, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    broken = {
        "well_known_invalid_json": well_known,
        "well_known_missing_keys": well_known,
        "info_invalid_json": info,
        "info_missing_keys": info,
        "connect_500": profile,
        "token_500": refresh,
        "connect_bad_config": profile,
    }[fault]
    for response in (well_known, info, profile, refresh):
        if response is not broken:
            assert response.status_code == 200, (fault, response.request.url)
    if fault.endswith("invalid_json"):
        assert broken.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            broken.json()
    elif fault == "well_known_missing_keys":
        v3 = broken.json()["api"]["http://eduvpn.org/api#3"]
        assert "authorization_endpoint" not in v3
        assert "token_endpoint" not in v3
    elif fault == "info_missing_keys":
        assert "profile_list" not in broken.json()["info"]
    elif fault in ("connect_500", "token_500"):
        assert broken.status_code == 500
        assert "error" in broken.json()
    else:
        assert broken.status_code == 200
        assert "<ca>" not in broken.text
        assert "<cert>" in broken.text


def test_config_filter_rewrites_profiles(
    portal: TestPortal, portal_http: httpx.Client, lab_pki: LabPKI, callback: Callback
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    portal.config_filter = lambda text: text.replace("verb 3", "verb 4")
    assert "\nverb 4\n" in connect(portal_http, portal, tokens).text
    portal.fault = "no_such_fault"
    assert connect(portal_http, portal, tokens).status_code == 500
    portal.reset()
    assert "\nverb 3\n" in connect(portal_http, portal, tokens).text


def test_slow_fault_delays_answers_until_reset(
    portal: TestPortal, portal_http: httpx.Client
) -> None:
    portal.fault = "slow"
    url = f"{portal.base_url}.well-known/vpn-user-portal"
    with pytest.raises(httpx.ReadTimeout):
        portal_http.get(url, timeout=0.3)
    portal.reset()
    assert portal_http.get(url).status_code == 200


def test_browser_command_approves_and_denies(
    portal: TestPortal, lab_pki: LabPKI, lab_browser: Path, callback: Callback, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPND_LAB_")}
    _, challenge = pkce()
    url = authorize_url(portal, callback.redirect_uri, challenge)
    log = tmp_path / "browser.log"
    module = subprocess.run(
        [sys.executable, "-m", "tests.lab.browser", url],
        env={**env, "VPND_LAB_CA": str(lab_pki.ca_path), "VPND_LAB_BROWSER_LOG": str(log)},
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (module.returncode, module.stdout, module.stderr) == (0, "", "")
    assert "code" in callback.queries[-1]
    assert log.read_text() == "authorized, you may close this window\n"

    script = subprocess.run(
        [str(lab_browser), url], env={**env, "VPND_LAB_DENY": "1"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert callback.queries[-1]["error"] == "access_denied"

    untrusted = subprocess.run(
        [str(lab_browser), url], env={**env, "VPND_LAB_CA": "/etc/ssl/certs/ca-certificates.crt"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert untrusted.returncode == 1
    assert "lab browser:" in untrusted.stderr
    assert len(callback.queries) == 2


# --- tunnels through the namespace ---


def ping(address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ping", "-c1", "-W2", address], capture_output=True, text=True, timeout=10
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tunnels_carry_packets_and_stop_leaves_nothing(
    lab_pki: LabPKI, openvpn_lab: OpenVPNLab, tmp_path: Path
) -> None:
    # A second lab next to the session's one: they must not collide.
    lab = OpenVPNLab(lab_pki, tmp_path / "lab")
    assert lab.slot != openvpn_lab.slot
    assert len(lab.veth_host) <= 15 and len(lab.veth_peer) <= 15
    lab.start()
    try:
        assert netns_exists(lab.netns) and link_exists(lab.veth_host)
        server_pids = [lab.server_pid("udp"), lab.server_pid("tcp")]
        tun_devices = []
        for proto, gateway in (("udp", lab.tunnel_gateway_udp), ("tcp", lab.tunnel_gateway_tcp)):
            common_name = f"plain-{proto}"
            cert, key = lab_pki.issue_client(common_name)
            config = lab.client_config(cert, key, prefer_tcp=proto == "tcp")
            with PlainClient(config, tmp_path, proto) as client:
                client.wait_connected()
                assert f"[AF_INET]{lab.server_address}:1194" in client.log
                result = ping(gateway)
                assert result.returncode == 0, result.stdout + client.log
                assert lab.connected_clients(proto) == [common_name]
                assert client.tun_device is not None
                tun_devices.append(client.tun_device)
                routes = subprocess.run(
                    ["ip", "route", "show", "dev", client.tun_device],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                assert "default" not in routes
                assert lab.tunnel_subnet(proto) in routes
            assert client.process is not None and client.process.returncode is not None
        assert lab.running
    finally:
        lab.stop()
    assert not netns_exists(lab.netns)
    assert not link_exists(lab.veth_host)
    for device in tun_devices:
        assert not link_exists(device)
    assert not any(pid_alive(pid) for pid in server_pids)
    assert not lab.running
    lab.stop()  # a second stop is harmless
    # The session's lab is untouched.
    assert openvpn_lab.running


def test_start_cleans_up_what_a_dead_lab_left(lab_pki: LabPKI, tmp_path: Path) -> None:
    require_lab()
    crashed = OpenVPNLab(lab_pki, tmp_path / "crashed")
    crashed.start()
    leftovers = [crashed.server_pid("udp"), crashed.server_pid("tcp")]
    slot = crashed.slot
    # Dropping the slot lock without cleaning up is what a killed test run leaves behind.
    assert crashed._lock is not None
    crashed._lock.close()
    crashed._lock = None

    with OpenVPNLab(lab_pki, tmp_path / "fresh") as fresh:
        assert fresh.slot == slot
        for process in crashed._servers.values():
            process.wait(5)  # reaped here since this process started them
        assert not any(pid_alive(pid) for pid in leftovers)
        assert fresh.running
        assert fresh.connected_clients("udp") == []
    crashed.stop()
    assert not netns_exists(fresh.netns)


def test_portal_profile_connects_through_the_lab(
    portal: TestPortal,
    portal_http: httpx.Client,
    lab_pki: LabPKI,
    openvpn_lab: OpenVPNLab,
    callback: Callback,
    tmp_path: Path,
) -> None:
    tokens = login(portal_http, portal, lab_pki, callback)
    response = connect(portal_http, portal, tokens, prefer_tcp="yes")
    with PlainClient(response.text, tmp_path) as client:
        client.wait_connected()
        assert ping(openvpn_lab.tunnel_gateway_tcp).returncode == 0
        assert openvpn_lab.connected_clients("tcp") == portal.issued_common_names


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_other_client_key_types_connect(
    key_type: str,
    client_profile_factory: ProfileFactory,
    openvpn_lab: OpenVPNLab,
    tmp_path: Path,
) -> None:
    with PlainClient(client_profile_factory(key_type=key_type), tmp_path) as client:
        client.wait_connected()
        assert ping(openvpn_lab.tunnel_gateway_udp).returncode == 0


def test_client_profile_fixture(client_profile: str, lab_pki: LabPKI) -> None:
    assert client_profile.startswith("client\n")
    assert inline_block(client_profile, "ca").strip() == lab_pki.ca_pem.strip()
    assert "<key>" in client_profile and "<tls-crypt>" in client_profile


def test_a_suspended_server_makes_clients_fall_back(lab_pki: LabPKI, tmp_path: Path) -> None:
    require_lab()
    with OpenVPNLab(lab_pki, tmp_path / "lab") as lab:
        lab.suspend("udp")
        cert, key = lab_pki.issue_client("fallback")
        config = lab.client_config(cert, key).replace(
            "server-poll-timeout 10", "server-poll-timeout 1"
        )
        with PlainClient(config, tmp_path) as client:
            client.wait_connected()
            assert lab.connected_clients("tcp") == ["fallback"]
        udp_pid = lab.server_pid("udp")
        # Left suspended on purpose: stop must still end it.
    assert not pid_alive(udp_pid)
