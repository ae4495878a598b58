"""What `vpnctl monitor` tells the person about their VPN: pure decisions, no I/O.

Everything here takes what vpnctl knows of a connection (a `View`, read from
vpnd's properties and kept current from its signals) and says which notice,
if any, a change makes: its words, its urgency and its one action. The
action's key is turned into a `Command` (call Renew, run a program) here
too; `vpnctl.monitor` does the bus calls, the notifications and the
processes. The notices are:

  expiring   the session ends in 4 h, 2 h, 1 h (SessionExpiring; on start
             when less than 4 h are left), with a Renew action once the
             connection is old enough for vpnd to renew it
  expired    the session has ended (SessionExpiring 0, or the connection
             ended with SessionExpired), with Renew
  lost       the tunnel went down and vpnd reconnects
  restored   the tunnel is back
  failed     the connection ended with an error
  input      the connection waits for a person: a code or password
             (action: a terminal with `vpnctl answer`) or a web login
             (action: the login page in the browser)

A notice for a connection replaces the one before it; when what it was
about is over (a question answered, a connection closed on request) it is
withdrawn (`Withdraw`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vpnctl import render
from vpnctl.contract import CONNECTED, DISCONNECTED, ERROR_PREFIX, FAILED, NEEDS_INPUT

RECONNECTING = "reconnecting"
SESSION_EXPIRED = ERROR_PREFIX + "SessionExpired"

# org.freedesktop.Notifications urgency levels (the "urgency" hint, a byte).
LOW, NORMAL, CRITICAL = 0, 1, 2

# vpnd refuses to renew a connection younger than this (Server1.Renew).
RENEW_AFTER = 30 * 60
# Below this, an ending session is urgent.
URGENT_BEFORE = 3600
# Server kinds that log in through a browser, which Renew needs.
_NOT_RENEWABLE = frozenset({"access-server"})

# The end of a question's notice.
_WAITS = " The connection waits for you."

# Action keys.
RENEW = "renew"
ANSWER = "answer"
LOGIN = "login"


@dataclass(frozen=True)
class View:
    """What vpnctl knows of one connection of vpnd."""

    path: str
    state: str = ""
    error: str = ""
    error_message: str = ""
    server: str = ""
    server_url: str = ""
    profile: str = ""
    connected_since: int = 0
    session_expiry: int = 0
    prompt: Mapping[str, Any] | None = None
    # The server's Kind (Server1), "" when it could not be read.
    server_kind: str = ""

    @classmethod
    def read(cls, path: str, properties: Mapping[str, Any], server_kind: str = "") -> View:
        """A view of Connection1's properties."""
        return cls(
            path=path,
            state=str(properties.get("State", "")),
            error=str(properties.get("Error", "")),
            error_message=str(properties.get("ErrorMessage", "")),
            server=str(properties.get("Server", "")),
            server_url=str(properties.get("ServerUrl", "")),
            profile=str(properties.get("Profile", "")),
            connected_since=int(properties.get("ConnectedSince", 0)),
            session_expiry=int(properties.get("SessionExpiry", 0)),
            prompt=render.prompt_record(properties.get("Prompt")),
            server_kind=server_kind,
        )

    @property
    def where(self) -> str:
        """The server for people: its host name, else its URL."""
        return urlsplit(self.server_url).hostname or self.server_url or "the VPN server"


@dataclass(frozen=True)
class Action:
    """One action a notice offers: its key (the ActionInvoked answer) and its label."""

    key: str
    label: str


@dataclass(frozen=True)
class Notice:
    """A notification about one connection."""

    kind: str
    connection: str
    summary: str
    body: str
    urgency: int
    action: Action | None = None
    # Stays until the person closes it (or it is replaced), rather than timing out.
    sticky: bool = False

    def line(self) -> str:
        """The notice as one line of text (without a time)."""
        text = f"{self.kind}: {self.summary}"
        if self.body:
            text += f" — {self.body}"
        if self.action is not None:
            text += f" [{self.action.label}]"
        return " ".join(text.split())


@dataclass(frozen=True)
class Withdraw:
    """Take the connection's notice away: what it was about is over."""

    connection: str


@dataclass(frozen=True)
class Renew:
    """Call Server1.Renew on the server, then open the login page it returns."""

    server: str


@dataclass(frozen=True)
class Run:
    """Start a program for the person (a terminal, the browser) and leave it be."""

    argv: tuple[str, ...]


Decision = Notice | Withdraw | None
Command = Renew | Run


def renewable(view: View, now: float, *, ended: bool = False) -> bool:
    """Whether vpnd would renew the session: a server with a browser login, and a
    connection either ended or at least RENEW_AFTER old."""
    if not view.server or view.server_kind in _NOT_RENEWABLE or not view.server_kind:
        return False
    if ended:
        return True
    return view.connected_since > 0 and now - view.connected_since >= RENEW_AFTER


def expiring(view: View, seconds_left: int, now: float) -> Notice:
    """The notice for SessionExpiring(seconds_left): ends soon, or (0) has ended."""
    if seconds_left <= 0:
        return expired(view)
    can_renew = renewable(view, now)
    body = f"Your VPN session at {view.where} ends in {render.format_duration(seconds_left)}."
    if can_renew:
        body += " Renew it to stay connected."
    elif view.server_kind not in _NOT_RENEWABLE and view.server_kind:
        body += " It can be renewed once it is 30 minutes old."
    return Notice(
        kind="expiring",
        connection=view.path,
        summary=f"VPN session ends in {render.format_duration(seconds_left)}",
        body=body,
        urgency=CRITICAL if seconds_left <= URGENT_BEFORE else NORMAL,
        action=Action(RENEW, "Renew") if can_renew else None,
    )


def expired(view: View) -> Notice:
    """The notice for a session that has ended: the VPN is disconnected."""
    can_renew = renewable(view, 0, ended=True)
    body = f"Your VPN session at {view.where} has ended and the VPN is disconnected."
    if can_renew:
        body += " Renew to log in again and reconnect."
    return Notice(
        kind="expired",
        connection=view.path,
        summary="VPN session ended",
        body=body,
        urgency=CRITICAL,
        action=Action(RENEW, "Renew") if can_renew else None,
        sticky=True,
    )


def asking(view: View) -> Notice | None:
    """The notice for a connection that waits for a person; None when nothing is asked."""
    prompt = view.prompt
    if view.state != NEEDS_INPUT or not prompt:
        return None
    message = _sentence(str(prompt.get("message") or ""))
    if prompt.get("kind") == "web" and prompt.get("url"):
        return Notice(
            kind="input",
            connection=view.path,
            summary="VPN login needed",
            body=(message or f"Log in on the web page of {view.where}.") + _WAITS,
            urgency=CRITICAL,
            action=Action(LOGIN, "Log in"),
            sticky=True,
        )
    return Notice(
        kind="input",
        connection=view.path,
        summary="The VPN needs an answer",
        body=(message or f"{view.where} asks a question.") + _WAITS,
        urgency=CRITICAL,
        action=Action(ANSWER, "Answer"),
        sticky=True,
    )


def on_start(view: View, now: float) -> Decision:
    """What is worth telling about the connection as found when following starts:
    a question waiting, a session ending within 4 hours; nothing of the past."""
    question = asking(view)
    if question is not None:
        return question
    if view.state == CONNECTED and view.session_expiry:
        left = int(view.session_expiry - now)
        if 0 < left <= 4 * 3600:
            return expiring(view, left, now)
    return None


def on_change(before: View, after: View, now: float) -> Decision:
    """What a change of a connection's properties is worth telling.

    `before` has state "" for a connection seen for the first time.
    """
    if after.state in (DISCONNECTED, FAILED) and after.error == SESSION_EXPIRED:
        return expired(after) if before.state not in (DISCONNECTED, FAILED) else None
    if after.state == FAILED:
        if before.state == FAILED:
            return None
        return Notice(
            kind="failed",
            connection=after.path,
            summary="VPN connection failed",
            body=" ".join((after.error_message or _short(after.error) or "unknown error").split())
            + f" ({after.where})",
            urgency=CRITICAL,
        )
    if after.state == NEEDS_INPUT:
        old = before.prompt.get("id") if before.prompt else None
        new = after.prompt.get("id") if after.prompt else None
        if before.state == NEEDS_INPUT and old == new:
            return None
        return asking(after) or (Withdraw(after.path) if before.state == NEEDS_INPUT else None)
    if after.state == RECONNECTING and before.state == CONNECTED:
        return Notice(
            kind="lost",
            connection=after.path,
            summary="VPN connection lost",
            body=f"The tunnel to {after.where} went down; reconnecting.",
            urgency=NORMAL,
        )
    if after.state == CONNECTED and before.state == RECONNECTING:
        return Notice(
            kind="restored",
            connection=after.path,
            summary="VPN connection restored",
            body=f"The tunnel to {after.where} is up again.",
            urgency=LOW,
        )
    if before.state == NEEDS_INPUT and after.state != NEEDS_INPUT:
        return Withdraw(after.path)
    if after.state == DISCONNECTED and before.state not in ("", DISCONNECTED):
        return Withdraw(after.path)
    return None


def command(key: str, view: View) -> Command | None:
    """What an action of a notice about `view` does; None for a key that is not ours,
    or that no longer fits the connection (the question went away)."""
    if key == RENEW and view.server:
        return Renew(view.server)
    if key == ANSWER and view.state == NEEDS_INPUT and view.prompt:
        return Run(("x-terminal-emulator", "-e", "vpnctl", "answer"))
    if key == LOGIN and view.state == NEEDS_INPUT and view.prompt and view.prompt.get("url"):
        return open_page(str(view.prompt["url"]))
    return None


def open_page(url: str) -> Run:
    """Open a web page in the person's browser."""
    return Run(("xdg-open", url))


def renew_failed(view: View, message: str) -> Notice:
    """The notice when vpnd refused to renew (too early, or a login without a browser)."""
    return Notice(
        kind="renew-failed",
        connection=view.path,
        summary="Could not renew the VPN session",
        body=" ".join(message.split()) or "vpnd refused to renew it.",
        urgency=NORMAL,
    )


class Shown:
    """Which notice each connection shows now, so that an identical one is not sent again."""

    def __init__(self) -> None:
        self._notices: dict[str, Notice] = {}

    def decide(self, decision: Decision) -> Decision:
        """The decision to carry out: None for a notice already shown, or for
        withdrawing one that is not there."""
        if isinstance(decision, Notice):
            if self._notices.get(decision.connection) == decision:
                return None
            self._notices[decision.connection] = decision
            return decision
        if isinstance(decision, Withdraw):
            return decision if self._notices.pop(decision.connection, None) else None
        return None

    def closed(self, connection: str) -> None:
        """The notification server closed the connection's notice (a person, a timeout)."""
        self._notices.pop(connection, None)

    def notice(self, connection: str) -> Notice | None:
        """The notice shown for a connection, if any."""
        return self._notices.get(connection)


def _sentence(text: str) -> str:
    """The server's words on one line, ending as a sentence ends ("" stays "")."""
    text = " ".join(text.split()).rstrip(":").rstrip()
    if text and not text.endswith((".", "!", "?")):
        text += "."
    return text


def _short(error: str) -> str:
    return error.removeprefix(ERROR_PREFIX)
