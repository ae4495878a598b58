"""Names from vpnd's D-Bus contract (data/dbus/org.vpnd.Daemon.xml).

Kept apart from `vpnctl.bus` so that the command line and the renderers can
use them without loading jeepney.
"""

BUS_NAME = "org.vpnd.Daemon"
MANAGER_PATH = "/org/vpnd/Daemon"
CONNECTIONS_PATH = MANAGER_PATH + "/connections"
MANAGER_INTERFACE = "org.vpnd.Manager1"
SERVER_INTERFACE = "org.vpnd.Server1"
CONNECTION_INTERFACE = "org.vpnd.Connection1"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

ERROR_PREFIX = "org.vpnd.Error."

# Connection1.State values that vpnctl acts on.
CONNECTED = "connected"
NEEDS_INPUT = "needs-input"
DISCONNECTED = "disconnected"
FAILED = "failed"
TERMINAL_STATES = frozenset({DISCONNECTED, FAILED})

# What Manager1.Discover finds: its `kinds` option and each result's kind.
DISCOVERY_KINDS = ("institute-access", "organization", "secure-internet")
SERVER_KINDS = ("institute-access", "secure-internet")
