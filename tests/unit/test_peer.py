"""Finding the local user behind a loopback TCP connection, from /proc/net/tcp text."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vpnd.auth.peer import socket_owner

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:C350 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0
   2: 0100007F:A1B2 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
"""


def test_the_browser_end_names_its_owner() -> None:
    # Port 0xC350 = 50000 is the browser's end, 0xA1B2 = 41394 the listener's.
    assert socket_owner(TABLE, ("127.0.0.1", 50000), ("127.0.0.1", 41394)) == 1000
    assert socket_owner(TABLE, ("127.0.0.1", 41394), ("127.0.0.1", 50000)) == 0


def test_an_unlisted_connection_has_no_owner() -> None:
    assert socket_owner(TABLE, ("127.0.0.1", 50001), ("127.0.0.1", 41394)) is None


def test_a_real_connection_on_this_machine() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, peer = server.accept()
        with client, accepted:
            table = Path("/proc/net/tcp").read_text()
            assert socket_owner(table, peer, accepted.getsockname()) == os.getuid()


@given(st.text(max_size=2000), st.integers(0, 65535))
def test_any_table_text_gives_a_uid_or_none(text: str, port: int) -> None:
    result = socket_owner(text, ("127.0.0.1", port), ("127.0.0.1", 1))
    assert result is None or isinstance(result, int)
