"""vpnctl(1), written from the parser that --help is written from.

    python -m vpnctl.manpage > vpnctl.1

Commands, their arguments, options and examples come from
`vpnctl.cli.build_parser()`, the exit status from
`vpnctl.errors.EXIT_CODES_HELP`; only the few paragraphs that --help has no
place for are written here. The date is SOURCE_DATE_EPOCH's when it is set
(reproducible builds), else today's. The output is plain ASCII roff: other
characters are written as groff's \\[uXXXX] escapes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator

from vpnctl.errors import EXIT_CODES_HELP

NAME_LINE = "control vpnd, the VPN daemon, on the system bus"

_DESCRIPTION = (
    "vpnd is a system daemon that connects the machine to eduVPN and Let's Connect! servers"
    " and to OpenVPN Access Servers. It keeps the logins, the keys and the openvpn process;"
    " vpnctl asks it, over D-Bus, to add servers, log in to them, connect and disconnect, and"
    " shows what it reports. Any user may run vpnctl: the servers a user adds are theirs, and"
    " no other user can see or use them.",
    "A server is named by its URL or by any part of it that no other of your servers shares,"
    " such as its host name.",
    "Commands that print data print text for people, or with --json records whose field names"
    " stay the same from release to release (times as Unix time with an ISO 8601 twin in UTC,"
    " missing values as null); vpnd's README lists them. Errors are one line on standard"
    " error, and the exit status says what kind of failure it was. Questions (a password, a"
    " one-time code) are asked only on a terminal; without one vpnctl stops with exit status 6"
    " and the question stays open for `vpnctl answer`.",
)

_ENVIRONMENT = (
    (
        "NO_COLOR",
        "When set to anything but the empty string, vpnctl prints no colour. It prints colour"
        " only to a terminal anyway, and never with TERM=dumb.",
    ),
    (
        "DBUS_SYSTEM_BUS_ADDRESS",
        "The system bus to reach vpnd on, instead of the standard"
        " unix:path=/var/run/dbus/system_bus_socket.",
    ),
    (
        "BROWSER",
        "The browser that opens login pages (a list of commands separated by colons); without"
        " it, the desktop's default browser. With --no-browser nothing is opened and the"
        " address is printed instead.",
    ),
    (
        "LANGUAGE, LC_ALL, LC_MESSAGES, LANG",
        "The first one set chooses the language of the display names of profiles, servers and"
        " notices, where the server offers several.",
    ),
)

_FILES = (
    ("/etc/vpnd/vpnd.toml", "vpnd's settings."),
    (
        "/var/lib/vpnd/",
        "Where vpnd keeps the servers, logins and keys of every user, sealed; readable by"
        " root only.",
    ),
    (
        "/usr/share/dbus-1/interfaces/org.vpnd.Daemon.xml",
        "vpnd's D-Bus API, for scripts and applets (under /usr/local with a local install).",
    ),
)

_SEE_ALSO = ("busctl(1)", "gdbus(1)", "journalctl(1)", "systemctl(1)", "openvpn(8)")


# --- roff -------------------------------------------------------------------


def _ascii(text: str) -> str:
    return "".join(char if ord(char) < 128 else f"\\[u{ord(char):04X}]" for char in text)


def text(value: str) -> str:
    """Running text for roff: escapes, hyphens as minus signs (options copy as typed),
    `code` in bold, and no line that starts with a control character."""
    escaped = value.replace("\\", "\\e").replace("-", "\\-")
    escaped = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", escaped)
    lines = escaped.split("\n")
    lines = [("\\&" + line if line.startswith((".", "'")) else line) for line in lines]
    return _ascii("\n".join(lines))


def _bold(value: str) -> str:
    return "\\fB" + text(value) + "\\fR"


def _italic(value: str) -> str:
    return "\\fI" + text(value) + "\\fR"


# --- the parser -------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The one-line help of each command, as --help lists it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {}


def _shown(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments, then the options, a command documents (not --help, not hidden ones,
    not the commands themselves)."""
    actions = [
        action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
    ]
    return [a for a in actions if not a.option_strings] + [a for a in actions if a.option_strings]


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest.upper()


def _option_words(action: argparse.Action) -> str:
    """How an option or argument is written: \\fB\\-\\-timeout\\fR \\fISECONDS\\fR."""
    if not action.option_strings:
        return _italic(_metavar(action))
    words = ", ".join(_bold(option) for option in action.option_strings)
    if action.nargs != 0:
        words += " " + _italic(_metavar(action))
    return words


def _synopsis_word(action: argparse.Action, required: bool) -> str:
    word = _option_words(action)
    if not action.option_strings and action.nargs in ("?", "*"):
        required = False
    return word if required else f"[{word}]"


def synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    """The command's synopsis, with its mutually exclusive choices."""
    grouped: dict[int, argparse._MutuallyExclusiveGroup] = {}
    for group in parser._mutually_exclusive_groups:
        for member in group._group_actions:
            grouped[id(member)] = group
    words = [_bold("vpnctl"), _bold(name)]
    done: set[int] = set()
    actions = _shown(parser)
    # Options first, then the arguments, as people type them.
    for action in [a for a in actions if a.option_strings] + [
        a for a in actions if not a.option_strings
    ]:
        exclusive = grouped.get(id(action))
        if exclusive is None:
            words.append(_synopsis_word(action, action.required))
            continue
        if id(exclusive) in done:
            continue
        done.add(id(exclusive))
        choices = " | ".join(_option_words(member) for member in exclusive._group_actions)
        words.append(f"({choices})" if exclusive.required else f"[{choices}]")
    return " ".join(words)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        help_text += " (one of: " + ", ".join(str(choice) for choice in action.choices) + ")"
    return help_text


def _options(parser: argparse.ArgumentParser, actions: Iterable[argparse.Action]) -> Iterator[str]:
    for action in actions:
        yield ".TP"
        yield _option_words(action)
        yield text(_help(parser, action))


def _literal(block: str) -> Iterator[str]:
    """Lines shown as written, indented (examples)."""
    yield ".RS 4"
    yield ".nf"
    for line in block.splitlines():
        yield text(line)
    yield ".fi"
    yield ".RE"


def _examples_block(epilog: str | None) -> str | None:
    """The examples of a command's --help, without their heading line."""
    if not epilog:
        return None
    lines = epilog.splitlines()
    if lines and lines[0].rstrip().endswith(":"):
        lines = lines[1:]
    return "\n".join(line[2:] if line.startswith("  ") else line for line in lines)


def exit_codes(help_text: str = EXIT_CODES_HELP) -> list[tuple[int, str]]:
    """The (status, meaning) pairs of vpnctl's exit status help."""
    codes = []
    for line in help_text.splitlines():
        match = re.match(r"\s+(\d+)\s+(.+)$", line)
        if match:
            codes.append((int(match.group(1)), match.group(2).strip()))
    return codes


# --- the page ---------------------------------------------------------------


def _date(environ: dict[str, str] | os._Environ[str]) -> str:
    epoch = environ.get("SOURCE_DATE_EPOCH", "")
    when = int(epoch) if epoch.isdigit() else time.time()
    return time.strftime("%Y-%m-%d", time.gmtime(when))


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vpnd")
    except metadata.PackageNotFoundError:
        return "unknown"


def manpage(
    parser: argparse.ArgumentParser | None = None,
    *,
    date: str | None = None,
    version: str | None = None,
) -> str:
    """vpnctl(1) in roff (man macros)."""
    if parser is None:
        from vpnctl.cli import build_parser

        parser = build_parser()
    date = date if date is not None else _date(os.environ)
    version = version if version is not None else _version()
    commands = subcommands(parser)
    helps = command_help(parser)
    out: list[str] = [
        ".\\\" Generated by `python -m vpnctl.manpage` from vpnctl's parser; do not edit.",
        f'.TH VPNCTL 1 "{date}" "vpnd {text(version)}" "User Commands"',
        # Options are not to be split at a hyphen of their own.
        ".nh",
        ".SH NAME",
        f"vpnctl \\- {text(NAME_LINE)}",
        ".SH SYNOPSIS",
        f"{_bold('vpnctl')} [{_bold('--system')}] {_italic('COMMAND')}"
        f" [{_italic('OPTIONS')}] [{_italic('ARGUMENTS')}]",
        ".br",
        f"{_bold('vpnctl')} {_italic('COMMAND')} {_bold('--help')}",
        ".br",
        f"{_bold('vpnctl')} {_bold('--help')} | {_bold('--version')}",
        ".SH DESCRIPTION",
        text(parser.description or ""),
    ]
    for paragraph in _DESCRIPTION:
        out += [".PP", text(paragraph)]
    out += [".SH OPTIONS", ".TP", f"{_bold('-h')}, {_bold('--help')}"]
    out.append(text("Show the help of vpnctl, or after a command of that command, and exit."))
    out += _options(parser, _shown(parser))
    out.append(".SH COMMANDS")
    for name, sub in commands.items():
        out += [f".SS {name}", synopsis(name, sub), ".PP", text(sub.description or helps[name])]
        out += _options(sub, _shown(sub))
        examples = _examples_block(sub.epilog)
        if examples:
            out += [".PP", "Examples:"]
            out += _literal(examples)
    out.append(".SH EXIT STATUS")
    for code, meaning in exit_codes():
        out += [".TP", _bold(str(code)), text(meaning)]
    out.append(".SH ENVIRONMENT")
    for variable, meaning in _ENVIRONMENT:
        out += [".TP", _bold(variable), text(meaning)]
    out.append(".SH FILES")
    for path, meaning in _FILES:
        out += [".TP", _italic(path), text(meaning)]
    out += [".SH SEE ALSO", ", ".join(_bold_reference(page) for page in _SEE_ALSO)]
    return "\n".join(out) + "\n"


def _bold_reference(page: str) -> str:
    name, _, section = page.partition("(")
    return f"{_bold(name)}({section}"


def main() -> int:
    """Write the page to standard output."""
    sys.stdout.write(manpage())
    return 0


if __name__ == "__main__":
    sys.exit(main())
