"""The daemon's error tree.

Every error the daemon reports is one of these. Each class names the D-Bus
error it becomes on the bus (`dbus_name`), and its message is written for a
person: it says what went wrong and, where there is one, what to do next.
Nothing else (no traceback, no secret) crosses the bus.
"""

from __future__ import annotations

PREFIX = "org.vpnd.Error."


class VpndError(Exception):
    """Base of every error the daemon reports."""

    dbus_name = PREFIX + "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(VpndError):
    """An argument from a caller or a setting in a config file is malformed."""

    dbus_name = PREFIX + "InvalidArgument"


class NotFound(VpndError):
    """No server, profile or connection matches what the caller named."""

    dbus_name = PREFIX + "NotFound"


class AlreadyExists(VpndError):
    """The caller has already added this server."""

    dbus_name = PREFIX + "AlreadyExists"


class NotAuthorized(VpndError):
    """The caller is not allowed to do this (another user's object, polkit said no)."""

    dbus_name = PREFIX + "NotAuthorized"


class AuthorizationRequired(VpndError):
    """The server has no (more) valid authorization; the user must log in."""

    dbus_name = PREFIX + "AuthorizationRequired"


class SessionExpired(AuthorizationRequired):
    """The VPN session the server granted has ended; a new login starts another."""

    dbus_name = PREFIX + "SessionExpired"


class AuthorizationFailed(VpndError):
    """An OAuth authorization attempt failed (state mismatch, denied, bad token reply)."""

    dbus_name = PREFIX + "AuthorizationFailed"


class ServerUnreachable(VpndError):
    """The server could not be reached: DNS, refused connection, TLS failure, timeout."""

    dbus_name = PREFIX + "ServerUnreachable"


class ServerError(VpndError):
    """The server answered, but with an error or with a document we cannot use."""

    dbus_name = PREFIX + "ServerError"


class ConfigRejected(VpndError):
    """The VPN configuration the server sent is refused by the allow-list."""

    dbus_name = PREFIX + "ConfigRejected"


class TunnelFailed(VpndError):
    """openvpn could not bring the tunnel up, or it went down on its own."""

    dbus_name = PREFIX + "TunnelFailed"


class Busy(VpndError):
    """Another operation holds what this call needs (a connection is already up)."""

    dbus_name = PREFIX + "Busy"


class StorageFailed(VpndError):
    """The daemon's state on disk could not be read or written."""

    dbus_name = PREFIX + "StorageFailed"


# --- refinements of the errors above ----------------------------------------
# Each keeps its parent's D-Bus name, so the bus contract is unchanged; the
# class lets the daemon tell the cases apart (retry, ask again, give up).


class ApiCallFailed(ServerError):
    """The server answered an API v1/v2 call with `ok: false`; the message carries its reason."""


class AccountDisabled(ServerError):
    """The server has disabled the user's account; only its administrators can enable it."""


class TwoFactorRequired(ServerError):
    """The profile needs two-factor authentication and the user has not enrolled in it."""


class ProfileUnavailable(NotFound):
    """The server does not (or no longer) offer the profile to this user."""


class CertificateRejected(ServerError):
    """A client certificate and key from the server cannot be used: unreadable, not a
    matching pair, or outside their validity period."""


class AuthorizationDenied(AuthorizationFailed):
    """The user, or the server, turned the authorization request down."""


class StateMismatch(AuthorizationFailed):
    """An authorization redirect does not carry the state of the request it claims to answer."""


# --- OpenVPN Access Server (REST profile API) ---------------------------------


class CredentialsRejected(AuthorizationFailed):
    """The server refused the user name and password (or the answer to its challenge)."""


class AutologinNotPermitted(ServerError):
    """The server does not let this user download an autologin (unattended) profile."""


class WebAuthRequired(AuthorizationRequired):
    """The server wants a web (SAML) login instead of a user name and password.

    Its own name on the bus, so a client can offer the web login (the
    server's web page hands out a profile link) instead of asking again.

    `provider` is the web-login provider the server named and `flags` its
    flags, both as the server sent them (cleaned), so a client can offer the
    web login.
    """

    dbus_name = PREFIX + "WebLoginRequired"

    def __init__(self, message: str, *, provider: str = "", flags: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.provider = provider
        self.flags = flags


class AccessServerFailure(ServerError):
    """The Access Server reported an internal failure while producing the profile."""


class RestCallFailed(ServerError):
    """An Access Server REST call failed for a reason vpnd does not know; the
    message carries the server's (cleaned) text."""
