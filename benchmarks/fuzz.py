"""Long fuzzing runs of the parsers in vpnd.protocols, with time and peak memory per parser.

    .venv/bin/python -m benchmarks.fuzz [--engine hypothesis|atheris]
        [--examples N] [--seconds S] [--target NAME ...] [--list]

Each target feeds one parser and checks what the parser promises: it
raises nothing but its documented VpndError subclasses (ValueError for
`management.command`, whose words come from vpnd itself), and what it
returns is bounded and clean (lengths, counts, printable text, a config
that renders to lines openvpn reads whole and that sanitizes to itself).

Every target runs in a child process of its own, so that its peak resident
memory (ru_maxrss from wait4) is its own; the `baseline` target does
nothing, so its figure is the interpreter's and the engine's share.

Engines:
- hypothesis (default): structured inputs (configs built from directive
  names and quoting tricks, JSON-shaped documents, management streams)
  mixed with raw bytes; a failure is shrunk and printed.
- atheris (`pip install atheris`): coverage-guided libFuzzer on raw bytes,
  with seed inputs and a dictionary per target; a failing input is written
  to the artifacts directory. libFuzzer stops a target at its first finding.

`--examples` is per target; `--seconds` caps each target's time (0: no cap).
`--at-bounds` instead feeds each parser once with the largest input its
bounds let through (or just past them) and reports the time and the peak of
Python allocations (tracemalloc) for that one input.
Prints a Markdown table; FUZZ.md keeps the recorded runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "daemon") not in sys.path:
    # A separate fuzzing venv (for atheris) has no editable install of vpnd.
    sys.path.insert(0, str(REPO / "daemon"))
STATE = "s" * 43  # the OAuth state the callback target expects


class Finding(AssertionError):
    """A parser broke a promise."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise Finding(what)


def _text(data: bytes) -> str:
    # Undecodable bytes become lone surrogates, which parsers must refuse too.
    return data.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Target:
    """One parser under fuzzing: `run` takes raw bytes (both engines use it)."""

    name: str
    run: Callable[[bytes], None]
    seeds: tuple[bytes, ...] = ()
    words: tuple[str, ...] = ()
    max_len: int = 4096
    # Builds the hypothesis strategy for structured inputs (as bytes for `run`).
    structured: Callable[[], Any] | None = field(default=None, compare=False)


# --- targets ------------------------------------------------------------------------
# Imported lazily, so that the atheris child can instrument vpnd before it loads.


def build_targets() -> dict[str, Target]:
    """Every target, by name."""
    from vpnd.errors import (
        AuthorizationFailed,
        AuthorizationRequired,
        ConfigRejected,
        InvalidArgument,
        ServerError,
        StorageFailed,
        VpndError,
    )
    from vpnd.protocols import (
        connstate,
        credentials,
        eduvpn,
        lang,
        management,
        oauth,
        ovpnconfig,
        pkce,
    )

    try:
        from vpnd.protocols import pksign
    except ImportError:  # older trees have no external-key signer
        pksign = None  # type: ignore[assignment]

    def baseline(data: bytes) -> None:
        del data

    def challenge(data: bytes) -> None:
        try:
            result = pkce.challenge_s256(_text(data))
        except InvalidArgument:
            return
        _check(re.fullmatch(r"[A-Za-z0-9_-]{43}", result) is not None, "challenge shape")

    def callback(data: bytes) -> None:
        try:
            code = oauth.parse_callback(_text(data), STATE)
        except AuthorizationFailed as error:
            _check(error.message.isprintable(), "unprintable callback error")
            return
        _check(0 < len(code) <= oauth.MAX_CODE_LENGTH and code.isprintable(), "callback code")

    statuses = (200, 200, 200, 400, 401, 403, 500, 302)

    def token_response(data: bytes) -> None:
        status = statuses[data[0] % len(statuses)] if data else 200
        try:
            tokens = oauth.parse_token_response(status, data[1:], now=1e9)
        except (AuthorizationRequired, ServerError) as error:
            _check(error.message.isprintable(), "unprintable token error")
            return
        for token in (tokens.access_token, tokens.refresh_token):
            _check(len(token) <= oauth.MAX_TOKEN_LENGTH and token.isprintable(), "token shape")
        # 0 stands for "the server did not say".
        expires_at = tokens.expires_at
        _check(expires_at == 0 or 1e9 <= expires_at <= 1e9 + oauth.MAX_EXPIRES_IN, "expires_at")

    def stored_tokens(data: bytes) -> None:
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(record, dict):
            return
        try:
            tokens = oauth.tokens_from_dict(record)
        except StorageFailed:
            return
        _check(oauth.tokens_from_dict(oauth.tokens_to_dict(tokens)) == tokens, "round trip")

    def authorize_url(data: bytes) -> None:
        # The endpoint reaches authorization_url only through the discovery document.
        url = _text(data)
        document = {
            "api": {
                eduvpn.API_V3: {
                    "api_endpoint": url,
                    "authorization_endpoint": url,
                    "token_endpoint": url,
                }
            }
        }
        try:
            endpoints = eduvpn.parse_well_known(json.dumps(document).encode())
            result = oauth.authorization_url(
                endpoints.authorization_endpoint,
                client_id=oauth.CLIENT_ID,
                redirect_uri="http://127.0.0.1:1/callback",
                state=STATE,
                code_challenge="c" * 43,
            )
        except ServerError:
            return
        # The scheme is case-insensitive ("HTTPS://" is https).
        _check(result[:8].lower() == "https://" and len(result) <= 4096, "authorization URL")

    def locale(data: bytes) -> None:
        tags = lang.locale_to_tags(_text(data))
        _check(len(tags) <= 2 * (data.count(b":") + 1), "too many tags")
        _check(all(re.fullmatch(r"[a-z]{2,8}(-[A-Z0-9]{2,8})?", t) for t in tags), "tag shape")

    def choose(data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return
        if not isinstance(value, str | dict):
            return
        if isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
            return
        chosen = lang.choose(value, lang.locale_to_tags(_text(head)))
        options = [value] if isinstance(value, str) else [*value.values(), ""]
        _check(chosen in options, "choose returned a string it was not given")

    def base_url(data: bytes) -> None:
        try:
            url = eduvpn.normalize_base_url(_text(data))
        except InvalidArgument as error:
            _check(error.message.isprintable(), "unprintable URL error")
            return
        _check(url.startswith("https://") and url.endswith("/"), "base URL shape")
        _check(url.isascii() and url.isprintable() and " " not in url, "base URL text")
        _check(eduvpn.normalize_base_url(url) == url, "base URL not idempotent")

    def load_json(data: bytes) -> None:
        try:
            eduvpn.load_json(data)
        except ServerError:
            return

    def well_known(data: bytes) -> None:
        try:
            endpoints = eduvpn.parse_well_known(data)
        except ServerError:
            return
        for url in (endpoints.api_endpoint, endpoints.authorization_endpoint):
            _check(url[:8].lower() == "https://" and len(url) <= eduvpn.MAX_URL_LENGTH, "endpoint")
        _check(len(endpoints.server_version) <= 64, "server version")
        _check(endpoints.server_version.isprintable(), "server version text")

    def info(data: bytes) -> None:
        try:
            profiles = eduvpn.parse_info(data)
        except ServerError:
            return
        _check(len(profiles) <= eduvpn.MAX_PROFILES, "profile count")
        for profile in profiles:
            names = (
                [profile.display_name]
                if isinstance(profile.display_name, str)
                else list(profile.display_name.values())
            )
            for name in names:
                _check(0 < len(name) <= eduvpn.MAX_DISPLAY_NAME, "display name length")
                _check(name.isprintable(), "display name text")
            lists = (
                profile.vpn_proto_list,
                profile.vpn_proto_transport_list,
                profile.dns_search_domain_list,
            )
            for items in lists:
                _check(len(items) <= eduvpn.MAX_LIST_ITEMS, "list length")
                _check(all(item.isprintable() for item in items), "list item text")

    def connect(data: bytes) -> None:
        kind = data[:1]
        if kind == b"o":
            content_type, rest = eduvpn.OPENVPN_PROFILE, data[1:]
        elif kind == b"w":
            content_type, rest = eduvpn.WIREGUARD_PROFILE, data[1:]
        else:
            head, _, rest = data.partition(b"\n")
            content_type = _text(head)
        expires, _, body = rest.partition(b"\n")
        try:
            issued = eduvpn.parse_connect(content_type, _text(expires), body)
        except (ServerError, ConfigRejected) as error:
            _check(error.message.isprintable(), "unprintable connect error")
            return
        _check(issued.expires_at >= 0 and "\0" not in issued.text, "issued config")

    def api_error(data: bytes) -> None:
        status = 100 + (data[0] * 256 + data[1]) % 500 if len(data) >= 2 else 400
        error = eduvpn.api_error(status, data[2:])
        _check(isinstance(error, VpndError), "api_error type")
        _check(len(error.message) < 400 and error.message.isprintable(), "api_error message")

    def tokenize(data: bytes) -> None:
        try:
            tokens = ovpnconfig.tokenize(_text(data))
        except ConfigRejected:
            return
        _check(len(tokens) <= 16 and all(len(t) <= 256 for t in tokens), "token bounds")

    allowed_names = ovpnconfig.ALLOWED_DIRECTIVES | {
        f"<{block}>" for block in ovpnconfig.INLINE_BLOCKS
    }

    def sanitize(data: bytes) -> None:
        text = _text(data)
        try:
            config = ovpnconfig.sanitize(text)
        except ConfigRejected as error:
            _check(error.message.isprintable(), "unprintable config error")
            return
        rendered = config.render()
        lines = rendered.split("\n")
        _check(len(lines) <= text.count("\n") + 2, "rendered more lines than given")
        _check(all(len(line.encode()) <= 254 for line in lines), "rendered line too long")
        _check(all(n.isprintable() and len(n) <= 66 for n in config.dropped), "dropped names")
        block = None
        for line in lines:
            if block is not None:
                block = None if line.startswith(f"</{block}>") else block
                continue
            tokens = ovpnconfig.tokenize(line + "\n")
            if tokens:
                _check(tokens[0] in allowed_names, f"rendered a forbidden name {tokens[0]!r}")
                if tokens[0].startswith("<"):
                    block = tokens[0][1:-1]
        again = ovpnconfig.sanitize(rendered)
        _check(again.directives == config.directives and not again.dropped, "not stable")

    def management_stream(data: bytes) -> None:
        step = (data[0] % 97 + 1) if data else 1
        stream = data[1:]
        whole = management.ManagementParser()
        pieces = management.ManagementParser()
        try:
            expected = whole.feed(stream)
        except management.ProtocolViolation:
            expected = None
        got: list[Any] = []
        try:
            for start in range(0, len(stream), step):
                got += pieces.feed(stream[start : start + step])
        except management.ProtocolViolation:
            _check(expected is None or len(stream) > management.MAX_LINE, "split violation")
            return
        if expected is not None:
            _check(got == expected, "events depend on how the stream is split")
        _check(len(got) <= stream.count(b"\n"), "more events than lines")

    def management_command(data: bytes) -> None:
        words = _text(data).split("\x00")
        try:
            line = management.command(*words)
        except ValueError:
            return
        _check(line.endswith(b"\n") and line.count(b"\n") == 1, "command is one line")
        _check(len(line) <= management.MAX_COMMAND_BYTES + 1, "command length")

    events = list(connstate.Event)

    def machine(data: bytes) -> None:
        state = connstate.ConnectionMachine()
        for byte in data:
            with contextlib.suppress(connstate.InvalidTransition):
                state.handle(events[byte % len(events)])
            _check(state.state in connstate.State, "state outside the table")

    def credential_questions(data: bytes) -> None:
        # What a server (through openvpn) may ask: each line is one notification.
        dialog = credentials.Dialog(("user", "pw") if data[:1] == b"k" else None)
        for line in _text(data).split("\n"):
            kind, _, text = line.partition("|")
            outcome = dialog.on_info(text) if kind == "i" else dialog.on_password(text)
            if isinstance(outcome, credentials.Question):
                _check(all(ch.isprintable() for ch in outcome.message), "unprintable question")
                if outcome.kind == "web":
                    _check(outcome.url.startswith("https://"), "web login elsewhere")
                with contextlib.suppress(VpndError):
                    reply = dialog.answer({f.name: "x" for f in outcome.fields})
                    for words in reply.commands:
                        management.command(*words)  # openvpn can take every answer

    targets = [
        Target("baseline", baseline),
        Target("pkce.challenge_s256", challenge, seeds=(b"a" * 43, b"~" * 128)),
        Target(
            "oauth.parse_callback",
            callback,
            seeds=(f"code=abc&state={STATE}".encode(), b"error=access_denied&state=x"),
            words=("code=", "state=", STATE, "error=", "error_description=", "&", "%", "+"),
        ),
        Target(
            "oauth.parse_token_response",
            token_response,
            seeds=(
                b'\x00{"access_token":"a","token_type":"bearer","expires_in":3600,'
                b'"refresh_token":"r"}',
                b'\x03{"error":"invalid_grant"}',
            ),
            words=('"access_token"', '"refresh_token"', '"expires_in"', '"token_type"', "bearer"),
        ),
        Target(
            "oauth.tokens_from_dict",
            stored_tokens,
            seeds=(b'{"access_token":"a","refresh_token":"r","expires_at":1.5}',),
            words=('"access_token"', '"refresh_token"', '"expires_at"', "1e309", "NaN"),
        ),
        Target(
            "oauth.authorization_url",
            authorize_url,
            seeds=(b"https://vpn.example.org/oauth?x=1", b"https://[::1]:8443/a"),
            words=("https://", "[", "]", ":", "@", "?", "#", "%"),
        ),
        Target("lang.locale_to_tags", locale, seeds=(b"nl_NL.UTF-8", b"de_DE:fr:C")),
        Target(
            "lang.choose",
            choose,
            seeds=(b'nl_NL\n{"en":"A","nl-NL":"B","nl":"C"}', b'C\n"x"'),
            words=('"en"', '"en-US"', '"nl"', "_", "-"),
        ),
        Target(
            "eduvpn.normalize_base_url",
            base_url,
            seeds=(b"vpn.example.org", b"https://VPN.example.org:443/a b/", b"https://[::1]/"),
            words=("https://", "http://", "[", "]", ":", "@", "%", "xn--", "."),
        ),
        Target(
            "eduvpn.load_json",
            load_json,
            seeds=(b'{"a":[1,2,{"b":"c"}]}',),
            words=("[", "]", "{", "}", '"', "\\", "\\u0000"),
        ),
        Target(
            "eduvpn.parse_well_known",
            well_known,
            seeds=(
                json.dumps(
                    {
                        "api": {
                            eduvpn.API_V3: {
                                "api_endpoint": "https://v.example/api",
                                "authorization_endpoint": "https://v.example/auth",
                                "token_endpoint": "https://v.example/token",
                            }
                        },
                        "v": "3.0",
                    }
                ).encode(),
            ),
            words=(eduvpn.API_V3, eduvpn.API_V2, '"api_endpoint"', '"v"', "https://"),
        ),
        Target(
            "eduvpn.parse_info",
            info,
            seeds=(
                json.dumps(
                    {
                        "info": {
                            "profile_list": [
                                {
                                    "profile_id": "p",
                                    "display_name": {"en": "P", "nl": "Q"},
                                    "vpn_proto_list": ["openvpn"],
                                    "default_gateway": True,
                                    "dns_search_domain_list": ["example.org"],
                                }
                            ]
                        }
                    }
                ).encode(),
            ),
            words=(
                '"profile_id"',
                '"display_name"',
                '"vpn_proto_list"',
                '"default_gateway"',
                '"dns_search_domain_list"',
                "\\u001b",
                "\\u0000",
                "\\ud800",
            ),
        ),
        Target(
            "eduvpn.parse_connect",
            connect,
            seeds=(b"o\nFri, 01 Aug 2025 12:00:00 GMT\nclient\n", b"text/plain\n\nx"),
            words=(eduvpn.OPENVPN_PROFILE, "GMT", "; charset=utf-8"),
        ),
        Target("eduvpn.api_error", api_error, seeds=(b'\x01\x2c{"error":"x"}',)),
        Target(
            "ovpnconfig.tokenize",
            tokenize,
            seeds=(b"remote \"a b\" 'c' d\\ e # x\n",),
            words=('"', "'", "\\", "#", ";", " ", "\t", "\r"),
            max_len=1024,
        ),
        Target(
            "ovpnconfig.sanitize",
            sanitize,
            seeds=tuple(
                p.read_bytes() for p in sorted((REPO / "tests/unit/ovpn_corpus").iterdir())
            ),
            words=(
                *sorted(ovpnconfig.ALLOWED_DIRECTIVES),
                *(f"<{b}>" for b in sorted(ovpnconfig.INLINE_BLOCKS)),
                *(f"</{b}>" for b in sorted(ovpnconfig.INLINE_BLOCKS)),
                "up",
                "script-security",
                "setenv opt",
                "ignore-unknown-option",
                "<connection>",
                "--",
                '"',
                "'",
                "\\",
                "#",
                ";",
            ),
            max_len=16384,
        ),
        Target(
            "management.ManagementParser",
            management_stream,
            seeds=(
                b"\x05>INFO:OpenVPN Management Interface Version 5\r\n"
                b">STATE:1,CONNECTED,SUCCESS,10.0.0.2,1.2.3.4,1194,,\r\nSUCCESS: pid=1\r\n"
                b">PASSWORD:Need 'Auth' username/password\r\n>PK_SIGN:AAAA,ECDSA\r\n",
            ),
            words=(">STATE:", ">BYTECOUNT:", ">PASSWORD:", ">PK_SIGN:", "SUCCESS:", "END", "\r\n"),
        ),
        Target(
            "management.command",
            management_command,
            seeds=(b'username\x00Auth\x00a b"c',),
        ),
        Target("connstate.ConnectionMachine", machine, seeds=(b"\x00\x02\x03\x04",)),
        Target(
            "credentials.Dialog",
            credential_questions,
            seeds=(
                b"p|Need 'Auth' username/password SC:1,PIN",
                b"kp|Verification Failed: 'Auth' ['CRV1:R,E:s:dQ==:Code']\np|Need 'Auth' x",
                b"i|WEB_AUTH::https://example.org/\ni|CR_TEXT:R:Code",
            ),
        ),
    ]

    if pksign is not None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        signer = pksign.Signer.from_pem(pem)

        def pk_sign(data: bytes) -> None:
            b64, _, algorithm = _text(data).partition(",")
            try:
                signature = signer.sign_request(b64, algorithm)
            except pksign.SigningError as error:
                _check(error.message.isprintable(), "unprintable signing error")
                return
            _check(0 < len(signature) <= 1024, "signature length")

        targets.append(
            Target(
                "pksign.Signer.sign_request",
                pk_sign,
                seeds=(
                    base64.b64encode(b"x" * 32) + b",ECDSA",
                    base64.b64encode(b"x" * 32) + b",ECDSA,hashalg=SHA256,data=message",
                ),
                words=("ECDSA", "RSA_PKCS1_PSS_PADDING", "hashalg=", "saltlen=", "data=message"),
            )
        )
    return {target.name: target for target in targets}


# --- hypothesis ---------------------------------------------------------------------


def _structured(target: Target) -> Any:
    """Raw bytes, mutated seeds, and dictionary words glued together."""
    from hypothesis import strategies as st

    pieces = list(target.words) or ["a"]
    glued = st.lists(
        st.one_of(st.sampled_from(pieces), st.text(max_size=8), st.sampled_from(["\n", " "])),
        max_size=40,
    ).map(lambda parts: "".join(parts).encode("utf-8", "surrogateescape"))
    options = [st.binary(max_size=target.max_len), glued]
    if target.seeds:
        seeds = st.sampled_from(list(target.seeds))
        options.append(
            st.tuples(seeds, glued, st.integers(0, 10_000)).map(
                lambda t: t[0][: t[2] % (len(t[0]) + 1)] + t[1] + t[0][t[2] % (len(t[0]) + 1) :]
            )
        )
    return st.one_of(*options)


def run_hypothesis(target: Target, examples: int, seconds: float) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, given, settings

    count = 0
    started = time.monotonic()

    class _OutOfTime(Exception):
        pass

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        report_multiple_bugs=False,
    )
    @given(_structured(target))
    def fuzz(data: bytes) -> None:
        nonlocal count
        if seconds and time.monotonic() - started > seconds:
            raise _OutOfTime
        count += 1
        target.run(data)

    finding = None
    try:
        fuzz()
    except _OutOfTime:
        pass
    except BaseException as error:  # a finding, whatever it is
        notes = "; ".join(getattr(error, "__notes__", []))
        finding = f"{type(error).__name__}: {error} {notes}".strip()[:2000]
    return {"examples": count, "finding": finding}


# --- atheris ------------------------------------------------------------------------


def _dictionary(words: tuple[str, ...], path: Path) -> None:
    lines = []
    for word in words:
        escaped = "".join(
            f"\\x{byte:02x}" if byte < 0x20 or byte > 0x7E or byte in b'"\\' else chr(byte)
            for byte in word.encode("utf-8")
        )
        lines.append(f'"{escaped}"')
    path.write_text("\n".join(lines) + "\n")


def run_atheris_child(name: str, arguments: list[str]) -> None:
    """In the child: instrument vpnd, then hand over to libFuzzer (which exits)."""
    import atheris

    with atheris.instrument_imports(include=["vpnd"]):
        targets = build_targets()
    target = targets[name]

    def one_input(data: bytes) -> None:
        target.run(data)

    atheris.Setup([sys.argv[0], *arguments], one_input)
    atheris.Fuzz()


# --- at the bounds -----------------------------------------------------------------


def bound_cases() -> list[tuple[str, str, Callable[[], object]]]:
    """(parser, input, call) for inputs at or just past each parser's bounds."""
    from vpnd.errors import VpndError
    from vpnd.protocols import eduvpn, management, ovpnconfig

    def swallow(call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            try:
                return call()
            except VpndError as error:
                return error

        return run

    line = "remote vpn.example.org 1194 udp\n"
    # Key lines as long as openvpn reads whole, in blocks just under 64 KiB.
    block = ("A" * 254 + "\n") * 255
    widest = "client\ndev tun\n" + line
    for name in ("ca", "cert", "key", "tls-crypt"):
        widest += f"<{name}>\n{block}</{name}>\n"
    many_lines = "client\ndev tun\n<ca>\nAAAA\n</ca>\n" + line * (ovpnconfig.MAX_LINES - 5)
    quoted = "setenv UV_X " + ('"' + 'a\\" ' * 60 + '" ') * 10
    profiles = [
        {"profile_id": f"p{i}", "display_name": {f"x-{j}": "x" * 100 for j in range(8)}}
        for i in range(1000)
    ]
    info = json.dumps({"info": {"profile_list": profiles}}).encode()
    big_json = json.dumps(["x" * 1000] * 1000).encode()
    deep = b"[" * 1_000_000
    mgmt_lines = (b">STATE:1,CONNECTED,SUCCESS," + b"x" * 65_000 + b"\r\n") * 16
    mgmt_block = b"x" * 1000 + b"\r\n"

    def block_reply() -> object:
        parser = management.ManagementParser()
        parser.expect_multiline()
        return parser.feed(mgmt_block * (management.MAX_BLOCK_LINES - 1) + b"END\r\n")

    return [
        (
            "ovpnconfig.sanitize",
            f"{len(widest) >> 10} KiB: four inline blocks of 64 KiB",
            swallow(lambda: ovpnconfig.sanitize(widest)),
        ),
        (
            "ovpnconfig.sanitize",
            f"{ovpnconfig.MAX_LINES} lines",
            swallow(lambda: ovpnconfig.sanitize(many_lines)),
        ),
        (
            "ovpnconfig.sanitize",
            "just past 256 KiB",
            swallow(lambda: ovpnconfig.sanitize(widest + "#" * 4096 + "\n")),
        ),
        (
            "ovpnconfig.tokenize",
            f"a {len(quoted)}-character line of quotes and escapes",
            swallow(lambda: ovpnconfig.tokenize(quoted)),
        ),
        (
            "eduvpn.load_json",
            "1 MiB, 1000 strings of 1000 characters",
            swallow(lambda: eduvpn.load_json(big_json)),
        ),
        ("eduvpn.load_json", "1 MB of unclosed brackets", swallow(lambda: eduvpn.load_json(deep))),
        (
            "eduvpn.parse_info",
            f"{len(info) >> 10} KiB, 1000 profiles in 8 languages",
            swallow(lambda: eduvpn.parse_info(info)),
        ),
        (
            "management.ManagementParser",
            "16 lines of 64 KB",
            swallow(lambda: management.ManagementParser().feed(mgmt_lines)),
        ),
        (
            "management.ManagementParser",
            f"a {management.MAX_BLOCK_LINES}-line reply of 1 KB lines",
            swallow(block_reply),
        ),
    ]


def run_at_bounds() -> None:
    import tracemalloc

    print("| parser | input | time | peak of Python allocations | outcome |")
    print("|---|---|---:|---:|---|")
    for name, what, call in bound_cases():
        tracemalloc.start()
        started = time.perf_counter()
        outcome = call()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        shown = type(outcome).__name__
        if isinstance(outcome, Exception):
            shown += f": {outcome}"[:90]
        print(f"| {name} | {what} | {seconds * 1000:.0f} ms | {peak / 2**20:.1f} MiB | {shown} |")


# --- the parent ---------------------------------------------------------------------


@dataclass
class Result:
    """One target's figures."""

    name: str
    engine: str
    examples: int
    seconds: float
    peak_rss_mib: float
    finding: str | None
    coverage: str = "-"  # libFuzzer's edges ("cov") and features ("ft") in vpnd's code


def _spawn(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run a child; returns (exit status, wall seconds, peak RSS in MiB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "daemon"), str(REPO)])}
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.monotonic() - started, usage.ru_maxrss / 1024


def fuzz_target(name: str, engine: str, examples: int, seconds: float, workdir: Path) -> Result:
    """Run one target in a child process and collect its figures."""
    log = workdir / f"{name}.{engine}.log"
    base = [sys.executable, "-m", "benchmarks.fuzz", "--child", "--target", name]
    if engine == "hypothesis":
        command = [*base, "--engine", "hypothesis", "--examples", str(examples)]
        command += ["--seconds", str(seconds)]
        status, wall, peak = _spawn(command, log)
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("{")]
        if status != 0 or not lines:
            return Result(name, engine, 0, wall, peak, f"child failed: {text[-2000:]}")
        report = json.loads(lines[-1])
        return Result(name, engine, report["examples"], wall, peak, report["finding"])
    target = build_targets()[name]
    corpus = workdir / f"{name}.corpus"
    corpus.mkdir(exist_ok=True)
    for index, seed in enumerate(target.seeds):
        (corpus / f"seed-{index}").write_bytes(seed)
    artifacts = workdir / f"{name}.artifacts"
    artifacts.mkdir(exist_ok=True)
    arguments = [
        f"-runs={examples}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={artifacts}/",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    if seconds:
        arguments.append(f"-max_total_time={int(seconds)}")
    if target.words:
        _dictionary(target.words, workdir / f"{name}.dict")
        arguments.append(f"-dict={workdir / f'{name}.dict'}")
    command = [*base, "--engine", "atheris", "--", *arguments, str(corpus)]
    status, wall, peak = _spawn(command, log)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    done = int(runs[-1]) if runs else 0
    reached = re.findall(r"cov: (\d+) ft: (\d+)", text)
    coverage = f"{reached[-1][0]} / {reached[-1][1]}" if reached else "-"
    finding = None
    if status != 0:
        crash = re.search(r"(Uncaught Python exception:.*?)(?:\n\n|==\d+==)", text, re.S)
        artifacts_written = sorted(str(p) for p in artifacts.iterdir())
        finding = (crash.group(1) if crash else text[-1500:]).strip()
        finding += f" [inputs: {', '.join(artifacts_written) or 'none'}]"
    return Result(name, engine, done, wall, peak, finding, coverage)


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, {platform.platform()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis")
    parser.add_argument("--examples", type=int, default=20_000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=0, help="time cap per target (0: none)")
    parser.add_argument("--target", action="append", help="run only these targets")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument(
        "--at-bounds", action="store_true", help="measure each parser on its largest inputs"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs, corpora and findings here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        [name] = args.target
        if args.engine == "atheris":
            run_atheris_child(name, args.rest)
            return 0
        report = run_hypothesis(build_targets()[name], args.examples, args.seconds)
        print(json.dumps(report))
        return 0

    if args.at_bounds:
        print(f"machine: {_machine()}\n")
        run_at_bounds()
        return 0
    targets = build_targets()
    if args.list:
        print("\n".join(targets))
        return 0
    names = args.target or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vpnd-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {_machine()}")
    print(f"engine: {args.engine}, {args.examples} inputs a target, logs in {workdir}\n")
    print("| target | inputs | time | inputs/s | peak RSS | cov / ft | finding |")
    print("|---|---:|---:|---:|---:|---:|---|")
    results = []
    started = time.monotonic()
    for name in names:
        result = fuzz_target(name, args.engine, args.examples, args.seconds, workdir)
        results.append(result)
        rate = result.examples / result.seconds if result.seconds else 0
        finding = (result.finding or "none").replace("\n", " ").replace("|", "\\|")[:300]
        print(
            f"| {name} | {result.examples} | {result.seconds:.1f} s | {rate:.0f} "
            f"| {result.peak_rss_mib:.1f} MiB | {result.coverage} | {finding} |",
            flush=True,
        )
    print(f"\ntotal: {time.monotonic() - started:.0f} s")
    return 1 if any(r.finding for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
