"""What a tunnel tells the manager, whatever protocol it speaks.

A tunnel reports its steps towards being up (`Progress`), that it is up
(`Up`), that it lost the peer and tries again by itself (`Lost`), its
traffic (`Traffic`), a question for a person (`PromptEvent`, answered with
the tunnel's `answer()`), and finally, exactly once, that it ended
(`TunnelExited`). The OpenVPN management protocol stays inside the OpenVPN
tunnel; another tunnel kind reports the same events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnd.errors import VpndError

if TYPE_CHECKING:
    # Loaded with the tunnel, at the first connect, not at start.
    from vpnd.protocols.credentials import Question
    from vpnd.protocols.dns import PushedDns


def _no_dns() -> PushedDns:
    from vpnd.protocols.dns import PushedDns

    return PushedDns()


@dataclass(frozen=True)
class Progress:
    """A step towards being up; `step` names it as the tunnel's program does
    (openvpn: WAIT, AUTH, GET_CONFIG, AUTH_PENDING, ...)."""

    step: str
    detail: str = ""


@dataclass(frozen=True)
class Up:
    """The tunnel is up: its addresses, the peer it reached, its network link
    and the DNS the server gave for it."""

    local_ip: str = ""
    local_ipv6: str = ""
    remote_ip: str = ""
    remote_port: str = ""
    link: str = ""  # the network interface ("tun0"), when known
    dns: PushedDns = field(default_factory=_no_dns)


@dataclass(frozen=True)
class Lost:
    """The tunnel lost its peer and is re-establishing itself (`reason`, e.g. ping-restart)."""

    reason: str = ""


@dataclass(frozen=True)
class Traffic:
    """Bytes received and sent since the tunnel started."""

    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class PromptEvent:
    """The tunnel asks a person something (`question`), or, with None, no longer does."""

    question: Question | None


@dataclass(frozen=True)
class TunnelExited:
    """Delivered exactly once, when the tunnel's process has exited."""

    returncode: int
    # For a person: "stopped", "authentication failed", the last fatal error
    # or the program's last error lines.
    reason: str
    requested: bool  # True if stop() asked for it
    # The named error that ended it, when the daemon knows one (a refused login).
    error: VpndError | None = None


TunnelEvent = Progress | Up | Lost | Traffic | PromptEvent | TunnelExited
