"""Which local user opened a TCP connection to the loopback redirect. Pure parsing.

The kernel lists every IPv4 TCP socket of the network namespace in
/proc/net/tcp with its owner's UID. The browser's end of a connection to our
listener is the entry whose local address is the connection's peer and whose
remote address is our end.
"""

from __future__ import annotations

import socket
import struct

# Far above a busy machine's socket table; bounds what one lookup may read.
MAX_TABLE = 16 << 20


def _address(field: str) -> tuple[str, int] | None:
    """`0100007F:1F90` → ("127.0.0.1", 8080); None if it is not an IPv4 entry."""
    host, sep, port = field.partition(":")
    if not sep or len(host) != 8 or not port:
        return None
    try:
        # The kernel prints the address as a native-endian 32-bit number.
        packed = struct.pack("=I", int(host, 16))
        return socket.inet_ntoa(packed), int(port, 16)
    except (ValueError, struct.error):
        return None


def socket_owner(table: str, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The UID owning the socket bound to `local` and connected to `remote`, from
    the text of /proc/net/tcp; None if no such socket is listed."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        if _address(fields[1]) == local and _address(fields[2]) == remote:
            try:
                return int(fields[7])
            except ValueError:
                return None
    return None
