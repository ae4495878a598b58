"""Asking polkit whether a caller may do something.

vpnd asks `org.freedesktop.PolicyKit1.Authority.CheckAuthorization` about the
calling bus connection (subject `system-bus-name`), so polkit itself finds the
process, its user and its session. Building the request, reading the answer
and wording a refusal are pure functions; `Authority` does the one call, with
a short timeout. Anything but a clear yes is a refusal: vpnd fails closed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from vpnd.errors import NotAuthorized

log = logging.getLogger("vpnd.polkit")

BUS_NAME = "org.freedesktop.PolicyKit1"
OBJECT_PATH = "/org/freedesktop/PolicyKit1/Authority"
INTERFACE = "org.freedesktop.PolicyKit1.Authority"

CONNECT = "org.vpnd.connect"
MANAGE_OWN_SERVERS = "org.vpnd.manage-own-servers"
MANAGE_SYSTEM_SERVERS = "org.vpnd.manage-system-servers"

# CheckAuthorizationFlags: let polkit ask the user through an authentication agent.
ALLOW_USER_INTERACTION = 0x1

# polkit answers a non-interactive check at once; only a person typing a
# password takes long, and only when the caller allowed that.
TIMEOUT = 5.0
INTERACTIVE_TIMEOUT = 120.0

# What each action lets a person do, for refusal messages.
_WHAT = {
    CONNECT: "connect or disconnect this machine's VPN",
    MANAGE_OWN_SERVERS: "add, log in to or remove your VPN servers",
    MANAGE_SYSTEM_SERVERS: "use or change this machine's system-wide VPN servers",
}


class PolkitUnavailable(Exception):
    """polkit could not be asked or gave no usable answer."""


@dataclass(frozen=True)
class Decision:
    """polkit's answer to one check."""

    authorized: bool
    challenge: bool = False
    dismissed: bool = False


def check_request(
    sender: str, action: str, *, interactive: bool, cancellation_id: str = ""
) -> Message:
    """The CheckAuthorization call about the bus connection `sender` and `action`."""
    subject = ["system-bus-name", {"name": Variant("s", sender)}]
    return Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[
            subject,
            action,
            {},
            ALLOW_USER_INTERACTION if interactive else 0,
            cancellation_id,
        ],
    )


def cancel_request(cancellation_id: str) -> Message:
    """The call that withdraws a pending interactive check (closing its dialog)."""
    return Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member="CancelCheckAuthorization",
        signature="s",
        body=[cancellation_id],
        flags=MessageFlag.NO_REPLY_EXPECTED,
    )


def parse_reply(reply: Message | None) -> Decision:
    """polkit's Decision from the reply to `check_request`; PolkitUnavailable for anything else."""
    if reply is None:
        raise PolkitUnavailable("no answer")
    if reply.message_type is MessageType.ERROR:
        detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        name = str(reply.error_name)
        raise PolkitUnavailable(f"{name}: {detail}" if detail else name)
    if reply.message_type is not MessageType.METHOD_RETURN or reply.signature != "(bba{ss})":
        raise PolkitUnavailable(f"an unexpected answer ({reply.signature!r})")
    authorized, challenge, details = _result(reply.body[0])
    return Decision(
        authorized=authorized,
        challenge=challenge and not authorized,
        dismissed=details.get("polkit.dismissed", "") not in ("", "false"),
    )


def _result(value: Any) -> tuple[bool, bool, dict[str, str]]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise PolkitUnavailable("a malformed answer")
    authorized, challenge, details = value
    if not isinstance(authorized, bool) or not isinstance(challenge, bool):
        raise PolkitUnavailable("a malformed answer")
    if not isinstance(details, dict):
        raise PolkitUnavailable("a malformed answer")
    return authorized, challenge, details


def refusal(action: str, decision: Decision, *, interactive: bool) -> NotAuthorized:
    """The error for a check polkit did not grant, worded for the person who asked."""
    what = _WHAT.get(action, action)
    if decision.dismissed:
        return NotAuthorized(f"the authentication to {what} was dismissed")
    if decision.challenge and interactive:
        return NotAuthorized(
            f"polkit wants an administrator's password to {what} ({action}), but no"
            " authentication agent answered; run this in a desktop session or under"
            " pkttyagent, or as root"
        )
    if decision.challenge:
        return NotAuthorized(
            f"polkit wants an administrator's password to {what} ({action}); call again"
            " allowing interactive authorization (from a terminal or a desktop session),"
            " or ask an administrator"
        )
    return NotAuthorized(f"polkit does not allow you to {what} ({action}); ask an administrator")


def unavailable(action: str, reason: str) -> NotAuthorized:
    """The error when polkit cannot be asked: vpnd refuses rather than guess."""
    what = _WHAT.get(action, action)
    return NotAuthorized(
        f"vpnd cannot ask polkit whether you may {what} ({reason}), so it refuses;"
        " an administrator should check that polkitd runs (`systemctl status polkit`),"
        " or run the command as root"
    )


class Authority:
    """The polkit authority on the system bus."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        timeout: float = TIMEOUT,
        interactive_timeout: float = INTERACTIVE_TIMEOUT,
    ) -> None:
        self._bus = bus
        self._timeout = timeout
        self._interactive_timeout = interactive_timeout
        self._ids = itertools.count(1)

    def rebind(self, bus: MessageBus) -> None:
        """Ask on `bus` from now on (the old connection was lost)."""
        self._bus = bus

    async def check(self, sender: str, action: str, *, interactive: bool) -> Decision:
        """polkit's decision about `sender` doing `action`; PolkitUnavailable if none came."""
        cancellation_id = f"vpnd-{next(self._ids)}" if interactive else ""
        request = check_request(
            sender, action, interactive=interactive, cancellation_id=cancellation_id
        )
        timeout = self._interactive_timeout if interactive else self._timeout
        try:
            async with asyncio.timeout(timeout):
                reply = await self._bus.call(request)
        except TimeoutError:
            if cancellation_id:
                self._bus.send(cancel_request(cancellation_id))
            raise PolkitUnavailable(f"no answer within {timeout:g} seconds") from None
        except Exception as exc:
            # Whatever went wrong, there is no answer, and no answer means no.
            raise PolkitUnavailable(f"the bus failed: {exc}") from None
        decision = parse_reply(reply)
        log.debug("polkit: %s for %s: %s", action, sender, decision)
        return decision
