"""The openvpn management interface protocol (client side). Pure: no I/O.

`ManagementParser.feed()` takes bytes from the socket and returns events;
`command()` builds command lines with openvpn's quoting.

What openvpn sends is line based (lines end in CRLF):

- real-time notifications `>NAME:text`, which may arrive at any moment, also
  in the middle of a multi-line reply;
- one-line replies `SUCCESS: text` / `ERROR: text`;
- multi-line replies (`state`, `status`, `version`, `help`, ...): lines up to
  one that is exactly `END`. Nothing in such a reply marks it as one, so the
  caller announces it with `ManagementParser.expect_multiline()`.

openvpn answers commands one at a time and in order. `Conversation` keeps
that order: each command sent gets a ticket, and each reply comes back as
`Answered(ticket, result)`, so a caller can have several commands in flight
and still know which reply is whose.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from dataclasses import dataclass

from vpnd.errors import TunnelFailed

#: The longest line (bytes before the LF, CR included) the parser accepts.
MAX_LINE = 64 * 1024
#: The most lines a multi-line reply may have.
MAX_BLOCK_LINES = 10_000

#: openvpn's limits for one command line: its management input buffer holds
#: 1024 bytes and silently restarts when it overflows, which would turn the
#: tail of a long line into a command of its own; each word is copied into a
#: 256-byte parameter buffer; a 17th word is dropped without a word.
MAX_COMMAND_BYTES = 1023
MAX_WORD_BYTES = 256
MAX_WORDS = 16


class ProtocolViolation(TunnelFailed):
    """openvpn's management socket sent something that is not the protocol."""


@dataclass(frozen=True)
class StateEvent:
    """>STATE: openvpn's connection state.

    `name` is one of CONNECTING, WAIT, AUTH, GET_CONFIG, ASSIGN_IP,
    ADD_ROUTES, CONNECTED, RECONNECTING, EXITING, RESOLVE, TCP_CONNECT,
    AUTH_PENDING; `detail` says why (`auth-failure`, `SIGTERM`, ...). Fields
    openvpn leaves out are empty strings.
    """

    time: int
    name: str
    detail: str = ""
    local_ip: str = ""
    remote_ip: str = ""
    remote_port: str = ""
    local_ipv6: str = ""
    local_addr: str = ""
    local_port: str = ""


@dataclass(frozen=True)
class ByteCountEvent:
    """>BYTECOUNT: totals since the tunnel started."""

    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class HoldEvent:
    """>HOLD: openvpn waits for `hold release`."""

    text: str


@dataclass(frozen=True)
class FatalEvent:
    """>FATAL: openvpn is about to exit."""

    text: str


@dataclass(frozen=True)
class PasswordEvent:
    """>PASSWORD: a credential request, a verification failure or an auth token.

    The text can carry a secret (`Auth-Token:...`): never log it whole.
    """

    text: str


@dataclass(frozen=True)
class InfoEvent:
    """>INFO: (greeting) or >INFOMSG:."""

    kind: str  # "INFO" or "INFOMSG"
    text: str


@dataclass(frozen=True)
class LogEvent:
    """>LOG: a log line forwarded by openvpn (`time,flags,text`)."""

    text: str


@dataclass(frozen=True)
class PkSignEvent:
    """>PK_SIGN: a request to sign `data` (base64) with `algorithm`.

    `algorithm` is everything after the first comma, e.g.
    `RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest`; empty when openvpn
    named none.
    """

    data: str
    algorithm: str


@dataclass(frozen=True)
class NeedEvent:
    """>NEED-OK: or >NEED-STR: openvpn waits for `needok`/`needstr` `name`."""

    kind: str  # "NEED-OK" or "NEED-STR"
    name: str
    message: str


@dataclass(frozen=True)
class OtherNotification:
    """Any other >NAME: notification, kept for logging."""

    name: str
    text: str


@dataclass(frozen=True)
class CommandResult:
    """The reply to one command: SUCCESS:/ERROR: line, or a multi-line body up to END.

    A multi-line body is `ok=True`, `text=""` and the body in `lines`.
    """

    ok: bool
    text: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnexpectedLine:
    """A line that is neither a notification nor the reply the parser expected."""

    text: str


Event = (
    StateEvent
    | ByteCountEvent
    | HoldEvent
    | FatalEvent
    | PasswordEvent
    | InfoEvent
    | LogEvent
    | PkSignEvent
    | NeedEvent
    | OtherNotification
    | CommandResult
    | UnexpectedLine
)

_DIGITS = re.compile(r"[0-9]+")
_NEED = re.compile(r"Need '(?P<name>[^']*)'.*? MSG:(?P<message>.*)", re.DOTALL)


def _number(text: str, what: str) -> int:
    if _DIGITS.fullmatch(text) is None:
        raise ProtocolViolation(f"openvpn sent a malformed {what}: {text[:80]!r}")
    return int(text)


def _state(text: str) -> StateEvent:
    fields = text.split(",", 8)
    fields += [""] * (9 - len(fields))
    time, name, detail, local_ip, remote_ip, remote_port, local_addr, local_port, ipv6 = fields
    return StateEvent(
        time=_number(time, ">STATE time"),
        name=name,
        detail=detail,
        local_ip=local_ip,
        remote_ip=remote_ip,
        remote_port=remote_port,
        local_ipv6=ipv6,
        local_addr=local_addr,
        local_port=local_port,
    )


def _bytecount(text: str) -> ByteCountEvent:
    bytes_in, sep, bytes_out = text.partition(",")
    if not sep:
        raise ProtocolViolation(f"openvpn sent a malformed >BYTECOUNT: {text[:80]!r}")
    return ByteCountEvent(_number(bytes_in, ">BYTECOUNT"), _number(bytes_out, ">BYTECOUNT"))


def _pk_sign(text: str) -> PkSignEvent:
    data, _, algorithm = text.partition(",")
    return PkSignEvent(data=data, algorithm=algorithm)


def _need(kind: str, text: str) -> NeedEvent:
    match = _NEED.match(text)
    if match is None:
        return NeedEvent(kind=kind, name="", message=text)
    return NeedEvent(kind=kind, name=match["name"], message=match["message"])


def _notification(line: str) -> Event:
    name, _, text = line[1:].partition(":")
    if name == "STATE":
        return _state(text)
    if name == "BYTECOUNT":
        return _bytecount(text)
    if name == "HOLD":
        return HoldEvent(text)
    if name == "FATAL":
        return FatalEvent(text)
    if name == "PASSWORD":
        return PasswordEvent(text)
    if name in ("INFO", "INFOMSG"):
        return InfoEvent(kind=name, text=text)
    if name == "LOG":
        return LogEvent(text)
    if name == "PK_SIGN":
        return _pk_sign(text)
    if name in ("NEED-OK", "NEED-STR"):
        return _need(name, text)
    return OtherNotification(name=name, text=text)


class ManagementParser:
    """Turns management-socket bytes into events. Raises ProtocolViolation
    (a TunnelFailed) on an over-long line or undecodable input; once it has,
    every later `feed()` raises too."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._multiline_expected = False
        self._block: list[str] | None = None
        self._broken: ProtocolViolation | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes from the socket; return the events of the lines they complete."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._feed(data)
        except ProtocolViolation as error:
            self._broken = error
            raise

    def expect_multiline(self) -> None:
        """The next reply is a multi-line block ending in END (e.g. `state`, `status`).

        Call it before sending such a command. A `SUCCESS:`/`ERROR:` line in
        its place still ends the wait (openvpn refused the command).
        """
        self._multiline_expected = True

    def _feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            raw = bytes(self._buffer[start:end])
            start = end + 1
            if len(raw) > MAX_LINE:
                raise ProtocolViolation(f"openvpn sent a line longer than {MAX_LINE} bytes")
            event = self._line(raw)
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE:
            raise ProtocolViolation(f"openvpn sent a line longer than {MAX_LINE} bytes")
        return events

    def _line(self, raw: bytes) -> Event | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("openvpn sent a line that is not UTF-8") from None
        line = line.removesuffix("\r")
        if line.startswith(">"):
            # Notifications are real-time, also in the middle of a reply.
            return _notification(line)
        if self._block is not None:
            if line == "END":
                lines, self._block = tuple(self._block), None
                return CommandResult(ok=True, text="", lines=lines)
            if len(self._block) >= MAX_BLOCK_LINES:
                raise ProtocolViolation(
                    f"openvpn sent a reply of more than {MAX_BLOCK_LINES} lines"
                )
            self._block.append(line)
            return None
        for prefix, ok in (("SUCCESS:", True), ("ERROR:", False)):
            if line.startswith(prefix):
                self._multiline_expected = False
                return CommandResult(ok=ok, text=line[len(prefix) :].lstrip(" "))
        if self._multiline_expected:
            self._multiline_expected = False
            if line == "END":
                return CommandResult(ok=True, text="", lines=())
            self._block = [line]
            return None
        if not line:
            return None
        return UnexpectedLine(line)


def _quote(word: str) -> str:
    for char in word:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            # openvpn drops control characters from management input, so the
            # word would arrive changed (and a newline would end the command).
            raise ValueError(f"a management command word cannot contain {char!r}")
    try:
        size = len(word.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("a management command word must be valid Unicode text") from None
    if size > MAX_WORD_BYTES:
        raise ValueError(
            f"a management command word is {size} bytes; openvpn takes at most {MAX_WORD_BYTES}"
        )
    # The tokenizer splits on blanks, treats a backslash as an escape, a
    # leading quote as the start of a quoted word and a leading # or ; as a
    # comment; an empty word exists only in quotes.
    if word and " " not in word and "\\" not in word and word[0] not in "\"'#;":
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command(*words: str) -> bytes:
    """One command line: words quoted and escaped as openvpn expects, ending in \\n.

    Raises ValueError for a word openvpn could not receive intact: one with a
    newline, NUL or other control character, or longer than openvpn's limits.
    """
    if not words:
        raise ValueError("a management command needs at least one word")
    if len(words) > MAX_WORDS:
        raise ValueError(f"a management command has at most {MAX_WORDS} words")
    line = " ".join(_quote(word) for word in words).encode("utf-8")
    if len(line) > MAX_COMMAND_BYTES:
        limit = MAX_COMMAND_BYTES
        raise ValueError(
            f"a management command is {len(line)} bytes; openvpn takes at most {limit}"
        )
    return line + b"\n"


#: Characters of base64 per line of a `pk-sig` block, well within openvpn's
#: 1023-byte input line.
PK_SIG_LINE_CHARS = 64


def pk_sig(signature: bytes) -> bytes:
    """The answer to a >PK_SIGN: `pk-sig`, the signature in base64 lines, `END`.

    openvpn replies to the whole block with one SUCCESS/ERROR line.
    """
    if not signature:
        raise ValueError("an empty signature is no answer to >PK_SIGN")
    text = base64.b64encode(signature).decode("ascii")
    lines = [text[i : i + PK_SIG_LINE_CHARS] for i in range(0, len(text), PK_SIG_LINE_CHARS)]
    return "\n".join(["pk-sig", *lines, "END"]).encode("ascii") + b"\n"


@dataclass(frozen=True)
class Answered:
    """The reply to the command that got `ticket` (0: a reply no command waited for)."""

    ticket: int
    result: CommandResult


class Conversation:
    """Both directions of one management connection. Pure: no I/O.

    `send()` and `announce_version()` return the bytes to write and a ticket
    per command; write them before sending anything else, in that order.
    `feed()` returns the events of the bytes read, each reply as
    Answered(ticket, result).
    """

    def __init__(self) -> None:
        self._parser = ManagementParser()
        self._waiting: deque[int] = deque()
        self._issued = 0
        self._version_probe: tuple[int, int] | None = None

    def send(self, *commands: tuple[str, ...]) -> tuple[bytes, list[int]]:
        """Command lines for `commands` (tuples of words) and their tickets.

        Raises ValueError, with nothing queued, for a word openvpn could not
        receive intact (see `command()`).
        """
        data = b"".join(command(*words) for words in commands)
        return data, self._tickets(len(commands))

    def send_block(self, data: bytes) -> int:
        """The ticket of a block such as `pk_sig()`, which has one reply line."""
        return self._tickets(1)[0]

    def announce_version(self) -> tuple[bytes, list[int]]:
        """`version 4`, then `pid`: openvpn 2.6 does not answer the first, later
        versions do. Whichever it is, both tickets are answered: the reply that
        reads `pid=...` is pid's, and a version without a reply gets SUCCESS."""
        data, tickets = self.send(("version", "4"), ("pid",))
        self._version_probe = (tickets[0], tickets[1])
        return data, tickets

    def feed(self, data: bytes) -> list[Event | Answered]:
        """Events for the bytes read; raises ProtocolViolation like ManagementParser."""
        out: list[Event | Answered] = []
        for event in self._parser.feed(data):
            if not isinstance(event, CommandResult):
                out.append(event)
                continue
            ticket = self._waiting.popleft() if self._waiting else 0
            probe = self._version_probe
            if probe is not None and ticket == probe[0]:
                self._version_probe = None
                if event.ok and event.text.startswith("pid="):
                    self._waiting.popleft()  # pid's ticket, sent right behind
                    out.append(Answered(probe[0], CommandResult(ok=True, text="")))
                    ticket = probe[1]
            out.append(Answered(ticket, event))
        return out

    def _tickets(self, count: int) -> list[int]:
        tickets = list(range(self._issued + 1, self._issued + 1 + count))
        self._issued += count
        self._waiting.extend(tickets)
        return tickets
