"""OpenVPN configuration text from a server: parse, allow-list, render. Pure: no I/O.

A server's config is untrusted. It is parsed the way openvpn parses it and
only allow-listed directives survive; what is dropped is reported so the
caller can log it. Key material comes only as inline blocks.

Parsing follows openvpn 2.6 line by line: leading whitespace is skipped, a
`#` or `;` where a token would start ends the line, `"..."` and `'...'`
quote, a backslash escapes a backslash, a double quote or whitespace (and
nothing else), a first token of the form `--name` means `name`, and a line
holding only `<name>` opens an inline block that ends at the first line
whose text, after leading whitespace, starts with `</name>`.

Bounds. The text is at most 256 KiB, 2000 lines, 4 KiB a line, 64 KiB an
inline block; NUL and other control characters (except tab, CR and LF) are
refused. openvpn reads a config file through a 256-byte line buffer and
reads a longer line as several, so what we render keeps every line within
254 bytes (plus the newline): a kept directive that would not fit is
dropped, and a kept inline block with a longer line refuses the config (we
cannot shorten key material, and a split line could end the block early
in openvpn's eyes).

What a config needs. A config that lost what openvpn needs to run as a
TLS client is refused (ConfigRejected) instead of being run half-configured:
at least one usable `remote`, a non-empty inline `<ca>`, a `dev tun` and a
`client` (or `tls-client`) line.

Choices, for the record:
- Routes (`route`, `route-ipv6`, `redirect-gateway`) survive when they are
  made of addresses and keywords only: the server may push the very same
  options at connect time, so refusing them here would protect nothing.
  `ifconfig`, `ifconfig-ipv6` and the like never appear in real profiles
  and are dropped.
- `dev tunN` becomes `dev tun`: the kernel then picks a free name, and
  openvpn never attaches to a persistent tun device someone else created.
- `push-peer-info` is dropped: it would tell the server the machine's
  hardware address and operating system version.
- `remap-usr1` is dropped: a SIGHUP makes openvpn re-read its config,
  which here is a standard input that is already at its end.
- Everything not listed below is dropped, whatever its spelling (`--up`,
  `"up"`, `setenv opt up`, after `ignore-unknown-option`), and the caller
  logs the dropped names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vpnd.errors import ConfigRejected

MAX_TEXT_BYTES = 256 * 1024
"""Largest config accepted, in UTF-8 bytes."""

MAX_LINES = 2000
"""Most lines accepted in a config."""

MAX_LINE_CHARS = 4096
"""Longest line accepted in the input (output lines are shorter, see below)."""

MAX_INLINE_BYTES = 64 * 1024
"""Largest inline block accepted, in UTF-8 bytes."""

OPENVPN_LINE_BYTES = 254
"""Longest line (without its newline) that openvpn reads as one line."""

# openvpn keeps at most this many tokens of a line and ignores the rest.
_MAX_TOKENS = 16
# openvpn refuses a single token longer than this.
_MAX_TOKEN_CHARS = 256
# C isspace() in the "C" locale, plus the NUL that ends openvpn's line.
_SPACE = " \t\n\v\f\r\0"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_INITIAL, _UNQUOTED, _DQUOTED, _SQUOTED, _DONE = range(5)


@dataclass(frozen=True)
class Directive:
    """One directive: its name (no leading --), its arguments, or its inline body."""

    name: str
    args: tuple[str, ...] = ()
    inline: str | None = None


@dataclass(frozen=True)
class SanitizedConfig:
    """What survived the allow-list, and the names of what was dropped.

    `dropped` lists each dropped name once, in order of first appearance;
    inline blocks appear as `<name>`.
    """

    directives: tuple[Directive, ...]
    dropped: tuple[str, ...]

    def render(self) -> str:
        """openvpn config text for the surviving directives."""
        return "".join(_render_directive(d) for d in self.directives)


# --- rendering ----------------------------------------------------------------

_NEEDS_QUOTES_RE = re.compile(r"""[\s"'\\]""")


def quote_arg(arg: str) -> str:
    """An argument written so that openvpn reads it back unchanged."""
    if arg and not _NEEDS_QUOTES_RE.search(arg) and arg[0] not in "#;":
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render_line(name: str, args: Sequence[str]) -> str:
    return " ".join([name, *(quote_arg(a) for a in args)])


def _render_directive(directive: Directive) -> str:
    if directive.inline is not None:
        body = directive.inline
        if body and not body.endswith("\n"):
            body += "\n"
        return f"<{directive.name}>\n{body}</{directive.name}>\n"
    return _render_line(directive.name, directive.args) + "\n"


# --- tokenizing -----------------------------------------------------------------


def _reject(number: int, problem: str) -> ConfigRejected:
    return ConfigRejected(f"the server's OpenVPN config cannot be read: line {number} {problem}")


def tokenize(line: str, number: int = 1) -> list[str]:
    """The tokens openvpn reads from one line (including its newline, if any).

    Raises ConfigRejected where openvpn would refuse the line: a backslash
    before anything but a backslash, a double quote or whitespace, an
    unclosed quote, a token longer than 256 characters.
    """
    tokens: list[str] = []
    token: list[str] = []
    state = _INITIAL
    backslash = False
    for ch in line + "\0":
        out = ""
        if not backslash and ch == "\\" and state != _SQUOTED:
            backslash = True
            continue
        if state == _INITIAL:
            if ch not in _SPACE:
                if ch in "#;":
                    break
                if not backslash and ch == '"':
                    state = _DQUOTED
                elif not backslash and ch == "'":
                    state = _SQUOTED
                else:
                    out = ch
                    state = _UNQUOTED
        elif state == _UNQUOTED:
            if not backslash and ch in _SPACE:
                state = _DONE
            else:
                out = ch
        elif state == _DQUOTED:
            if not backslash and ch == '"':
                state = _DONE
            else:
                out = ch
        elif ch == "'":  # _SQUOTED: no escapes at all
            state = _DONE
        else:
            out = ch
        if state == _DONE:
            tokens.append("".join(token))
            token = []
            state = _INITIAL
        # openvpn's line ends in NUL, which never counts as a character.
        out = out.replace("\0", "")
        if backslash and out and out not in '\\"' and out not in _SPACE:
            raise _reject(number, 'has a backslash before a character other than \\, " or space')
        backslash = False
        if out:
            if len(token) >= _MAX_TOKEN_CHARS:
                raise _reject(number, f"has a value longer than {_MAX_TOKEN_CHARS} characters")
            token.append(out)
        if len(tokens) >= _MAX_TOKENS:
            break
    else:
        if state in (_DQUOTED, _SQUOTED):
            raise _reject(number, "has a quotation that is not closed")
        if state != _INITIAL:
            raise _reject(number, "ends in the middle of a value")
    return tokens


# --- the allow-list -----------------------------------------------------------

Validator = Callable[[tuple[str, ...]], tuple[str, ...] | None]
"""Takes a directive's arguments; returns the arguments to keep, or None to drop."""

_PROTOS = frozenset(
    {"udp", "tcp", "tcp-client", "udp4", "udp6", "tcp4", "tcp6", "tcp4-client", "tcp6-client"}
)
_HOST_RE = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,252}")
_DEV_RE = re.compile(r"tun[0-9]{0,4}")
_INT_RE = re.compile(r"[0-9]{1,9}")
_CIPHER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CIPHER_LIST_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(?::[A-Za-z0-9_-]{1,64})*")
_TLS_LIST_RE = re.compile(r"[A-Za-z0-9_+!@.=:-]{1,200}")
_ROUTE_RE = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,99}")
_ROUTE6_RE = re.compile(r"[A-Za-z0-9_.:/][A-Za-z0-9_.:/-]{0,99}")
_SETENV_NAME_RE = re.compile(r"(?:IV|UV)_[A-Za-z0-9_]{1,60}")
_FINGERPRINT_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")
_TLS_VERSIONS = frozenset({"1.0", "1.1", "1.2", "1.3"})
_REDIRECT_FLAGS = frozenset(
    {"local", "autolocal", "def1", "bypass-dhcp", "bypass-dns", "block-local", "ipv6", "!ipv4"}
)
# verb 5 and up logs every packet, and 7 and up prints data-channel keys: a
# server does not get to turn that on in the root daemon's journal.
_MAX_VERB = 4


def _is_text(value: str, limit: int = 200) -> bool:
    return 0 < len(value) <= limit and value.isprintable()


def _is_int(value: str, low: int, high: int) -> bool:
    return bool(_INT_RE.fullmatch(value)) and low <= int(value) <= high


def _no_args(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return () if not args else None


def _one_of(*choices: str) -> Validator:
    allowed = frozenset(choices)
    return lambda args: args if len(args) == 1 and args[0] in allowed else None


def _matching(pattern: re.Pattern[str]) -> Validator:
    return lambda args: args if len(args) == 1 and pattern.fullmatch(args[0]) else None


def _ints(low_count: int, high_count: int, low: int = 0, high: int = 86400) -> Validator:
    def check(args: tuple[str, ...]) -> tuple[str, ...] | None:
        ok = low_count <= len(args) <= high_count and all(_is_int(a, low, high) for a in args)
        return args if ok else None

    return check


def _cipher(args: tuple[str, ...]) -> tuple[str, ...] | None:
    # "none" would switch encryption or authentication off.
    ok = len(args) == 1 and _CIPHER_RE.fullmatch(args[0]) and args[0].lower() != "none"
    return args if ok else None


def _cipher_list(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if len(args) != 1 or not _CIPHER_LIST_RE.fullmatch(args[0]):
        return None
    return None if any(c.lower() == "none" for c in args[0].split(":")) else args


def _remote(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if not 1 <= len(args) <= 3 or not _HOST_RE.fullmatch(args[0]):
        return None
    if len(args) >= 2 and not _is_int(args[1], 1, 65535):
        return None
    if len(args) == 3 and args[2] not in _PROTOS:
        return None
    return args


def _resolv_retry(args: tuple[str, ...]) -> tuple[str, ...] | None:
    ok = len(args) == 1 and (args[0] == "infinite" or _is_int(args[0], 0, 10**6))
    return args if ok else None


def _verify_x509_name(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if not 1 <= len(args) <= 2 or not _is_text(args[0]):
        return None
    if len(args) == 2 and args[1] not in ("subject", "name", "name-prefix"):
        return None
    return args


def _verb(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if len(args) != 1 or not _is_int(args[0], 0, 11):
        return None
    return (str(min(int(args[0]), _MAX_VERB)),)


def _tls_version_min(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if not 1 <= len(args) <= 2 or args[0] not in _TLS_VERSIONS:
        return None
    return args if len(args) == 1 or args[1] == "or-highest" else None


def _redirect_gateway(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return args if len(args) <= 8 and all(a in _REDIRECT_FLAGS for a in args) else None


def _route(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return args if 1 <= len(args) <= 4 and all(_ROUTE_RE.fullmatch(a) for a in args) else None


def _route_ipv6(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return args if 1 <= len(args) <= 3 and all(_ROUTE6_RE.fullmatch(a) for a in args) else None


def _explicit_exit_notify(args: tuple[str, ...]) -> tuple[str, ...] | None:
    return args if len(args) <= 1 and all(_is_int(a, 0, 10) for a in args) else None


def _static_challenge(args: tuple[str, ...]) -> tuple[str, ...] | None:
    if not 2 <= len(args) <= 3 or not _is_text(args[0]) or args[1] not in ("0", "1"):
        return None
    return args if len(args) == 2 or args[2] in ("scrv1", "concat") else None


def _dev(args: tuple[str, ...]) -> tuple[str, ...] | None:
    # The device name is not the server's to choose (see the module notes).
    return ("tun",) if len(args) == 1 and _DEV_RE.fullmatch(args[0]) else None


def _setenv(args: tuple[str, ...]) -> tuple[str, ...] | None:
    # Only peer-info variables: "setenv opt" would make unknown options
    # harmless-looking warnings, and other names reach scripts and plugins.
    if not 1 <= len(args) <= 2 or not _SETENV_NAME_RE.fullmatch(args[0]):
        return None
    if len(args) == 2 and args[1] and not _is_text(args[1]):
        return None
    return args


_DIRECTIVES: dict[str, Validator] = {
    "client": _no_args,
    "tls-client": _no_args,
    "pull": _no_args,
    "nobind": _no_args,
    "float": _no_args,
    "persist-key": _no_args,
    "persist-tun": _no_args,
    "remote-random": _no_args,
    "auth-nocache": _no_args,
    "mute-replay-warnings": _no_args,
    # With an argument it names a credentials file; without, openvpn asks us.
    "auth-user-pass": _no_args,
    "dev": _dev,
    "dev-type": _one_of("tun"),
    "proto": _one_of(*_PROTOS),
    "remote": _remote,
    "resolv-retry": _resolv_retry,
    "remote-cert-tls": _one_of("server"),
    "verify-x509-name": _verify_x509_name,
    "verb": _verb,
    "server-poll-timeout": _ints(1, 1),
    "connect-timeout": _ints(1, 1),
    "connect-retry": _ints(1, 2),
    "tls-version-min": _tls_version_min,
    "tls-version-max": _one_of(*_TLS_VERSIONS),
    "data-ciphers": _cipher_list,
    "ncp-ciphers": _cipher_list,
    "data-ciphers-fallback": _cipher,
    "cipher": _cipher,
    "auth": _cipher,
    "tls-cipher": _matching(_TLS_LIST_RE),
    "tls-ciphersuites": _matching(_TLS_LIST_RE),
    "tls-groups": _matching(_TLS_LIST_RE),
    "reneg-sec": _ints(1, 2, 0, 10**7),
    "key-direction": _one_of("0", "1"),
    "explicit-exit-notify": _explicit_exit_notify,
    "keepalive": _ints(2, 2),
    "ping": _ints(1, 1),
    "ping-restart": _ints(1, 1),
    "ping-exit": _ints(1, 1),
    "redirect-gateway": _redirect_gateway,
    "route": _route,
    "route-ipv6": _route_ipv6,
    "static-challenge": _static_challenge,
    "setenv": _setenv,
    # As a directive only the fingerprint itself; a list comes inline.
    "peer-fingerprint": _matching(_FINGERPRINT_RE),
}

ALLOWED_DIRECTIVES = frozenset(_DIRECTIVES)
"""Directives that survive (when their arguments pass their check)."""

INLINE_BLOCKS = frozenset(
    {
        "ca",
        "cert",
        "key",
        "tls-crypt",
        "tls-auth",
        "tls-crypt-v2",
        "extra-certs",
        "peer-fingerprint",
    }
)
"""Inline blocks that survive; every other `<name>` block is dropped."""


# --- sanitizing ---------------------------------------------------------------


def _shown_name(name: str) -> str:
    """A dropped name made safe to log."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in name)[:64]
    return shown or '""'


def _check_bounds(text: str) -> list[str]:
    """The text's lines (without newlines) after the global bounds checks."""
    if len(text) > MAX_TEXT_BYTES:
        raise ConfigRejected("the server's OpenVPN config is larger than 256 KiB")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigRejected("the server's OpenVPN config is not valid text") from None
    if size > MAX_TEXT_BYTES:
        raise ConfigRejected("the server's OpenVPN config is larger than 256 KiB")
    control = _CONTROL_RE.search(text)
    if control is not None:
        number = text.count("\n", 0, control.start()) + 1
        raise ConfigRejected(
            f"the server's OpenVPN config has a control character (U+{ord(control.group()):04X}) "
            f"on line {number}"
        )
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LINES:
        raise ConfigRejected(f"the server's OpenVPN config has more than {MAX_LINES} lines")
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_CHARS:
            raise ConfigRejected(
                f"the server's OpenVPN config has a line longer than {MAX_LINE_CHARS} "
                f"characters (line {number})"
            )
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def _read_inline(lines: list[str], start: int, name: str, opened_at: int) -> tuple[str, int]:
    """An inline block's body starting at lines[start]; and the index after its end."""
    close_tag = f"</{name}>"
    body: list[str] = []
    size = 0
    for index in range(start, len(lines)):
        line = lines[index]
        if line.lstrip(_SPACE).startswith(close_tag):
            return "".join(body), index + 1
        # CRLF is tolerated; a key does not care about the CR.
        line = line.rstrip("\r") + "\n"
        size += len(line.encode("utf-8"))
        if size > MAX_INLINE_BYTES:
            raise ConfigRejected(
                f"the server's OpenVPN config has an inline <{_shown_name(name)}> block "
                "larger than 64 KiB"
            )
        body.append(line)
    raise ConfigRejected(
        f"the server's OpenVPN config has an inline <{_shown_name(name)}> block opened on "
        f"line {opened_at} that is never closed"
    )


def _fits_openvpn(line: str) -> bool:
    return len(line.encode("utf-8")) <= OPENVPN_LINE_BYTES


def sanitize(text: str) -> SanitizedConfig:
    """Parse and allow-list a server's config. Raises ConfigRejected when the
    text is out of bounds or unparsable, or when what survives lacks a
    `remote`, a `<ca>`, a `dev` or a `client` line."""
    lines = _check_bounds(text)
    kept: list[Directive] = []
    dropped: dict[str, None] = {}
    index = 0
    while index < len(lines):
        number = index + 1
        # The last line may lack its newline; openvpn reads it without one too.
        has_newline = index < len(lines) - 1 or text.endswith("\n")
        tokens = tokenize(lines[index] + ("\n" if has_newline else ""), number)
        index += 1
        if not tokens:
            continue
        name = tokens[0]
        if len(name) >= 3 and name.startswith("--"):
            name = name[2:]
        if len(tokens) == 1 and len(name) >= 2 and name[0] == "<" and name[-1] == ">":
            block = name[1:-1]
            body, index = _read_inline(lines, index, block, number)
            if block not in INLINE_BLOCKS:
                dropped[f"<{_shown_name(block)}>"] = None
                continue
            if not all(_fits_openvpn(line) for line in body.split("\n")):
                raise ConfigRejected(
                    f"the server's OpenVPN config has a line longer than {OPENVPN_LINE_BYTES} "
                    f"bytes in its inline <{block}> block"
                )
            kept.append(Directive(block, inline=body))
            continue
        validator = _DIRECTIVES.get(name)
        args = validator(tuple(tokens[1:])) if validator is not None else None
        if args is None or not _fits_openvpn(_render_line(name, args)):
            dropped[_shown_name(name)] = None
            continue
        kept.append(Directive(name, args))
    config = SanitizedConfig(directives=tuple(kept), dropped=tuple(dropped))
    missing = []
    if not _has_line(config, "remote"):
        missing.append("a `remote` line")
    ca = inline_block(config, "ca")
    if ca is None or not ca.strip():
        missing.append("an inline <ca> block")
    if not _has_line(config, "dev"):
        missing.append("a `dev tun` line")
    if not (_has_line(config, "client") or _has_line(config, "tls-client")):
        missing.append("a `client` line")
    if missing:
        listed = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
        raise ConfigRejected(f"the server's OpenVPN config lacks {listed} that vpnd can use")
    return config


def _has_line(config: SanitizedConfig, name: str) -> bool:
    return any(d.name == name and d.inline is None for d in config.directives)


# --- reading a sanitized config -----------------------------------------------

DEFAULT_PORT = 1194
DEFAULT_PROTO = "udp"


def _default_proto(config: SanitizedConfig) -> str:
    """The `proto` directive's value (the last one wins, as in openvpn), or udp."""
    default_proto = DEFAULT_PROTO
    for directive in config.directives:
        if directive.name == "proto" and directive.inline is None and directive.args:
            default_proto = directive.args[0]
    return default_proto


def remotes(config: SanitizedConfig) -> list[tuple[str, int, str]]:
    """The config's remotes as (host, port, proto), in order, with openvpn's
    defaults filled in: port 1194, and the `proto` directive (last one wins,
    as in openvpn) or udp. proto is returned as written (e.g. `tcp-client`)."""
    default_proto = _default_proto(config)
    found: list[tuple[str, int, str]] = []
    for directive in config.directives:
        if directive.name != "remote" or directive.inline is not None or not directive.args:
            continue
        args = directive.args
        port = int(args[1]) if len(args) >= 2 else DEFAULT_PORT
        proto = args[2] if len(args) >= 3 else default_proto
        found.append((args[0], port, proto))
    return found


def inline_block(config: SanitizedConfig, name: str) -> str | None:
    """The body of the last inline block `name` (the one openvpn uses), or None."""
    body = None
    for directive in config.directives:
        if directive.name == name and directive.inline is not None:
            body = directive.inline
    return body


def without(config: SanitizedConfig, *names: str) -> SanitizedConfig:
    """The config without any directive or inline block of these names (e.g.
    `key` when openvpn is to sign through the management interface)."""
    unwanted = frozenset(names)
    return SanitizedConfig(
        directives=tuple(d for d in config.directives if d.name not in unwanted),
        dropped=config.dropped,
    )


def split_key(config: SanitizedConfig) -> tuple[SanitizedConfig, bytes | None]:
    """The config without its inline `<key>` block, and that key (PEM) if there was one.

    openvpn gets the config and signs through vpnd, which keeps the key."""
    key = inline_block(config, "key")
    return without(config, "key"), key.encode() if key is not None else None



def tcp_first(config: SanitizedConfig) -> SanitizedConfig:
    """The config with its TCP remotes tried before the others (each group in its order).

    For a user who asked for TCP, as on networks that block UDP, with a
    server that offers both but cannot order them itself (API v2, v1)."""
    default_proto = _default_proto(config)

    def is_remote(d: Directive) -> bool:
        return d.name == "remote" and d.inline is None and bool(d.args)

    def is_udp(d: Directive) -> bool:
        return not (d.args[2] if len(d.args) >= 3 else default_proto).startswith("tcp")

    ordered = iter(sorted((d for d in config.directives if is_remote(d)), key=is_udp))
    return SanitizedConfig(
        directives=tuple(next(ordered) if is_remote(d) else d for d in config.directives),
        dropped=config.dropped,
    )
