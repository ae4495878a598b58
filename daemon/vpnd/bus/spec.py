"""vpnd's D-Bus interfaces as data: the one place the code declares its API.

`data/dbus/org.vpnd.Daemon.xml` documents the same API for people; a bus test
checks that the running daemon's introspection matches it. The router
(`vpnd.bus.router`) dispatches calls, answers Properties and Introspect and
builds signals from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbus_fast import introspection as intr
from dbus_fast.constants import ArgDirection, PropertyAccess

ROOT_PATH = "/org/vpnd/Daemon"
SERVERS_PATH = ROOT_PATH + "/servers"
CONNECTIONS_PATH = ROOT_PATH + "/connections"

MANAGER1 = "org.vpnd.Manager1"
SERVER1 = "org.vpnd.Server1"
CONNECTION1 = "org.vpnd.Connection1"

PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"

Args = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Method:
    """A method: its name, (name, signature) of each argument in and out."""

    name: str
    ins: Args = ()
    outs: Args = ()

    @property
    def in_signature(self) -> str:
        """The signature a call must have."""
        return "".join(signature for _name, signature in self.ins)

    @property
    def out_signature(self) -> str:
        """The signature of the reply."""
        return "".join(signature for _name, signature in self.outs)


@dataclass(frozen=True)
class Signal:
    """A signal and its arguments."""

    name: str
    args: Args = ()

    @property
    def signature(self) -> str:
        """The signature of the signal's body."""
        return "".join(signature for _name, signature in self.args)


@dataclass(frozen=True)
class Interface:
    """An interface: methods, read-only properties (name → signature) and signals."""

    name: str
    methods: tuple[Method, ...]
    properties: dict[str, str]
    signals: tuple[Signal, ...]

    def method(self, name: str) -> Method | None:
        """The method called `name`, if the interface has one."""
        return next((m for m in self.methods if m.name == name), None)

    def signal(self, name: str) -> Signal:
        """The signal called `name` (a programming error if there is none)."""
        return next(s for s in self.signals if s.name == name)

    def introspection(self) -> intr.Interface:
        """The interface as introspection data."""
        return intr.Interface(
            self.name,
            methods=[
                intr.Method(
                    m.name,
                    [intr.Arg(sig, ArgDirection.IN, name) for name, sig in m.ins],
                    [intr.Arg(sig, ArgDirection.OUT, name) for name, sig in m.outs],
                )
                for m in self.methods
            ],
            signals=[
                intr.Signal(s.name, [intr.Arg(sig, None, name) for name, sig in s.args])
                for s in self.signals
            ],
            properties=[
                intr.Property(name, sig, PropertyAccess.READ)
                for name, sig in self.properties.items()
            ],
        )


_SERVER_PROPERTIES = {
    "Url": "s",
    "Host": "s",
    "Owner": "u",
    "Kind": "s",
    "Authorized": "b",
    "AuthorizationPending": "b",
    "SessionExpiry": "t",
    "Autoconnect": "s",
    "OrgId": "s",
    "Location": "s",
    "DisplayName": "s",
    "SupportContact": "as",
}

MANAGER = Interface(
    MANAGER1,
    methods=(
        Method("AddServer", (("url", "s"),), (("server", "o"),)),
        Method("AddSystemServer", (("url", "s"),), (("server", "o"),)),
        Method("AddServerWithOptions", (("url", "s"), ("options", "a{sv}")), (("server", "o"),)),
        Method("RemoveServer", (("server", "o"),)),
        Method("FindServer", (("query", "s"),), (("server", "o"),)),
        Method("FindSystemServer", (("query", "s"),), (("server", "o"),)),
        Method("ListServers", (), (("servers", "a{oa{sv}}"),)),
        Method("ListSystemServers", (), (("servers", "a{oa{sv}}"),)),
        Method("Disconnect"),
        Method("Discover", (("query", "s"), ("options", "a{sv}")), (("results", "aa{sv}"),)),
    ),
    properties={"Version": "s", "ActiveConnection": "o"},
    signals=(
        Signal("ServerAdded", (("server", "o"),)),
        Signal("ServerRemoved", (("server", "o"),)),
    ),
)

SERVER = Interface(
    SERVER1,
    methods=(
        Method("Authorize", (), (("url", "s"),)),
        Method("Renew", (), (("url", "s"),)),
        Method("CompleteAuthorization", (("address", "s"),)),
        Method("GetProfiles", (("locale", "s"),), (("profiles", "aa{sv}"),)),
        Method("GetMessages", (("locale", "s"),), (("messages", "aa{sv}"),)),
        Method("SignIn", (("fields", "a{ss}"),), (("next", "a{sv}"),)),
        Method("Connect", (("profile_id", "s"), ("options", "a{sv}")), (("connection", "o"),)),
        Method("SetAutoconnect", (("profile_id", "s"),)),
        Method("SetLocation", (("location", "s"),)),
    ),
    properties=_SERVER_PROPERTIES,
    signals=(
        Signal("AuthorizationFinished", (("success", "b"), ("error", "s"), ("message", "s"))),
    ),
)

CONNECTION = Interface(
    CONNECTION1,
    methods=(
        Method("Disconnect"),
        Method("Answer", (("prompt_id", "u"), ("values", "a{ss}"))),
    ),
    properties={
        "State": "s",
        "Detail": "s",
        "Server": "o",
        "ServerUrl": "s",
        "Profile": "s",
        "Owner": "u",
        "TunnelIP": "s",
        "TunnelIPv6": "s",
        "Remote": "s",
        "BytesIn": "t",
        "BytesOut": "t",
        "ConnectedSince": "t",
        "SessionExpiry": "t",
        "Error": "s",
        "ErrorMessage": "s",
        "Prompt": "a{sv}",
        "DnsServers": "as",
        "DnsDomains": "as",
    },
    signals=(
        Signal("StateChanged", (("state", "s"), ("error", "s"), ("message", "s"))),
        Signal("SessionExpiring", (("seconds_left", "u"), ("expiry", "t"))),
    ),
)


def standard_interfaces() -> list[intr.Interface]:
    """The freedesktop interfaces every vpnd object answers (no ObjectManager)."""
    wanted = (INTROSPECTABLE, PEER, PROPERTIES)
    return [i for i in intr.Node.default().interfaces if i.name in wanted]
