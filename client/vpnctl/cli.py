"""vpnctl's command line: argument parsing, the commands, and main().

The commands talk to vpnd through `vpnctl.bus.DaemonBus` and draw their
output with `vpnctl.render`. The bus module (and jeepney with it) is imported
only once a command runs, so `--help` and usage errors stay cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast

from vpnctl import helptext, render
from vpnctl.contract import (
    CONNECTED,
    CONNECTION_INTERFACE,
    CONNECTIONS_PATH,
    DISCONNECTED,
    DISCOVERY_KINDS,
    ERROR_PREFIX,
    FAILED,
    MANAGER_INTERFACE,
    MANAGER_PATH,
    NEEDS_INPUT,
    PROPERTIES_INTERFACE,
    SERVER_INTERFACE,
    SERVER_KINDS,
    TERMINAL_STATES,
)
from vpnctl.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    BusError,
    InputRequired,
    UsageError,
    VpnctlError,
    WaitTimeout,
    describe,
    named_error,
)

if TYPE_CHECKING:
    from vpnctl.bus import DaemonBus, PendingCall, Subscription

Handler = Callable[["DaemonBus", argparse.Namespace, IO[str]], int]

CONNECT_TIMEOUT = 60.0
DISCONNECT_TIMEOUT = 30.0
LOGIN_TIMEOUT = 600.0
DISCOVER_LIMIT = 50
MAX_DISCOVER_RESULTS = 5000

SYSTEM_HELP = (
    "use the system-wide servers (owned by root, used at boot) instead of your own;"
    " needs root or polkit's org.vpnd.manage-system-servers"
)

# The hidden command the completion scripts call: `vpnctl __complete servers`.
COMPLETE_COMMAND = "__complete"

_LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


# --- pure helpers ---------------------------------------------------------


def choose_locale(environ: Mapping[str, str]) -> str:
    """The user's locale for display names: the first set of LANGUAGE, LC_ALL,
    LC_MESSAGES, LANG; "" (the server's default) for none, C or POSIX."""
    for variable in _LOCALE_VARIABLES:
        value = environ.get(variable, "")
        if variable == "LANGUAGE":
            # A priority list ("nl_NL:nl:en"); the daemon takes one locale.
            value = next((part for part in value.split(":") if part), "")
        if value:
            if value.split(".")[0] in ("C", "POSIX"):
                return ""
            return value
    return ""


def choose_profile(profiles: Sequence[Mapping[str, Any]]) -> str:
    """The profile to connect with when none was asked for: the server's only one."""
    ids = [str(profile.get("profile_id", "")) for profile in profiles]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise VpnctlError("the server offers no profiles to connect with")
    raise UsageError(
        "the server has several profiles; choose one with --profile: " + ", ".join(ids)
    )


def connection_changes(
    signal_interface: str, member: str, body: Sequence[Any]
) -> dict[str, Any] | None:
    """What a signal on a connection object says changed; None when it says nothing
    about Connection1, {} when properties were invalidated and must be read again."""
    if signal_interface == PROPERTIES_INTERFACE and member == "PropertiesChanged":
        interface, changed, invalidated = body
        if interface != CONNECTION_INTERFACE:
            return None
        return {} if invalidated else dict(changed)
    if signal_interface == CONNECTION_INTERFACE and member == "StateChanged":
        state, error, message = body
        return {"State": state, "Error": error, "ErrorMessage": message}
    return None


# --- argument parsing -----------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line that points to the help."""

    def error(self, message: str) -> NoReturn:
        """Print one line on stderr and exit with the usage status."""
        self.exit(EXIT_USAGE, f"vpnctl: {message} (see `{self.prog} --help`)\n")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every argument added, to check it, and
        # its default width comes from shutil, whose import (with the compression
        # modules it loads) is a good part of a command's start: the same width.
        formatter_class: Any = self.formatter_class
        return cast(argparse.HelpFormatter, formatter_class(prog=self.prog, width=_help_width()))


def _help_width() -> int:
    """What argparse takes by default: the terminal's columns (as
    `shutil.get_terminal_size` finds them: $COLUMNS, then stdout's terminal, else 80) less 2."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


class _VersionAction(argparse.Action):
    """--version, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show vpnctl's version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib import metadata

        try:
            version = metadata.version("vpnd")
        except metadata.PackageNotFoundError:
            version = "unknown"
        sys.stdout.write(f"vpnctl {version}\n")
        parser.exit()


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 seconds")
    return seconds


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for vpnctl's command line; each command sets `handler`.

    With `command`, the parser knows that command alone: it parses that
    command's words the same, and is set up in a fraction of the time.
    """
    parser = _Parser(
        prog="vpnctl",
        description="Control vpnd, the VPN daemon, on the system bus.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--system", action="store_true", help=SYSTEM_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, handler, help, system, arguments in _COMMANDS:
        if command is not None and name != command:
            continue
        sub = commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=helptext.epilog(name),
            formatter_class=helptext.HelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if system:
            # Also accepted after the command; SUPPRESS keeps a --system given before it.
            sub.add_argument(
                "--system", action="store_true", default=argparse.SUPPRESS, help=SYSTEM_HELP
            )
        arguments(sub)
    return parser


def chosen_command(words: Sequence[str]) -> str | None:
    """The command the words name when only --system comes before it; None when
    anything else does (--help, --version, an unknown word), or no command is named."""
    for word in words:
        if word != "--system":
            return word if word in COMMAND_NAMES else None
    return None


SERVER_HELP = "the server's URL, or an unambiguous part of it such as its host name"


def _add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("url", metavar="URL", nargs="?", help="the server's https URL")
    sub.add_argument(
        "--org",
        metavar="ORG_ID",
        help="secure internet: the organization (an org_id `vpnctl discover` shows) whose"
        " home server to add; one login then serves every location",
    )
    sub.add_argument(
        "--access-server",
        action="store_true",
        help="an OpenVPN Access Server: sign in with a user name and password now",
    )
    _sign_in_arguments(sub)


def _json_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON")


def _login_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)
    _browser_login_arguments(sub)
    _sign_in_arguments(sub)


def _renew_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)
    _browser_login_arguments(sub)


def _profiles_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)
    sub.add_argument("--json", action="store_true", help="print JSON")


def _messages_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", nargs="?", help=SERVER_HELP)
    sub.add_argument("--json", action="store_true", help="print JSON")


def _connect_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)
    sub.add_argument(
        "--profile", metavar="ID", help="the profile to use (needed if the server has several)"
    )
    sub.add_argument("--tcp", action="store_true", help="prefer OpenVPN over TCP")
    sub.add_argument(
        "--no-wait", action="store_true", help="return once the connection has started"
    )
    sub.add_argument(
        "--no-browser",
        action="store_true",
        help="for a login in the browser, only print the address to open",
    )
    sub.add_argument(
        "--timeout",
        type=_timeout,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the tunnel (default {CONNECT_TIMEOUT:g})",
    )


def _answer_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--no-browser",
        action="store_true",
        help="for a login in the browser, only print the address to open",
    )


def _status_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument(
        "--watch",
        action="store_true",
        help="keep following it, a line (with --json a record) per change, until Ctrl-C",
    )


def _monitor_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--notify",
        action="store_true",
        help="also as desktop notifications, with actions (renew, answer, log in)",
    )


def _disconnect_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--no-wait", action="store_true", help="return without waiting for the tunnel to close"
    )
    sub.add_argument(
        "--timeout",
        type=_timeout,
        default=DISCONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the tunnel to close (default {DISCONNECT_TIMEOUT:g})",
    )


def _location_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "where",
        metavar="COUNTRY",
        nargs="?",
        help='a country code (or a location\'s URL); "" goes back to the home server',
    )
    sub.add_argument("--server", metavar="SERVER", help="the secure-internet server (if several)")
    sub.add_argument("--json", action="store_true", help="print JSON")


def _server_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)


def _autoconnect_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("server", metavar="SERVER", help=SERVER_HELP)
    choice = sub.add_mutually_exclusive_group(required=True)
    choice.add_argument("--profile", metavar="ID", help="the profile to connect with")
    choice.add_argument("--off", action="store_true", help="no longer connect it at start")


def _discover_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "query",
        metavar="QUERY",
        nargs="?",
        default="",
        help="words of the name (case, accents and one typo do not matter);"
        " without it, list the servers",
    )
    sub.add_argument(
        "--kind",
        action="append",
        choices=DISCOVERY_KINDS,
        help="search only these (repeat for several; default: all with QUERY, servers without)",
    )
    sub.add_argument(
        "--limit",
        type=_limit,
        default=None,
        metavar="N",
        help=f"at most N results (default {DISCOVER_LIMIT} with QUERY, all without)",
    )
    sub.add_argument("--json", action="store_true", help="print JSON")


# --- commands -------------------------------------------------------------


def _find_server(bus: DaemonBus, args: argparse.Namespace) -> str:
    method = "FindSystemServer" if args.system else "FindServer"
    (path,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, method, "s", args.server)
    return str(path)


def _write(out: IO[str], text: str) -> None:
    out.write(text + "\n")


def _browser_login_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--no-browser",
        action="store_true",
        help="print the address to open on any device, then ask for the address the browser"
        " ends at (for a machine without a browser)",
    )
    sub.add_argument(
        "--timeout",
        type=_timeout,
        default=LOGIN_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the login to finish (default {LOGIN_TIMEOUT:g})",
    )


def _sign_in_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--user", metavar="NAME", help="Access Server: the user name (else asked)")
    sub.add_argument(
        "--autologin",
        action="store_true",
        help="Access Server: the profile that connects without asking (needs the permission)",
    )
    sub.add_argument(
        "--remember", action="store_true", help="Access Server: keep the password (sealed)"
    )
    sub.add_argument(
        "--password-stdin",
        action="store_true",
        help="Access Server: read the password from standard input instead of asking",
    )
    sub.add_argument(
        "--token-url",
        metavar="LINK",
        help="Access Server with a web login (SAML): the profile link its web page offers"
        " (openvpn://import-profile/…) instead of a user name and password",
    )


def _ask(prompt: str, *, echo: bool, hint: str = "for a password, use --password-stdin") -> str:
    """A line from the person at the terminal; InputRequired when there is none."""
    if not sys.stdin.isatty():
        raise InputRequired(
            f"vpnd needs an answer ({prompt.strip().rstrip(':')}) and there is no terminal to"
            f" ask on ({hint})"
        )
    if echo:
        return input(prompt)
    import getpass

    return getpass.getpass(prompt)


def _sign_in(bus: DaemonBus, path: str, args: argparse.Namespace, out: IO[str]) -> None:
    """Sign in to an Access Server: user name and password, then any question it asks;
    or the profile link of its web login."""
    if args.token_url:
        bus.call(path, SERVER_INTERFACE, "SignIn", "a{ss}", {"token_url": args.token_url})
        return
    username = args.user or _ask("User name: ", echo=True)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = _ask(f"Password for {username}: ", echo=False)
    fields = {
        "username": username,
        "password": password,
        "profile": "autologin" if args.autologin else "userlogin",
        "remember": "yes" if args.remember else "no",
    }
    while True:
        (asked,) = bus.call(path, SERVER_INTERFACE, "SignIn", "a{ss}", fields)
        if "challenge" not in asked:
            return
        question = str(asked["challenge"])
        answer = _ask(f"{question}: ", echo=bool(asked.get("echo")))
        fields = {"response": answer}


def _cmd_add(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    if not args.url and not args.org:
        raise UsageError("name the server's URL, or an organization with --org")
    if args.org:
        options = {"org_id": ("s", args.org), "system": ("b", bool(args.system))}
        (path,) = bus.call(
            MANAGER_PATH, MANAGER_INTERFACE, "AddServerWithOptions", "sa{sv}", "", options
        )
        properties = bus.get_all(path, SERVER_INTERFACE)
        name = properties.get("DisplayName") or args.org
        _write(out, f"Added {properties.get('Url')} (secure internet for {name})")
        _support(properties, out)
        system = "--system " if args.system else ""
        _write(out, f"Log in with: vpnctl {system}login {properties.get('Host')}")
        return EXIT_OK
    if args.access_server:
        options = {"kind": ("s", "access-server"), "system": ("b", bool(args.system))}
        (path,) = bus.call(
            MANAGER_PATH, MANAGER_INTERFACE, "AddServerWithOptions", "sa{sv}", args.url, options
        )
        try:
            _sign_in(bus, path, args, out)
        except (VpnctlError, BusError, KeyboardInterrupt):
            # A server that could not be signed in to is not kept.
            bus.call(MANAGER_PATH, MANAGER_INTERFACE, "RemoveServer", "o", path)
            raise
        _write(out, f"Added {bus.get(path, SERVER_INTERFACE, 'Url')} and signed in")
        return EXIT_OK
    method = "AddSystemServer" if args.system else "AddServer"
    (path,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, method, "s", args.url)
    properties = bus.get_all(path, SERVER_INTERFACE)
    name = properties.get("DisplayName")
    _write(out, f"Added {properties.get('Url', args.url)}" + (f" ({name})" if name else ""))
    _support(properties, out)
    system = "--system " if args.system else ""
    _write(out, f"Log in with: vpnctl {system}login {properties.get('Host') or args.url}")
    return EXIT_OK


def _secure_internet_server(bus: DaemonBus, args: argparse.Namespace) -> str:
    """The object path of the caller's secure-internet server (the one named, or the only one)."""
    if args.server:
        return _find_server(bus, args)
    method = "ListSystemServers" if args.system else "ListServers"
    (servers,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, method)
    ours = [path for path, p in servers.items() if p.get("Kind") == "secure-internet"]
    if len(ours) == 1:
        return str(ours[0])
    if not ours:
        raise VpnctlError("no secure-internet server is added; add one with `vpnctl add --org`")
    raise UsageError("several secure-internet servers are added; name one with --server")


def _cmd_location(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path = _secure_internet_server(bus, args)
    if args.where is not None:
        bus.call(path, SERVER_INTERFACE, "SetLocation", "s", args.where)
    properties = bus.get_all(path, SERVER_INTERFACE)
    current = str(properties.get("Location") or properties.get("Url") or "")
    if args.where is not None and not args.json:
        _write(out, f"{properties.get('Host')} now connects at {current}")
        return EXIT_OK
    options = {
        "kinds": ("as", ["secure-internet"]),
        "language": ("s", choose_locale(os.environ)),
        "limit": ("u", 0),
    }
    (results,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, "Discover", "sa{sv}", "", options)
    records = [
        {
            "country_code": str(r.get("country_code", "")),
            "display_name": str(r.get("display_name", "")),
            "base_url": str(r.get("base_url", "")),
            "current": str(r.get("base_url", "")) == current,
        }
        for r in results
    ]
    records.sort(key=lambda r: (r["country_code"], r["display_name"], r["base_url"]))
    if args.json:
        _write(out, render.to_json(records))
        return EXIT_OK
    for record in records:
        mark = "*" if record["current"] else " "
        name = record["display_name"] or record["base_url"]
        _write(out, f"{mark} {record['country_code'] or '--':<3} {name}  {record['base_url']}")
    return EXIT_OK


def _support(properties: Mapping[str, Any], out: IO[str]) -> None:
    """The support contacts the discovery list gives, if any."""
    contacts = [str(c) for c in properties.get("SupportContact", ())]
    if contacts:
        _write(out, "Support: " + ", ".join(contacts))


def _cmd_remove(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path = _find_server(bus, args)
    url = bus.get(path, SERVER_INTERFACE, "Url")
    bus.call(MANAGER_PATH, MANAGER_INTERFACE, "RemoveServer", "o", path)
    _write(out, f"Removed {url}")
    return EXIT_OK


def _cmd_autoconnect(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path = _find_server(bus, args)
    profile = "" if args.off else args.profile
    bus.call(path, SERVER_INTERFACE, "SetAutoconnect", "s", profile)
    url = bus.get(path, SERVER_INTERFACE, "Url")
    if profile:
        _write(out, f"{url} connects with profile {profile} whenever vpnd starts")
        if not bus.get(path, SERVER_INTERFACE, "Authorized"):
            _write(out, f"It needs a login first: `vpnctl --system login {args.server}`")
    else:
        _write(out, f"{url} no longer connects when vpnd starts")
    return EXIT_OK


def _cmd_list(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    method = "ListSystemServers" if args.system else "ListServers"
    (servers,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, method)
    records = render.server_records(servers)
    _write(
        out, render.to_json(records) if args.json else render.render_servers(records, time.time())
    )
    return EXIT_OK


def _get_profiles(bus: DaemonBus, path: str) -> list[dict[str, Any]]:
    (profiles,) = bus.call(path, SERVER_INTERFACE, "GetProfiles", "s", choose_locale(os.environ))
    return list(profiles)


def _cmd_profiles(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    records = render.profile_records(_get_profiles(bus, _find_server(bus, args)))
    _write(out, render.to_json(records) if args.json else render.render_profiles(records))
    return EXIT_OK


def _get_messages(bus: DaemonBus, path: str) -> list[dict[str, Any]]:
    (messages,) = bus.call(path, SERVER_INTERFACE, "GetMessages", "s", choose_locale(os.environ))
    return list(messages)


def _cmd_messages(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    if args.server is not None:
        paths = [_find_server(bus, args)]
    else:
        method = "ListSystemServers" if args.system else "ListServers"
        (servers,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, method)
        paths = [record["object_path"] for record in render.server_records(servers)]
    records = []
    for path in paths:
        url = str(bus.get(path, SERVER_INTERFACE, "Url"))
        records += render.message_records(url, _get_messages(bus, path))
    _write(out, render.to_json(records) if args.json else render.render_messages(records))
    return EXIT_OK


def _active_connection(bus: DaemonBus) -> tuple[str, dict[str, Any] | None]:
    """The active connection's path and properties; None for none, or one that just went."""
    path = str(bus.get(MANAGER_PATH, MANAGER_INTERFACE, "ActiveConnection"))
    if path == "/":
        return path, None
    try:
        return path, bus.get_all(path, CONNECTION_INTERFACE)
    except BusError as error:
        # The connection may have gone between the two calls.
        if error.name != "org.freedesktop.DBus.Error.UnknownObject":
            raise
        return path, None


def _cmd_status(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    if args.watch:
        from vpnctl.watch import watch_status

        return watch_status(bus, out, as_json=args.json)
    record = render.status_record(*_active_connection(bus))
    _write(out, render.to_json(record) if args.json else render.render_status(record, time.time()))
    return EXIT_OK


def _cmd_monitor(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    from vpnctl.monitor import monitor

    return monitor(bus, out, notify_desktop=args.notify)


def _cmd_login(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path = _find_server(bus, args)
    if bus.get(path, SERVER_INTERFACE, "Kind") == "access-server":
        _sign_in(bus, path, args, out)
        _write(out, f"Signed in to {bus.get(path, SERVER_INTERFACE, 'Url')}")
        return EXIT_OK
    _browser_login(bus, path, "Authorize", args, out)
    _write(out, f"Logged in to {bus.get(path, SERVER_INTERFACE, 'Url')}")
    return EXIT_OK


def _cmd_renew(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path = _find_server(bus, args)
    _browser_login(bus, path, "Renew", args, out)
    _write(out, f"Renewed the session at {bus.get(path, SERVER_INTERFACE, 'Url')}")
    return EXIT_OK


def _browser_login(
    bus: DaemonBus, path: str, method: str, args: argparse.Namespace, out: IO[str]
) -> None:
    """Call `method` (Authorize, Renew), open its URL and wait for AuthorizationFinished."""
    # Subscribed before the call: a quick login must not finish unseen.
    finished = bus.subscribe(path=path, interface=SERVER_INTERFACE, member="AuthorizationFinished")
    (url,) = bus.call(path, SERVER_INTERFACE, method)
    if args.no_browser:
        _write(out, f"Open this address in a browser to log in:\n{url}")
    else:
        _write(out, f"Opening the login page in your browser. If nothing opens, visit:\n{url}")
    # The address must be on screen (or in the pipe) before the wait starts.
    out.flush()
    if not args.no_browser:
        import webbrowser

        # When no browser can be started, the address printed above is the way.
        with contextlib.suppress(webbrowser.Error, OSError):
            webbrowser.open(url)
    deadline = time.monotonic() + args.timeout
    if args.no_browser and sys.stdin.isatty():
        # Headless: the browser runs elsewhere, and its last page (this
        # machine's loopback address) cannot load there; its address can be
        # pasted back. An empty line waits for a browser on this machine.
        _write(
            out,
            "After logging in, the browser is sent to an address starting with"
            " http://127.0.0.1 that fails to load on another device.\n"
            "Paste that address here (or press Enter to wait):",
        )
        out.flush()
        address = sys.stdin.readline().strip()
        if address:
            bus.call(path, SERVER_INTERFACE, "CompleteAuthorization", "s", address)
    elif out.isatty():
        _write(out, "Waiting for the login to finish (Ctrl-C stops waiting)…")
        out.flush()
    try:
        signal = bus.next_signal(finished, deadline)
    except TimeoutError:
        raise WaitTimeout(
            f"the login did not finish within {args.timeout:g} s; "
            f"run `vpnctl login {args.server}` to try again"
        ) from None
    success, error, message = signal.body
    if not success:
        raise named_error(error or ERROR_PREFIX + "AuthorizationFailed", message)


def _follow_connection(
    bus: DaemonBus,
    subscription: Subscription,
    path: str,
    until: frozenset[str],
    deadline: float,
    progress: Callable[[Mapping[str, Any]], None],
    also: Callable[[Mapping[str, Any]], bool] = lambda properties: False,
) -> dict[str, Any]:
    """Follow a connection's properties until its State is in `until` (or
    `also` says so); return them.

    Raises TimeoutError when the deadline passes first.
    """
    properties = bus.get_all(path, CONNECTION_INTERFACE)
    # Whatever was queued before that answer is older than it.
    subscription.clear()
    progress(properties)
    while properties.get("State") not in until and not also(properties):
        signal = bus.next_signal(subscription, deadline)
        if signal.path != path:
            continue
        changes = connection_changes(signal.interface, signal.member, signal.body)
        if changes is None:
            continue
        if changes:
            properties.update(changes)
        else:
            properties = bus.get_all(path, CONNECTION_INTERFACE)
        progress(properties)
    return properties


def _progress_printer(out: IO[str]) -> Callable[[Mapping[str, Any]], None]:
    """Print State (Detail) as it changes, on a terminal only."""
    if not out.isatty():
        return lambda properties: None
    shown: list[str] = []

    def show(properties: Mapping[str, Any]) -> None:
        line = render.describe_state(
            str(properties.get("State", "")), str(properties.get("Detail") or "") or None
        )
        if not shown or shown[-1] != line:
            shown.append(line)
            _write(out, "  " + line)
            out.flush()

    return show


def _cmd_connect(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    server = _find_server(bus, args)
    profile = args.profile or choose_profile(_get_profiles(bus, server))
    # The connection's path is known only after Connect returns, but its first
    # changes may come before: listen to all connections, filter later.
    changes = bus.subscribe(path_namespace=CONNECTIONS_PATH)
    (path,) = bus.call(
        server, SERVER_INTERFACE, "Connect", "sa{sv}", profile, {"prefer_tcp": ("b", args.tcp)}
    )
    if args.no_wait:
        _write(out, f"Connecting with profile {profile}; follow it with `vpnctl status`")
        return EXIT_OK
    # Asked now and answered while the tunnel comes up: whether to show a message of the day.
    kind = bus.start(server, PROPERTIES_INTERFACE, "Get", "ss", SERVER_INTERFACE, "Kind")
    if out.isatty():
        _write(out, f"Connecting with profile {profile}…")
    progress = _progress_printer(out)
    answered = 0
    try:
        while True:
            # The time a person takes to answer does not count.
            deadline = time.monotonic() + args.timeout
            properties = _follow_connection(
                bus,
                changes,
                path,
                TERMINAL_STATES | {CONNECTED},
                deadline,
                progress,
                also=_asks_other_than(answered),
            )
            if properties.get("State") != NEEDS_INPUT:
                break
            answered = _answer_prompt(bus, path, properties, args, out)
    except TimeoutError:
        state = bus.get(path, CONNECTION_INTERFACE, "State")
        raise WaitTimeout(
            f"the tunnel did not come up within {args.timeout:g} s (it is still {state}); "
            "see `vpnctl status`, or stop it with `vpnctl disconnect`"
        ) from None
    state = properties.get("State")
    if state == FAILED:
        message = str(properties.get("ErrorMessage") or "the connection failed")
        raise named_error(str(properties.get("Error", "")), message)
    if state == DISCONNECTED:
        raise VpnctlError("the connection was closed before the tunnel came up")
    record = render.status_record(path, properties)
    addresses = ", ".join(a for a in (record["tunnel_ip"], record["tunnel_ipv6"]) if a)
    where = record["server_url"] or args.server
    _write(
        out,
        f"Connected to {where} (profile {record['profile'] or profile})"
        + (f", tunnel IP {addresses}" if addresses else ""),
    )
    _show_motd(bus, server, kind, out)
    return EXIT_OK


def _open_prompt(properties: Mapping[str, Any]) -> int:
    """The id of the question a connection asks now, 0 for none."""
    prompt = properties.get("Prompt")
    if properties.get("State") != NEEDS_INPUT or not isinstance(prompt, Mapping):
        return 0
    return int(prompt.get("id", 0))


def _asks_other_than(answered: int) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a connection asks a question other than the one `answered` (an id)."""
    return lambda properties: _open_prompt(properties) not in (0, answered)


def _answer_prompt(
    bus: DaemonBus, path: str, properties: Mapping[str, Any], args: argparse.Namespace, out: IO[str]
) -> int:
    """Ask the person what the connection asks and send the answer; return the
    question's id. A web login is opened in the browser instead, and a question
    answered meanwhile by another client is left alone."""
    prompt = render.prompt_record(properties.get("Prompt"))
    if prompt is None:
        return 0
    if prompt["kind"] == "web":
        url = prompt["url"] or ""
        _write(out, f"{prompt['message']} If nothing opens, visit:\n{url}")
        out.flush()
        if not args.no_browser:
            import webbrowser

            with contextlib.suppress(webbrowser.Error, OSError):
                webbrowser.open(url)
        return int(prompt["id"])
    hint = "answer it from a terminal with `vpnctl answer`"
    if not sys.stdin.isatty():
        raise InputRequired(
            f"vpnd needs an answer ({prompt['message']}) and there is no terminal to ask on"
            f" ({hint})"
        )
    _write(out, prompt["message"])
    out.flush()
    while True:
        values = {}
        for field in prompt["fields"]:
            # A challenge's text is its message, shown above.
            label = "Answer" if field["label"] == prompt["message"] else field["label"]
            value = _ask(f"{label}: ", echo=field["echo"], hint=hint)
            if value or field["required"]:
                values[field["name"]] = value
        try:
            bus.call(path, CONNECTION_INTERFACE, "Answer", "ua{ss}", prompt["id"], values)
        except BusError as error:
            if error.name == ERROR_PREFIX + "InvalidArgument":
                _write(out, f"vpnctl: {error.message}; try again")
                continue
            if error.name != ERROR_PREFIX + "NotFound":
                raise
            # Answered from elsewhere, or the connection moved on: follow it.
        return int(prompt["id"])


def _cmd_answer(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path, properties = _active_connection(bus)
    if properties is None or not _open_prompt(properties):
        _write(out, "Nothing is asked.")
        return EXIT_OK
    _answer_prompt(bus, path, properties, args, out)
    return EXIT_OK


def _show_motd(bus: DaemonBus, server: str, kind: PendingCall, out: IO[str]) -> None:
    """The server's message of the day, once the tunnel is up (it must not delay it);
    `kind` is the Get of the server's Kind."""
    # API v3 has no messages: no need to ask.
    if bus.result(kind) == ("eduvpn-v3",):
        return
    try:
        messages = _get_messages(bus, server)
    except BusError:
        return  # the tunnel is up; a notice that cannot be fetched changes nothing
    for message in messages:
        if message.get("type") == "motd" and message.get("text"):
            _write(out, str(message["text"]))


def _cmd_disconnect(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    path, properties = _active_connection(bus)
    if properties is None or properties.get("State") in TERMINAL_STATES:
        _write(out, "Not connected.")
        return EXIT_OK
    changes = bus.subscribe(path=path)
    bus.call(MANAGER_PATH, MANAGER_INTERFACE, "Disconnect")
    if args.no_wait:
        _write(out, "Disconnecting.")
        return EXIT_OK
    try:
        _follow_connection(
            bus, changes, path, TERMINAL_STATES, time.monotonic() + args.timeout, lambda p: None
        )
    except TimeoutError:
        raise WaitTimeout(
            f"the tunnel did not close within {args.timeout:g} s; see `vpnctl status`"
        ) from None
    _write(out, "Disconnected.")
    return EXIT_OK


def _limit(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= MAX_DISCOVER_RESULTS:
        raise argparse.ArgumentTypeError(f"a number from 1 to {MAX_DISCOVER_RESULTS}")
    return int(value)


def _cmd_discover(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    query = args.query.strip()
    # Without a query, the servers: the organization list is fetched only when asked for.
    kinds = args.kind or (list(DISCOVERY_KINDS) if query else list(SERVER_KINDS))
    limit = args.limit if args.limit is not None else (DISCOVER_LIMIT if query else 0)
    options = {
        "kinds": ("as", sorted(set(kinds))),
        "language": ("s", choose_locale(os.environ)),
        "limit": ("u", limit),
    }
    (results,) = bus.call(MANAGER_PATH, MANAGER_INTERFACE, "Discover", "sa{sv}", query, options)
    records = render.discovery_records(results)
    _write(out, render.to_json(records) if args.json else render.render_discovery(records))
    if not args.json:
        for note in render.discovery_notes(records):
            print(f"vpnctl: {note}", file=sys.stderr)
    return EXIT_OK


# --- the commands' table ---------------------------------------------------

ArgumentsAdder = Callable[[argparse.ArgumentParser], None]

# Every command in the order --help lists them: its name, handler, what it
# does, whether it also takes --system after its name, and its own arguments.
_COMMANDS: tuple[tuple[str, Handler, str, bool, ArgumentsAdder], ...] = (
    (
        "add",
        _cmd_add,
        "add an eduVPN / Let's Connect! server, or an OpenVPN Access Server",
        True,
        _add_arguments,
    ),
    ("list", _cmd_list, "list your servers and their authorization", True, _json_argument),
    (
        "login",
        _cmd_login,
        "authorize vpnd to use a server, in your browser",
        True,
        _login_arguments,
    ),
    (
        "renew",
        _cmd_renew,
        "start a new VPN session before this one ends: log in again and reconnect",
        True,
        _renew_arguments,
    ),
    (
        "profiles",
        _cmd_profiles,
        "list the VPN profiles a server offers",
        True,
        _profiles_arguments,
    ),
    (
        "messages",
        _cmd_messages,
        "show the notices of a server, or of all your servers",
        True,
        _messages_arguments,
    ),
    ("connect", _cmd_connect, "connect to a server", True, _connect_arguments),
    (
        "answer",
        _cmd_answer,
        "answer what the current connection asks (a password, a code, a login in the browser)",
        False,
        _answer_arguments,
    ),
    ("status", _cmd_status, "show the current connection", False, _status_arguments),
    (
        "monitor",
        _cmd_monitor,
        "follow the VPN and say what needs you: a session ending, the tunnel lost or back,"
        " a question",
        False,
        _monitor_arguments,
    ),
    (
        "disconnect",
        _cmd_disconnect,
        "disconnect the current connection",
        False,
        _disconnect_arguments,
    ),
    (
        "location",
        _cmd_location,
        "list the secure-internet locations, or connect at another one without a new login",
        True,
        _location_arguments,
    ),
    (
        "remove",
        _cmd_remove,
        "forget a server with its authorization",
        True,
        _server_argument,
    ),
    (
        "autoconnect",
        _cmd_autoconnect,
        "connect a system-wide server whenever vpnd starts, before anyone logs in"
        " (use with --system)",
        True,
        _autoconnect_arguments,
    ),
    (
        "discover",
        _cmd_discover,
        "find a server or organization in the signed eduVPN lists, by name or keyword",
        False,
        _discover_arguments,
    ),
)
COMMAND_NAMES = frozenset(name for name, *_rest in _COMMANDS)


# --- entry point ----------------------------------------------------------


def run(bus: DaemonBus, args: argparse.Namespace, out: IO[str]) -> int:
    """Run the parsed command against vpnd; expected failures raise VpnctlError or BusError."""
    handler: Handler = args.handler
    return handler(bus, args, out)


def failure(error: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """The exit code and stderr line for a failed command, with hints naming its server."""
    return describe(
        error, server=getattr(args, "server", None), system=getattr(args, "system", False)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """vpnctl's entry point: the exit status; expected failures print one line on stderr."""
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == [COMPLETE_COMMAND]:
        # For the shell completion scripts; kept out of the parser and of --help.
        from vpnctl.complete import complete

        return complete(words[1:], sys.stdout)
    # The parser is set up for the command given alone, when that is clear.
    args = build_parser(chosen_command(words)).parse_args(words)
    try:
        from vpnctl.bus import DaemonBus

        # A person at a terminal can answer polkit's password prompt; a script cannot.
        with DaemonBus.open(interactive=sys.stdin.isatty()) as bus:
            return run(bus, args, sys.stdout)
    except (VpnctlError, BusError, KeyboardInterrupt) as error:
        code, line = failure(error, args)
        print(line, file=sys.stderr)
        return code
    except BrokenPipeError:
        # `vpnctl list | head -1`: the reader left. Say nothing, not even at exit.
        _silence_stdout()
        return EXIT_FAILURE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
