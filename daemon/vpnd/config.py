"""The daemon's settings: defaults, /etc/vpnd/vpnd.toml, then command-line options."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from vpnd.errors import InvalidArgument

DEFAULT_CONFIG_FILE = Path("/etc/vpnd/vpnd.toml")

# The keys eduVPN signs its discovery lists with (PROTOCOLS.md).
DISCOVERY_KEYS = (
    "RWRtBSX1alxyGX+Xn3LuZnWUT0w//B6EmTJvgaAxBMYzlQeI+jdrO6KF",
    "RWQKqtqvd0R7rUDp0rWzbtYPA3towPWcLDCl7eY9pBMMI/ohCmrS0WiM",
)
INSTANCE_DISCOVERY_KEY = "E5On0JTtyUVZmcWd+I/FXRm32nSq8R2ioyW7dcu/U88="
MAX_DISCOVERY_KEYS = 16


@dataclass(frozen=True)
class Settings:
    """Everything an administrator can set."""

    state_dir: Path = Path("/var/lib/vpnd")
    runtime_dir: Path = Path("/run/vpnd")
    # A PEM bundle trusted in addition to the system's CAs (a private portal CA).
    ca_file: Path | None = None
    openvpn: str = "openvpn"
    # How openvpn is started: "systemd" (a transient unit per tunnel, under
    # its own user from the start), "child" (the daemon's child, switching
    # users itself) or "auto" (systemd when the daemon runs as a systemd
    # service, else child).
    openvpn_launcher: str = "auto"
    client_id: str = "org.eduvpn.app.linux"
    # Seconds for one HTTP exchange with a server; below the 25 s D-Bus call timeout.
    http_timeout: float = 15.0
    # Seconds the loopback redirect waits for the user to finish in the browser.
    authorization_timeout: float = 300.0
    # Seconds openvpn may take from start to CONNECTED before the attempt fails.
    connect_timeout: float = 60.0
    log_level: str = "info"
    # The store key when no systemd credential `vpnd-store.key` is passed;
    # unset means {state_dir}/store.key.
    store_key_file: Path | None = None
    # Where secrets live: "encrypted-file" (vpnd's own) or a keyring backend
    # named "module:Class", which is then the only backend used.
    secret_backend: str = "encrypted-file"  # noqa: S105 (a backend name)
    # Signed server discovery: the directory of server_list.json and
    # organization_list.json (each with a .minisig), and the minisign keys
    # trusted to sign them; "" turns it off.
    discovery_url: str = "https://disco.eduvpn.org/v2/"
    discovery_keys: tuple[str, ...] = DISCOVERY_KEYS
    # Legacy instance discovery (institute_access.json and secure_internet.json,
    # each with a .sig), used when discovery_url is "", and its Ed25519 key.
    instance_discovery_url: str = ""
    instance_discovery_key: str = INSTANCE_DISCOVERY_KEY
    # Connect at start, set by file for fleets: a system-wide server (its URL
    # or host name) and the profile; this wins over a mark set over D-Bus.
    autoconnect_server: str = ""
    autoconnect_profile: str = ""

    def __post_init__(self) -> None:
        if bool(self.autoconnect_server) != bool(self.autoconnect_profile):
            raise InvalidArgument(
                "autoconnect_server and autoconnect_profile are set together: the server to"
                " connect at start and its profile"
            )

    @property
    def store_key_path(self) -> Path:
        """The key file in effect: `store_key_file`, else `{state_dir}/store.key`."""
        return self.store_key_file or self.state_dir / "store.key"


_PATH_KEYS = {"state_dir", "runtime_dir", "ca_file", "store_key_file"}
_FLOAT_KEYS = {"http_timeout", "authorization_timeout", "connect_timeout"}
_STR_KEYS = {
    "openvpn",
    "client_id",
    "log_level",
    "secret_backend",
    "openvpn_launcher",
    "autoconnect_server",
    "autoconnect_profile",
}
_PROFILE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DISCOVERY_SETTINGS = {
    "discovery_url",
    "discovery_keys",
    "instance_discovery_url",
    "instance_discovery_key",
}
_LAUNCHERS = {"auto", "systemd", "child"}
_CLIENT_IDS = {"org.eduvpn.app.linux", "org.letsconnect-vpn.app.linux"}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
_BACKEND_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)


def _discovery(key: str, value: Any, source: str) -> Any:
    """The discovery settings: URLs ("" or https, kept with a trailing slash) and keys."""
    if key in ("discovery_url", "instance_discovery_url"):
        if not isinstance(value, str):
            raise InvalidArgument(f'{source}: {key} must be an https URL, or "" to turn it off')
        if not value:
            return value
        if not value.startswith("https://"):
            raise InvalidArgument(f"{source}: {key} must start with https://")
        # Loaded only for a URL that is set: "" is the common setting of a test machine.
        from vpnd.protocols.documents import normalize_base_url

        try:
            return normalize_base_url(value)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{source}: {key}: {exc.message}") from None
    if key == "discovery_keys":
        if (
            not isinstance(value, list | tuple)
            or not 0 < len(value) <= MAX_DISCOVERY_KEYS
            or not all(isinstance(item, str) for item in value)
        ):
            raise InvalidArgument(
                f"{source}: discovery_keys must be a list of 1 to {MAX_DISCOVERY_KEYS}"
                " minisign public keys"
            )
        from vpnd.protocols.discovery import parse_public_key

        try:
            for item in value:
                parse_public_key(item)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{source}: discovery_keys: {exc.message}") from None
        return tuple(item.strip() for item in value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{source}: {key} must be a base64 Ed25519 public key")
    from vpnd.protocols.discovery import parse_legacy_key

    try:
        parse_legacy_key(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{source}: {key}: {exc.message}") from None
    return value.strip()


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in _DISCOVERY_SETTINGS:
        return _discovery(key, value, source)
    if key in _PATH_KEYS:
        if not isinstance(value, str) or not value.startswith("/"):
            raise InvalidArgument(f"{source}: {key} must be an absolute path")
        return Path(value)
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidArgument(f"{source}: {key} must be a positive number of seconds")
        return float(value)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{source}: {key} must be a non-empty string")
    if key == "client_id" and value not in _CLIENT_IDS:
        raise InvalidArgument(
            f"{source}: client_id must be one of {', '.join(sorted(_CLIENT_IDS))}"
        )
    if key == "log_level" and value not in _LOG_LEVELS:
        raise InvalidArgument(
            f"{source}: log_level must be one of {', '.join(sorted(_LOG_LEVELS))}"
        )
    if key == "openvpn_launcher" and value not in _LAUNCHERS:
        raise InvalidArgument(
            f"{source}: openvpn_launcher must be one of {', '.join(sorted(_LAUNCHERS))}"
        )
    if key == "autoconnect_profile" and not _PROFILE_ID.fullmatch(value):
        raise InvalidArgument(
            f"{source}: autoconnect_profile is a profile id: 1 to 64 letters, digits, '.', '_'"
            " or '-'"
        )
    if key == "secret_backend" and value != "encrypted-file" and not _BACKEND_SPEC.fullmatch(value):
        raise InvalidArgument(
            f'{source}: secret_backend must be "encrypted-file" or a keyring backend '
            'as "module:Class"'
        )
    return value


def parse(text: str, source: str = "vpnd.toml") -> dict[str, Any]:
    """Read settings from TOML text; unknown keys and bad values are errors."""
    if not text.replace("\r\n", "\n").strip(" \t\n"):
        # No settings file, as by default (TOML's own whitespace only): the
        # parser is not even loaded.
        return {}
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{source}: not valid TOML ({exc})") from None
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise InvalidArgument(f"{source}: unknown setting {key!r}")
        values[key] = _coerce(key, value, source)
    return values


def load(config_file: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the config file (the default one may be absent) and overrides."""
    settings = Settings()
    path = config_file or DEFAULT_CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if config_file is not None:
            raise InvalidArgument(f"{path}: no such config file") from None
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path}: cannot read config file ({exc})") from None
    settings = replace(settings, **parse(text, str(path)))
    if overrides:
        settings = replace(
            settings,
            **{k: _coerce(k, v, "command line") for k, v in overrides.items() if v is not None},
        )
    if settings.ca_file is not None and not settings.ca_file.is_file():
        raise InvalidArgument(f"ca_file {settings.ca_file} does not exist")
    return settings
