"""What can go wrong in vpnctl, and the exit code and one-line message for each.

`describe` turns any expected failure into the line a person reads on stderr
and the exit code a script tests. No failure listed here shows a traceback.
"""

from __future__ import annotations

from vpnctl.contract import ERROR_PREFIX

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTHORIZATION_REQUIRED = 3
EXIT_UNREACHABLE = 4
EXIT_DENIED = 5
EXIT_INPUT_REQUIRED = 6
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit status:
  0    success
  1    failure (the daemon refused, the connection failed, a wait timed out)
  2    usage error or invalid argument
  3    the server needs authorization: run `vpnctl login SERVER`
  4    vpnd cannot be reached on the system bus
  5    permission denied
  6    vpnd needs an answer (a password, a code) and there is no terminal to ask on
  130  interrupted"""

UNREACHABLE_MESSAGE = "cannot reach vpnd on the system bus (is it running? `systemctl status vpnd`)"

# Exit codes for the daemon's own errors; every other org.vpnd.Error.* is a
# plain failure whose message (written by the daemon for people) is shown as is.
_VPND_EXIT_CODES: dict[str, int] = {
    "AuthorizationRequired": EXIT_AUTHORIZATION_REQUIRED,
    "WebLoginRequired": EXIT_AUTHORIZATION_REQUIRED,
    "InvalidArgument": EXIT_USAGE,
    "NotAuthorized": EXIT_DENIED,
}

_UNREACHABLE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoServer",
        "org.freedesktop.DBus.Error.Disconnected",
        "org.freedesktop.systemd1.LoadFailed",
        "org.freedesktop.systemd1.NoSuchUnit",
    }
)

NO_ANSWER_MESSAGE = "vpnd did not answer in time (is it stuck? `systemctl status vpnd`)"

_NO_ANSWER_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.Timeout",
        "org.freedesktop.DBus.Error.TimedOut",
    }
)

# vpnd refuses a call past its limit of calls in flight per bus connection
# rather than queue it; the caller may simply try again.
_LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
LIMITS_MESSAGE = "vpnd is busy with other calls from this connection; try again"

_DENIED_MESSAGE = (
    "permission denied: the system's D-Bus or polkit policy does not let you do this "
    "(ask an administrator)"
)

_DENIED_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.PolicyKit1.Error.NotAuthorized",
    }
)

# A daemon that does not know a method, object or signature is older or newer
# than this client; saying so helps more than the bus's own wording.
_MISMATCH_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownProperty",
        "org.freedesktop.DBus.Error.InvalidArgs",
    }
)


# What vpnctl adds to the daemon's own message, by error name. The daemon
# writes for every client and so never names a command; these name ours.
# {vpnctl} is `vpnctl` or `vpnctl --system`, {server} the server as given.
_HINTS: dict[str, str] = {
    "AuthorizationRequired": "run `{vpnctl} login {server}`",
    "AuthorizationFailed": "run `{vpnctl} login {server}` to try again",
    "NotFound": "`{vpnctl} list` shows the servers",
    "WebLoginRequired": "then give vpnctl that link with --token-url LINK (add or login)",
    "Busy": "`vpnctl status` shows the connection, `vpnctl disconnect` ends yours",
}


class VpnctlError(Exception):
    """Base of the failures vpnctl reports as one line and an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(VpnctlError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class WaitTimeout(VpnctlError):
    """An awaited state or signal did not come before the deadline."""


class InputRequired(VpnctlError):
    """vpnd asks a question and there is no terminal to ask the person on."""

    exit_code = EXIT_INPUT_REQUIRED


class BusUnreachable(VpnctlError):
    """The system bus, or vpnd on it, cannot be reached or went away."""

    exit_code = EXIT_UNREACHABLE


class BusError(Exception):
    """A D-Bus call was answered with a named error."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def named_error(name: str, message: str) -> BusError:
    """A BusError for an error that came as a property or a signal argument, not a reply.

    vpnd's own short names ("TunnelFailed") get their prefix; none at all means Failed.
    """
    if name and "." not in name:
        name = ERROR_PREFIX + name
    return BusError(name or ERROR_PREFIX + "Failed", message)


def one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so that text fits on one line."""
    return " ".join(text.split())


def describe(
    error: BaseException, *, server: str | None = None, system: bool = False
) -> tuple[int, str]:
    """The exit code and the one stderr line (with the "vpnctl: " prefix) for an error.

    `server` and `system` are the command's, for the hint added to the daemon's errors."""
    if isinstance(error, VpnctlError):
        code, text = error.exit_code, error.message
    elif isinstance(error, BusError):
        code, text = _describe_bus_error(error.name, error.message)
        hint = _HINTS.get(error.name.removeprefix(ERROR_PREFIX))
        if hint is not None:
            vpnctl = "vpnctl --system" if system else "vpnctl"
            text += " (" + hint.format(vpnctl=vpnctl, server=server or "SERVER") + ")"
    elif isinstance(error, KeyboardInterrupt):
        code, text = EXIT_INTERRUPTED, "interrupted"
    else:
        code, text = EXIT_FAILURE, str(error) or type(error).__name__
    return code, "vpnctl: " + one_line(text)


def _describe_bus_error(name: str, message: str) -> tuple[int, str]:
    if name.startswith(ERROR_PREFIX):
        short = name.removeprefix(ERROR_PREFIX)
        return _VPND_EXIT_CODES.get(short, EXIT_FAILURE), message or _split_name(short)
    if name in _UNREACHABLE_ERRORS or name.startswith("org.freedesktop.DBus.Error.Spawn."):
        return EXIT_UNREACHABLE, UNREACHABLE_MESSAGE
    if name in _NO_ANSWER_ERRORS:
        return EXIT_UNREACHABLE, NO_ANSWER_MESSAGE
    if name == _LIMITS_EXCEEDED:
        return EXIT_FAILURE, LIMITS_MESSAGE
    if name in _DENIED_ERRORS:
        return EXIT_DENIED, _DENIED_MESSAGE
    if name in _MISMATCH_ERRORS:
        return EXIT_FAILURE, (
            "vpnd did not understand the request; are vpnd and vpnctl the same version? "
            f"({name}: {message})"
        )
    return EXIT_FAILURE, f"{message} ({name})" if message else name


def _split_name(name: str) -> str:
    """A readable phrase for an error name without a message ("ServerError" → "server error")."""
    words: list[str] = []
    for char in name:
        if char.isupper() and words:
            words.append(" ")
        words.append(char.lower())
    return "".join(words)
