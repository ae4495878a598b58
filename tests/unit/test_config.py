"""Settings from TOML and the command line: bad input is a named error."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnd import config
from vpnd.errors import InvalidArgument


def test_defaults_when_the_default_file_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    settings = config.load(None)
    assert settings.state_dir == Path("/var/lib/vpnd")
    assert settings.client_id == "org.eduvpn.app.linux"


@given(st.text(alphabet=" \t\r\n\x0b\x0c\xa0\u2028#", max_size=12))
def test_a_blank_file_reads_as_the_toml_parser_reads_it(text: str) -> None:
    # Blank text is read without loading the parser: it must agree with it.
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        with pytest.raises(InvalidArgument):
            config.parse(text)
    else:
        assert config.parse(text) == expected == {}


def test_file_then_overrides(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    path = tmp_path / "vpnd.toml"
    path.write_text(f'state_dir = "/srv/vpnd"\nca_file = "{ca}"\nhttp_timeout = 5\n')
    settings = config.load(path, {"state_dir": "/tmp/other", "runtime_dir": None})
    assert settings.state_dir == Path("/tmp/other")
    assert settings.ca_file == ca
    assert settings.http_timeout == 5.0
    assert settings.runtime_dir == Path("/run/vpnd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "unknown setting 'colour'"),
        ("state_dir = 'relative'", "absolute path"),
        ("http_timeout = -1", "positive number"),
        ("http_timeout = true", "positive number"),
        ("client_id = 'evil'", "client_id must be one of"),
        ("log_level = 'loud'", "log_level must be one of"),
        ("state_dir = [", "not valid TOML"),
        ("store_key_file = 'store.key'", "store_key_file must be an absolute path"),
        ("store_key_file = 1", "store_key_file must be an absolute path"),
        ("secret_backend = ''", "secret_backend must be a non-empty string"),
        ("secret_backend = 'keyring.backends.SecretService'", "module:Class"),
        ("secret_backend = 'a:b:c'", "module:Class"),
        ('secret_backend = "mod:Class\\n"', "module:Class"),
        ("secret_backend = '../x:Y'", "module:Class"),
        ("secret_backend = 3", "non-empty string"),
        ("autoconnect_server = 'vpn.example.org'", "set together"),
        ("autoconnect_profile = 'employees'", "set together"),
        ("autoconnect_server = 'a'\nautoconnect_profile = 'no spaces'", "profile id"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "vpnd.toml"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        config.load(path)


def test_a_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such config file"):
        config.load(tmp_path / "nope.toml")


def test_a_missing_ca_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vpnd.toml"
    path.write_text(f'ca_file = "{tmp_path}/missing.pem"')
    with pytest.raises(InvalidArgument, match="does not exist"):
        config.load(path)


def test_store_key_file_defaults_into_the_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "vpnd.toml"
    path.write_text('state_dir = "/srv/vpnd"\n')
    settings = config.load(path)
    assert settings.store_key_file is None
    assert settings.store_key_path == Path("/srv/vpnd/store.key")
    assert config.load(path, {"state_dir": "/tmp/s"}).store_key_path == Path("/tmp/s/store.key")
    assert settings.secret_backend == "encrypted-file"


def test_secret_settings_are_read(tmp_path: Path) -> None:
    path = tmp_path / "vpnd.toml"
    path.write_text(
        'store_key_file = "/etc/vpnd/store.key"\n'
        'secret_backend = "keyring.backends.SecretService:Keyring"\n'
    )
    settings = config.load(path)
    assert settings.store_key_path == Path("/etc/vpnd/store.key")
    assert settings.secret_backend == "keyring.backends.SecretService:Keyring"


def test_the_server_to_connect_at_start_can_be_set_by_file(tmp_path: Path) -> None:
    path = tmp_path / "vpnd.toml"
    path.write_text('autoconnect_server = "vpn.example.org"\nautoconnect_profile = "employees"\n')
    settings = config.load(path)
    assert (settings.autoconnect_server, settings.autoconnect_profile) == (
        "vpn.example.org",
        "employees",
    )
