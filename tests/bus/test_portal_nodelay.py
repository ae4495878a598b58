"""The test portal speaks HTTP as production servers do, so that timings through it mean something.

- TCP_NODELAY on every accepted socket, as nginx and Apache set it: without
  it a response's head and body (two writes) wait out the client's delayed
  ACK, 40 ms on each keep-alive request, which would swamp the connect
  latency the benchmarks compare.
- Repeated header field lines reach the handlers as one comma-separated
  value (RFC 9110, 5.3): eduvpn-common sends one Accept line per protocol.

Needs neither a bus nor the openvpn lab: the portal runs on its own.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal

WELL_KNOWN = "/.well-known/vpn-user-portal"


@pytest.fixture
def client(portal: TestPortal, lab_pki: LabPKI) -> Iterator[http.client.HTTPSConnection]:
    context = ssl.create_default_context(cafile=str(lab_pki.ca_path))
    connection = http.client.HTTPSConnection(portal.host, portal.port, context=context, timeout=10)
    yield connection
    connection.close()


def _server_side(portal: TestPortal, client_socket: socket.socket) -> socket.socket:
    """The portal's socket for this client's connection (found by its peer address)."""
    # No public handle on accepted sockets: the server's own bookkeeping of
    # open connections (used to close them at stop) is the way in.
    server = portal._server
    assert server is not None
    with server._connections_lock:
        connections = list(server._connections)
    ours = client_socket.getsockname()
    matches = [c for c in connections if c.getpeername() == ours]
    assert len(matches) == 1, f"no accepted socket with peer {ours}"
    return matches[0]


def test_accepted_sockets_have_tcp_nodelay(
    portal: TestPortal, client: http.client.HTTPSConnection
) -> None:
    client.request("GET", WELL_KNOWN)
    response = client.getresponse()
    response.read()
    assert response.status == 200
    # Still open (HTTP/1.1 keep-alive): look at the portal's end of it.
    assert client.sock is not None
    accepted = _server_side(portal, client.sock)
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_repeated_header_lines_are_joined(
    portal: TestPortal, client: http.client.HTTPSConnection
) -> None:
    client.putrequest("GET", WELL_KNOWN)
    client.putheader("Accept", "application/x-openvpn-profile")
    client.putheader("Accept", "application/x-wireguard-profile")
    client.endheaders()
    response = client.getresponse()
    response.read()
    assert response.status == 200
    (method, path, headers) = portal.requests[-1]
    assert (method, path) == ("GET", WELL_KNOWN)
    assert headers["accept"] == "application/x-openvpn-profile, application/x-wireguard-profile"
