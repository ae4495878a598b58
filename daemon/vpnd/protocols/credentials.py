"""What openvpn asks a person while a tunnel starts, and the answers. Pure: no I/O.

openvpn (run with `--management-query-passwords` and `--auth-retry
interact`) asks through its management interface:

- `>PASSWORD:Need 'Auth' username/password`: a user name and password;
  with ` SC:<flags>,<text>` at the end also the answer to a static
  challenge, sent as `SCRV1:<b64 password>:<b64 answer>` (flag bit 0: the
  answer may be shown as typed; bit 1: password and answer go concatenated);
- `>PASSWORD:Verification Failed: 'Auth' ['CRV1:<flags>:<state>:<b64 user>:<text>']`:
  a dynamic challenge; openvpn then asks for a user name and password again,
  answered with the decoded user and `CRV1::<state>::<answer>`. Without
  `CRV1:` it is a refusal, with the server's reason in the brackets;
- `>INFOMSG:WEB_AUTH:<flags>:<url>` (older servers: `OPEN_URL:<url>`) while
  the state is `AUTH_PENDING`: a login in the browser, which the server
  itself learns the outcome of;
- `>INFOMSG:CR_TEXT:<flags>:<text>`: a question answered with
  `cr-response <b64 answer>`.

`Dialog` keeps what one tunnel was asked and turns each of these into a
`Question` (for a person), a `Reply` (commands for openvpn, e.g. from the
credentials the daemon keeps) or a `Refusal`. Answers are never part of a
repr, a message or an error.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from vpnd.errors import CredentialsRejected, InvalidArgument, TunnelFailed, VpndError
from vpnd.protocols.management import command

#: The longest text of a question that is passed on to a person.
MAX_TEXT = 512
#: The longest web login address that is passed on.
MAX_URL = 2048
#: The longest answer to one field (openvpn's parameter buffer is 256 bytes,
#: and SCRV1 base64-encodes password and answer into one word).
MAX_ANSWER = 120

USERNAME = "username"
PASSWORD = "password"  # noqa: S105 (the name of a field)
RESPONSE = "response"

_SC = re.compile(r" SC:(\d+),(.*)\Z", re.DOTALL)
_CRV1 = re.compile(r"CRV1:([A-Za-z,]*):([^:]{1,256}):([A-Za-z0-9+/=]*):(.*)\Z", re.DOTALL)
_FAILED = re.compile(r"Verification Failed: '([^']*)'(?: \['(.*)'\])?\s*\Z", re.DOTALL)
_NEED = re.compile(r"Need '([^']*)' (username/password|password)")
_CR_TEXT = re.compile(r"([A-Za-z,]*):(.*)\Z", re.DOTALL)


_REFUSED = {
    "crv1": "the server did not accept the answer to its challenge",
    "crtext": "the server did not accept the answer to its challenge",
    "scrv1": "the server refused the password or the answer to its challenge",
    "concat": "the server refused the password or the answer to its challenge",
}


class QuestionRefused(TunnelFailed):
    """openvpn asked for something vpnd cannot or must not answer."""


class LoginRefused(CredentialsRejected):
    """The VPN server refused the credentials or the answer to its challenge."""


@dataclass(frozen=True)
class Field:
    """One thing a person types: `name` is the key of the answer."""

    name: str
    label: str
    echo: bool
    required: bool = True


@dataclass(frozen=True)
class Question:
    """What a person is asked.

    `kind` is `credentials`, `challenge` (static or dynamic), `text` (a
    CR_TEXT question) or `web` (open `url` in a browser and log in there;
    no field to answer, openvpn learns the outcome from the server).
    """

    kind: str
    message: str
    fields: tuple[Field, ...] = ()
    url: str = ""

    @property
    def answerable(self) -> bool:
        """Whether the question takes an answer over the bus (a web login does not)."""
        return bool(self.fields)


@dataclass(frozen=True)
class Reply:
    """Management commands (tuples of words) that answer openvpn."""

    commands: tuple[tuple[str, ...], ...] = field(repr=False)


@dataclass(frozen=True)
class Refusal:
    """The server said no, or asked what vpnd cannot answer: the connection ends with `error`."""

    error: VpndError


@dataclass(frozen=True)
class _Pending:
    """What a question asked of a person is for (kept apart from the Question,
    which goes on the bus): how to turn the fields into commands."""

    question: Question
    how: str  # "plain", "scrv1", "concat", "crv1", "crtext", "web"
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)  # the kept one, under a static challenge
    state_id: str = field(default="", repr=False)


def _clean(text: str, limit: int = MAX_TEXT) -> str:
    """Server text fit to show: printable, one line, bounded."""
    shown = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return shown[:limit]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


class Dialog:
    """One tunnel's conversation about credentials.

    `kept` are the user name and password the daemon keeps for the server
    (used once, for a plain request or under a static challenge; a password
    of "" means only the user name is known, and the password is asked);
    everything else becomes a Question. A second plain request after an answer means
    the answer was refused: that ends the tunnel, it is not asked again.
    """

    def __init__(self, kept: tuple[str, str] | None = None) -> None:
        self._kept = kept
        self._kept_used = False
        self._answered = False
        self._challenge: _Pending | None = None  # a CRV1 waiting for openvpn's next request
        self._pending: _Pending | None = None
        self._last_how = ""  # how the last answer was made, to word a refusal
        self._refusals = 0  # refusals of a connection that answered nothing

    @property
    def question(self) -> Question | None:
        """The question waiting for a person, if any."""
        return self._pending.question if self._pending is not None else None

    def on_password(self, text: str) -> Question | Reply | Refusal | None:
        """Take a `>PASSWORD:` notification's text; None when it needs nothing."""
        if text.startswith("Verification Failed"):
            return self._verification_failed(text)
        need = _NEED.match(text)
        if need is None:
            return None  # Auth-Token and other notices openvpn handles itself
        if need.group(1) != "Auth" or need.group(2) != "username/password":
            return Refusal(
                QuestionRefused(
                    f"openvpn asks for the {_clean(need.group(1), 40)} password,"
                    " which vpnd does not handle"
                )
            )
        if self._challenge is not None:
            self._pending, self._challenge = self._challenge, None
            return self._pending.question
        static = _SC.search(text)
        if self._answered or self._kept_used:
            return Refusal(LoginRefused("the server refused the user name or password"))
        if static is not None:
            return self._static_challenge(int(static.group(1)), static.group(2))
        if self._kept is not None and self._kept[1]:
            self._kept_used = True
            username, password = self._kept
            return Reply((("username", "Auth", username), ("password", "Auth", password)))
        if self._kept is not None:
            username = self._kept[0]
            question = Question(
                "credentials",
                f"The VPN server asks for the password of {_clean(username, 80)}.",
                (Field(PASSWORD, "Password", False),),
            )
            self._pending = _Pending(question, "plain", user=username)
            return question
        self._pending = _Pending(
            Question(
                "credentials",
                "The VPN server asks for your user name and password.",
                (Field(USERNAME, "User name", True), Field(PASSWORD, "Password", False)),
            ),
            "plain",
        )
        return self._pending.question

    def _static_challenge(self, flags: int, text: str) -> Question:
        challenge = _clean(text) or "Answer the server's challenge"
        how = "concat" if flags & 2 else "scrv1"
        response = Field(RESPONSE, challenge, bool(flags & 1))
        if self._kept is not None and self._kept[1]:
            # The kept password goes with the answer: only the answer is asked.
            self._pending = _Pending(
                Question("challenge", challenge, (response,)),
                how,
                user=self._kept[0],
                password=self._kept[1],
            )
        elif self._kept is not None:
            self._pending = _Pending(
                Question("challenge", challenge, (Field(PASSWORD, "Password", False), response)),
                how,
                user=self._kept[0],
            )
        else:
            self._pending = _Pending(
                Question(
                    "challenge",
                    challenge,
                    (
                        Field(USERNAME, "User name", True),
                        Field(PASSWORD, "Password", False),
                        response,
                    ),
                ),
                how,
            )
        return self._pending.question

    def _verification_failed(self, text: str) -> Refusal | None:
        """A dynamic challenge (kept for openvpn's next request) or a refusal."""
        failed = _FAILED.match(text)
        reason = failed.group(2) if failed is not None else None
        if reason is not None and reason.startswith("CRV1:"):
            crv1 = _CRV1.match(reason)
            if crv1 is None:
                return Refusal(LoginRefused("the server's challenge could not be read"))
            flags = {f.strip().upper() for f in crv1.group(1).split(",")}
            try:
                user = base64.b64decode(crv1.group(3), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return Refusal(LoginRefused("the server's challenge could not be read"))
            challenge = _clean(crv1.group(4)) or "Answer the server's challenge"
            self._challenge = _Pending(
                Question(
                    "challenge",
                    challenge,
                    (Field(RESPONSE, challenge, "E" in flags, "R" in flags),),
                ),
                "crv1",
                user=user,
                state_id=crv1.group(2),
            )
            self._answered = False
            return None
        why = _clean(reason or "", 200)
        if self._answered or self._kept_used:
            message = _REFUSED.get(self._last_how, "the server refused the user name or password")
            return Refusal(LoginRefused(message + (f": {why}" if why else "")))
        # Nothing was asked or answered (a client certificate alone): a server
        # may refuse one attempt in passing (openvpn then tries again by
        # itself); refused twice, it means it.
        self._refusals += 1
        if self._refusals < 2:
            return None
        return Refusal(
            LoginRefused("the server refused the connection" + (f": {why}" if why else ""))
        )

    def on_info(self, text: str) -> Question | Refusal | None:
        """Take an `>INFOMSG:` text: a web login or a text challenge, else None."""
        name, _, rest = text.partition(":")
        if name in ("WEB_AUTH", "OPEN_URL"):
            url = rest.partition(":")[2] if name == "WEB_AUTH" else rest
            if not url.startswith("https://") or len(url) > MAX_URL or not url.isprintable():
                return Refusal(
                    QuestionRefused(
                        "the server asks for a login in the browser at an address that is"
                        " not a plain https address"
                    )
                )
            self._pending = _Pending(
                Question("web", "Log in to the VPN server in your browser.", url=url), "web"
            )
            return self._pending.question
        if name == "CR_TEXT":
            parsed = _CR_TEXT.match(rest)
            if parsed is None:
                return None
            flags = {f.strip().upper() for f in parsed.group(1).split(",")}
            challenge = _clean(parsed.group(2)) or "Answer the server's challenge"
            self._pending = _Pending(
                Question(
                    "text", challenge, (Field(RESPONSE, challenge, "E" in flags, "R" in flags),)
                ),
                "crtext",
            )
            return self._pending.question
        return None

    def on_state(self, name: str) -> bool:
        """Take an openvpn state name; True when it closed the question (a web
        login is over once openvpn moves past AUTH_PENDING)."""
        pending = self._pending
        if pending is not None and pending.how == "web" and name != "AUTH_PENDING":
            self._pending = None
            return True
        return False

    def answer(self, values: Mapping[str, str]) -> Reply:
        """The commands that answer the open question with `values`.

        Raises InvalidArgument, and keeps the question open, when a field is
        missing, unknown, too long or holds a character openvpn cannot take;
        the message names the field, never its value.
        """
        pending = self._pending
        if pending is None or not pending.question.answerable:
            raise InvalidArgument("nothing is asked that takes an answer")
        wanted = {f.name: f for f in pending.question.fields}
        unknown = sorted(set(values) - set(wanted))
        if unknown:
            raise InvalidArgument(f"the question has no field {unknown[0]!r}")
        for name, spec in wanted.items():
            value = values.get(name, "")
            if not value and (spec.required or name != RESPONSE):
                raise InvalidArgument(f"{spec.label!r} needs an answer")
            if len(value) > MAX_ANSWER:
                raise InvalidArgument(f"the answer to {spec.label!r} is too long")
            if not value.isprintable():
                raise InvalidArgument(f"the answer to {spec.label!r} has a control character")
        reply = self._commands(pending, values)
        try:
            for words in reply.commands:
                command(*words)
        except ValueError:
            # SCRV1 puts password and answer, base64-encoded, into one word.
            raise InvalidArgument("the answers are too long for openvpn to take") from None
        self._pending = None
        self._answered = True
        self._last_how = pending.how
        return reply

    @staticmethod
    def _commands(pending: _Pending, values: Mapping[str, str]) -> Reply:
        response = values.get(RESPONSE, "")
        if pending.how == "crtext":
            return Reply((("cr-response", _b64(response)),))
        if pending.how == "crv1":
            password = f"CRV1::{pending.state_id}::{response}"
            return Reply((("username", "Auth", pending.user), ("password", "Auth", password)))
        username = values.get(USERNAME, pending.user)
        password = values.get(PASSWORD, pending.password)
        if pending.how == "scrv1":
            password = f"SCRV1:{_b64(password)}:{_b64(response)}"
        elif pending.how == "concat":
            password += response
        return Reply((("username", "Auth", username), ("password", "Auth", password)))
