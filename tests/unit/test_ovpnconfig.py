"""The OpenVPN config allow-list: parsing like openvpn, what survives, bounds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lab.require import require_tool
from vpnd.errors import ConfigRejected
from vpnd.protocols.ovpnconfig import (
    ALLOWED_DIRECTIVES,
    INLINE_BLOCKS,
    MAX_INLINE_BYTES,
    MAX_LINE_CHARS,
    MAX_LINES,
    MAX_TEXT_BYTES,
    Directive,
    SanitizedConfig,
    inline_block,
    quote_arg,
    remotes,
    sanitize,
    tokenize,
    without,
)

CORPUS = Path(__file__).parent / "ovpn_corpus"

CA = "<ca>\n-----BEGIN CERTIFICATE-----\nMIIBfakeCA\n-----END CERTIFICATE-----\n</ca>\n"
HEAD = "client\ndev tun\n"
BASE = HEAD + "remote vpn.example.org 1194 udp\n" + CA


def names(config: SanitizedConfig) -> list[str]:
    return [d.name for d in config.directives]


def args_of(config: SanitizedConfig, name: str) -> list[tuple[str, ...]]:
    return [d.args for d in config.directives if d.name == name and d.inline is None]


# --- real-world shapes --------------------------------------------------------


def test_eduvpn_config_survives_whole() -> None:
    config = sanitize((CORPUS / "eduvpn-v3.ovpn").read_text())
    assert config.dropped == ()
    assert names(config) == [
        "dev",
        "client",
        "nobind",
        "remote-cert-tls",
        "verb",
        "server-poll-timeout",
        "tls-version-min",
        "data-ciphers",
        "reneg-sec",
        "ca",
        "cert",
        "key",
        "tls-crypt",
        "remote",
        "remote",
        "remote",
    ]
    assert remotes(config) == [
        ("vpn.example.org", 1194, "udp"),
        ("vpn.example.org", 1194, "tcp"),
        ("2001:db8::10", 443, "tcp"),
    ]
    tls_crypt = inline_block(config, "tls-crypt")
    assert tls_crypt is not None
    assert tls_crypt.startswith("#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN")
    assert sanitize(config.render()) == config


def test_access_server_profile_with_crlf() -> None:
    config = sanitize((CORPUS / "access-server.ovpn").read_bytes().decode())
    assert set(config.dropped) == {"setenv", "block-outside-dns", "comp-lzo", "push-peer-info"}
    assert args_of(config, "setenv") == [("IV_GUI_VER", "OpenVPN_AS 2.12"), ("UV_ASCLI_VER", "2.0")]
    assert args_of(config, "static-challenge") == [("Enter Authenticator code", "1")]
    assert args_of(config, "auth-user-pass") == [()]
    assert "\r" not in config.render()
    assert inline_block(config, "tls-crypt-v2") == (
        "-----BEGIN OpenVPN tls-crypt-v2 client key-----\nZmFrZXRscmNyeXB0djJrZXk=\n"
        "-----END OpenVPN tls-crypt-v2 client key-----\n"
    )
    assert remotes(config) == [("as.example.com", 1194, "udp"), ("as.example.com", 443, "tcp")]
    rendered = config.render()
    assert 'static-challenge "Enter Authenticator code" 1\n' in rendered
    assert sanitize(rendered).directives == config.directives


# --- parsing like openvpn -----------------------------------------------------


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ("remote a 1194\n", ["remote", "a", "1194"]),
        ("  remote\ta   1194  \n", ["remote", "a", "1194"]),
        ("# comment\n", []),
        ("; comment\n", []),
        ("   # indented comment\n", []),
        ("remote a # trailing comment\n", ["remote", "a"]),
        ("remote a ;trailing\n", ["remote", "a"]),
        ("remote a#b\n", ["remote", "a#b"]),
        ('remote "a b"\n', ["remote", "a b"]),
        ("remote 'a b'\n", ["remote", "a b"]),
        ("remote 'a\\b'\n", ["remote", "a\\b"]),
        ('remote "a\\"b"\n', ["remote", 'a"b']),
        ('remote "a\\\\b"\n', ["remote", "a\\b"]),
        ("remote a\\ b\n", ["remote", "a b"]),
        ('remote "a"b\n', ["remote", "a", "b"]),
        ('remote a"b\n', ["remote", 'a"b']),
        ('remote ""\n', ["remote", ""]),
        ("remote a\r\n", ["remote", "a"]),
        ("remote a", ["remote", "a"]),
        ("\n", []),
        ("", []),
        ("\\#x\n", []),
        (" ".join(str(i) for i in range(20)) + "\n", [str(i) for i in range(16)]),
    ],
)
def test_tokenize_like_openvpn(line: str, tokens: list[str]) -> None:
    assert tokenize(line) == tokens


@pytest.mark.parametrize(
    "line",
    [
        'remote "a\n',
        "remote 'a\n",
        "remote a\\x\n",
        'remote "a\\x"\n',
        "remote a\\",
        "remote " + "a" * 257 + "\n",
    ],
)
def test_tokenize_refuses_what_openvpn_refuses(line: str) -> None:
    with pytest.raises(ConfigRejected):
        tokenize(line)


def test_leading_double_dash_is_stripped() -> None:
    config = sanitize("--client\n--dev tun\n--remote vpn.example.org\n" + CA)
    assert names(config) == ["client", "dev", "remote", "ca"]


def test_quoted_directive_names_are_read_as_names() -> None:
    config = sanitize("\"client\"\n\"dev\" 'tun'\n'remote' vpn.example.org\n" + CA)
    assert names(config) == ["client", "dev", "remote", "ca"]


def test_blank_lines_comments_and_bom() -> None:
    text = "\ufeff# server config\n\n; another\nclient\n\n\n" + BASE
    assert names(sanitize(text))[:2] == ["client", "client"]


def test_inline_block_closing_tag_rules() -> None:
    # Leading whitespace before the closing tag is allowed, and anything after
    # it on that line is ignored (openvpn discards it too).
    text = "dev tun\nremote h\n<ca>\nAAA\n   </ca> up /bin/sh\nclient\n"
    config = sanitize(text)
    assert inline_block(config, "ca") == "AAA\n"
    assert names(config) == ["dev", "remote", "ca", "client"]
    assert "up" not in config.dropped


def test_inline_open_tag_forms() -> None:
    # Quoted, with -- and followed by a comment: still an inline block.
    for tag in ('"<ca>"', "--<ca>", "<ca> # the CA"):
        config = sanitize(f"{HEAD}remote h\n{tag}\nAAA\n</ca>\n")
        assert inline_block(config, "ca") == "AAA\n"


def test_open_tag_with_arguments_is_not_a_block() -> None:
    # As in openvpn, the lines that follow are directives, and the lone
    # "</ca>" then opens a block named "/ca" that nothing closes.
    with pytest.raises(ConfigRejected, match="never closed"):
        sanitize(HEAD + "remote h\n<ca> x\nAAA\n</ca>\n")


def test_directive_lines_inside_a_dropped_block_are_not_read() -> None:
    text = BASE + "<connection>\nremote evil.example 1\nup /bin/sh\n</connection>\n"
    config = sanitize(text)
    assert config.dropped == ("<connection>",)
    assert remotes(config) == [("vpn.example.org", 1194, "udp")]


def test_crlf_in_inline_block_is_normalized() -> None:
    config = sanitize("client\r\ndev tun\r\nremote h\r\n<ca>\r\nAAA\r\nBBB\r\n</ca>\r\n")
    assert inline_block(config, "ca") == "AAA\nBBB\n"


# --- what survives ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        ("dev tun", ("tun",)),
        ("dev tun0", ("tun",)),
        ("dev tun7", ("tun",)),
        ("dev tun12345", None),
        ("dev tun0 tun1", None),
        ("dev tap", None),
        ("dev tap0", None),
        ("dev /dev/net/tun", None),
        ("dev-type tun", ("tun",)),
        ("dev-type tap", None),
        ("proto udp", ("udp",)),
        ("proto tcp-client", ("tcp-client",)),
        ("proto tcp6-client", ("tcp6-client",)),
        ("proto tcp-server", None),
        ("proto sctp", None),
        ("remote h 1194 tcp4", ("h", "1194", "tcp4")),
        ("remote h 0", None),
        ("remote h 65536", None),
        ("remote h http", None),
        ("remote h 1194 quic", None),
        ("remote -h", None),
        ("remote h 1 udp extra", None),
        ("remote", None),
        ("resolv-retry infinite", ("infinite",)),
        ("resolv-retry 60", ("60",)),
        ("resolv-retry forever", None),
        ("remote-cert-tls server", ("server",)),
        ("remote-cert-tls client", None),
        ("verify-x509-name 'CN=vpn example' subject", ("CN=vpn example", "subject")),
        ("verify-x509-name vpn.example.org name-prefix", ("vpn.example.org", "name-prefix")),
        ("verify-x509-name vpn bogus", None),
        ("verb 3", ("3",)),
        ("verb 0", ("0",)),
        ("verb 9", ("4",)),
        ("verb 11", ("4",)),
        ("verb 12", None),
        ("verb -1", None),
        ("verb loud", None),
        ("server-poll-timeout 10", ("10",)),
        ("connect-timeout 5", ("5",)),
        ("connect-retry 5 300", ("5", "300")),
        ("connect-retry 5 300 1", None),
        ("tls-version-min 1.2 or-highest", ("1.2", "or-highest")),
        ("tls-version-min 1.2 or-lowest", None),
        ("tls-version-min 2.0", None),
        ("tls-version-max 1.3", ("1.3",)),
        ("data-ciphers AES-256-GCM:CHACHA20-POLY1305", ("AES-256-GCM:CHACHA20-POLY1305",)),
        ("data-ciphers AES-256-GCM:none", None),
        ("ncp-ciphers AES-256-GCM", ("AES-256-GCM",)),
        ("data-ciphers-fallback AES-256-CBC", ("AES-256-CBC",)),
        ("cipher AES-256-CBC", ("AES-256-CBC",)),
        ("cipher none", None),
        ("cipher NONE", None),
        ("auth SHA256", ("SHA256",)),
        ("auth none", None),
        (
            "tls-cipher TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",
            ("TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384",),
        ),
        ("tls-ciphersuites TLS_AES_256_GCM_SHA384", ("TLS_AES_256_GCM_SHA384",)),
        ("tls-groups X25519:prime256v1", ("X25519:prime256v1",)),
        ("reneg-sec 36000", ("36000",)),
        ("reneg-sec 0", ("0",)),
        ("key-direction 1", ("1",)),
        ("key-direction 2", None),
        ("tls-client", ()),
        ("pull", ()),
        ("float", ()),
        ("nobind", ()),
        ("nobind now", None),
        ("persist-key", ()),
        ("persist-tun", ()),
        ("remote-random", ()),
        ("explicit-exit-notify", ()),
        ("explicit-exit-notify 2", ("2",)),
        ("keepalive 10 60", ("10", "60")),
        ("keepalive 10", None),
        ("ping 10", ("10",)),
        ("ping-restart 60", ("60",)),
        ("ping-exit 120", ("120",)),
        ("redirect-gateway def1 bypass-dhcp ipv6 !ipv4", ("def1", "bypass-dhcp", "ipv6", "!ipv4")),
        ("redirect-gateway", ()),
        ("redirect-gateway def1 /etc/x", None),
        ("route 10.0.0.0 255.0.0.0 vpn_gateway 5", ("10.0.0.0", "255.0.0.0", "vpn_gateway", "5")),
        ("route 10.0.0.0 255.0.0.0 /x", None),
        ("route-ipv6 2001:db8::/32", ("2001:db8::/32",)),
        ("push-peer-info", None),
        ("remap-usr1 SIGHUP", None),
        ("remap-usr1 SIGTERM", None),
        ("ifconfig 10.0.0.2 255.255.255.0", None),
        ("ifconfig-ipv6 2001:db8::2/64 2001:db8::1", None),
        ("route-nopull", None),
        ("dhcp-option DNS 10.0.0.1", None),
        ("keying-material-exporter EXPORTER-x 64", None),
        ("x509-track CN", None),
        ("tls-export-cert /tmp", None),
        ("dns-updown /tmp/x", None),
        ("route 0.0.0.0 0.0.0.0 vpn_gateway", ("0.0.0.0", "0.0.0.0", "vpn_gateway")),
        ("route 10.0.0.0 255.0.0.0 net_gateway", ("10.0.0.0", "255.0.0.0", "net_gateway")),
        ("route '10.0.0.0 255.0.0.0'", None),
        ("route 10.0.0.0 255.0.0.0 ;/x", ("10.0.0.0", "255.0.0.0")),
        ("auth-user-pass", ()),
        ("auth-nocache", ()),
        ("mute-replay-warnings", ()),
        ("static-challenge 'Enter PIN' 0", ("Enter PIN", "0")),
        ("static-challenge 'Enter PIN' 1 concat", ("Enter PIN", "1", "concat")),
        ("static-challenge 'Enter PIN' 2", None),
        ("setenv IV_SSO webauth", ("IV_SSO", "webauth")),
        ("setenv UV_COLOR 'dark blue'", ("UV_COLOR", "dark blue")),
        ("setenv IV_EMPTY", ("IV_EMPTY",)),
        ("setenv opt up /bin/sh", None),
        ("setenv PATH /tmp", None),
        ("setenv FORWARD_COMPATIBLE 1", None),
        ("setenv iv_lower x", None),
        ("peer-fingerprint " + ":".join(["AB"] * 32), (":".join(["AB"] * 32),)),
        ("peer-fingerprint /etc/fp", None),
        ("block-outside-dns", None),
        ("comp-lzo", None),
        ("comp-lzo no", None),
        ("compress lz4-v2", None),
        ("tun-mtu 1500", None),
        ("CLIENT", None),
    ],
)
def test_directive_rules(line: str, kept: tuple[str, ...] | None) -> None:
    config = sanitize(BASE + line + "\n")
    name = tokenize(line)[0]
    extra = list(config.directives[4:])
    if kept is None:
        assert extra == []
        assert name in config.dropped
    else:
        assert extra == [Directive(name, kept)]
        assert config.dropped == ()


@pytest.mark.parametrize(
    "block",
    [
        "ca",
        "cert",
        "key",
        "tls-crypt",
        "tls-auth",
        "tls-crypt-v2",
        "extra-certs",
        "peer-fingerprint",
    ],
)
def test_allowed_inline_blocks(block: str) -> None:
    config = sanitize(BASE + f"<{block}>\nDATA\n</{block}>\n")
    assert config.directives[-1] == Directive(block, inline="DATA\n")


@pytest.mark.parametrize(
    "name",
    [
        "ca",
        "cert",
        "key",
        "tls-crypt",
        "tls-auth",
        "tls-crypt-v2",
        "extra-certs",
        "pkcs12",
        "secret",
        "crl-verify",
        "dh",
    ],
)
def test_key_material_from_files_is_dropped(name: str) -> None:
    config = sanitize(BASE + f"{name} /etc/vpnd/{name}.pem\n")
    assert name in config.dropped
    assert f"/etc/vpnd/{name}.pem" not in config.render()


# --- hostile configs ----------------------------------------------------------

HOSTILE: list[tuple[str, str, str]] = [
    # (snippet, name reported in dropped, text that must not survive)
    ("up /bin/sh", "up", "/bin/sh"),
    ("--up /bin/sh", "up", "/bin/sh"),
    ('"up" /bin/sh', "up", "/bin/sh"),
    ("'down' '/bin/sh -c id'", "down", "/bin/sh"),
    ("script-security 2\nup /tmp/x.sh", "script-security", "script-security"),
    ("script-security 3", "script-security", "script-security"),
    ("route-up /tmp/evil", "route-up", "/tmp/evil"),
    ("route-pre-down /tmp/evil", "route-pre-down", "/tmp/evil"),
    ("ipchange /tmp/evil", "ipchange", "/tmp/evil"),
    ("tls-verify /tmp/evil", "tls-verify", "/tmp/evil"),
    ("client-connect /tmp/evil", "client-connect", "/tmp/evil"),
    ("client-disconnect /tmp/evil", "client-disconnect", "/tmp/evil"),
    ("learn-address /tmp/evil", "learn-address", "/tmp/evil"),
    ("auth-user-pass-verify /tmp/evil via-env", "auth-user-pass-verify", "/tmp/evil"),
    ("tls-export-cert /tmp/dir", "tls-export-cert", "/tmp/dir"),
    ("dns-updown /tmp/evil", "dns-updown", "/tmp/evil"),
    ("plugin /tmp/evil.so", "plugin", "evil.so"),
    ("engine dynamic", "engine", "engine"),
    ("providers legacy /tmp/evil", "providers", "providers"),
    ("pkcs11-providers /tmp/evil.so", "pkcs11-providers", "evil.so"),
    ("iproute /tmp/evil", "iproute", "/tmp/evil"),
    ("log /tmp/x", "log", "/tmp/x"),
    ("log-append /var/log/x", "log-append", "/var/log/x"),
    ("status /tmp/status 1", "status", "/tmp/status"),
    ("writepid /etc/cron.d/x", "writepid", "/etc/cron.d"),
    ("replay-persist /etc/passwd", "replay-persist", "/etc/passwd"),
    ("tmp-dir /tmp/evil", "tmp-dir", "/tmp/evil"),
    ("cd /etc", "cd", "/etc"),
    ("chroot /tmp", "chroot", "chroot"),
    ("config /etc/x", "config", "/etc/x"),
    ("dev-node /dev/sda", "dev-node", "/dev/sda"),
    ("daemon", "daemon", "daemon"),
    ("syslog evil", "syslog", "syslog"),
    ("management 0.0.0.0 7505", "management", "7505"),
    ("management-client-user nobody", "management-client-user", "management"),
    ("management-external-key", "management-external-key", "management"),
    ("management-hold", "management-hold", "management"),
    ("user nobody", "user", "nobody"),
    ("group nogroup", "group", "nogroup"),
    ("setenv opt up /bin/sh", "setenv", "/bin/sh"),
    ("setenv LD_PRELOAD /tmp/evil.so", "setenv", "evil.so"),
    ("setcon unconfined_t", "setcon", "unconfined_t"),
    ("askpass /etc/shadow", "askpass", "/etc/shadow"),
    ("auth-user-pass /etc/shadow", "auth-user-pass", "/etc/shadow"),
    ("http-proxy proxy.example 8080 /etc/file", "http-proxy", "/etc/file"),
    ("socks-proxy proxy.example 1080 /etc/file", "socks-proxy", "/etc/file"),
    ("ca /etc/passwd", "ca", "/etc/passwd"),
    ("cert /etc/ssl/private/x", "cert", "/etc/ssl"),
    ("key /root/.ssh/id_rsa", "key", "/root"),
    ("tls-auth /etc/x 1", "tls-auth", "/etc/x"),
    ("ignore-unknown-option up", "ignore-unknown-option", "ignore-unknown-option"),
    ("<connection>\nremote evil.example 1\n</connection>", "<connection>", "evil.example"),
    (
        "<http-proxy-user-pass>\nuser\npass\n</http-proxy-user-pass>",
        "<http-proxy-user-pass>",
        "http-proxy",
    ),
    ("<auth-user-pass>\nu\np\n</auth-user-pass>", "<auth-user-pass>", "<auth-user-pass>"),
    ("<dh>\nX\n</dh>", "<dh>", "<dh>"),
    ("pull-filter ignore redirect-gateway", "pull-filter", "pull-filter"),
    ("route-noexec", "route-noexec", "route-noexec"),
    ("route-delay 0 0", "route-delay", "route-delay"),
    ("ifconfig-noexec", "ifconfig-noexec", "ifconfig-noexec"),
    ("mlock", "mlock", "mlock"),
    ("nice -20", "nice", "nice"),
    ("management-query-passwords", "management-query-passwords", "management"),
    ("echo msg", "echo", "echo"),
    ("auth-retry nointeract", "auth-retry", "auth-retry"),
    ("up-delay", "up-delay", "up-delay"),
    ("route-pre-down '/bin/sh -c \"id\"'", "route-pre-down", "/bin/sh"),
]


@pytest.mark.parametrize(("snippet", "name", "residue"), HOSTILE)
def test_hostile_directive_is_dropped(snippet: str, name: str, residue: str) -> None:
    for text in (BASE + snippet + "\n", snippet + "\n" + BASE):
        config = sanitize(text)
        assert name in config.dropped
        rendered = config.render()
        assert residue not in rendered
        assert sanitize(rendered).directives == config.directives


def test_hostile_list_is_long_enough() -> None:
    assert len(HOSTILE) >= 30


# Every directive PROTOCOLS.md names as abusable, and its neighbours.
FORBIDDEN = [
    # script hooks
    *[
        "up",
        "down",
        "route-up",
        "route-pre-down",
        "ipchange",
        "tls-verify",
        "client-connect",
        "client-disconnect",
        "learn-address",
        "auth-user-pass-verify",
        "tls-export-cert",
        "dns-updown",
        "script-security",
        "up-restart",
        "down-pre",
        "up-delay",
    ],
    # code loading
    *["plugin", "engine", "providers", "pkcs11-providers", "pkcs11-id", "iproute"],
    # files and control
    *[
        "log",
        "log-append",
        "status",
        "status-version",
        "writepid",
        "replay-persist",
        "tmp-dir",
        "cd",
        "chroot",
        "config",
        "dev-node",
        "daemon",
        "syslog",
        "user",
        "group",
        "setcon",
        "askpass",
        "auth-user-pass",
        "http-proxy",
        "http-proxy-user-pass",
        "socks-proxy",
        "pkcs12",
        "secret",
        "crl-verify",
        "capath",
        "dh",
        "auth-gen-token-secret",
        "management",
        "management-client",
        "management-client-user",
        "management-client-group",
        "management-hold",
        "management-query-passwords",
        "management-external-key",
        "management-external-cert",
        "management-signal",
        "management-forget-disconnect",
        "management-up-down",
        "management-client-auth",
        "management-query-proxy",
        "management-query-remote",
        "management-log-cache",
    ],
    # option processing and signals
    *[
        "ignore-unknown-option",
        "setenv-safe",
        "remap-usr1",
        "push-peer-info",
        "pull-filter",
        "route-noexec",
        "ifconfig-noexec",
        "ifconfig",
        "ifconfig-ipv6",
        "route-nopull",
        "keying-material-exporter",
        "x509-track",
        "mlock",
        "nice",
        "echo",
        "auth-retry",
        "auth-token",
        "auth-token-user",
        "inetd",
        "mode",
        "server",
        "tls-server",
        "lladdr",
        "iroute",
        "client-config-dir",
        "dhcp-option",
    ],
]
SPELLINGS = [
    "{name} /tmp/evil/arg",
    "--{name} /tmp/evil/arg",
    '"{name}" "/tmp/evil/arg"',
    "'{name}' '/tmp/evil/arg'",
    "\t  {name}\t/tmp/evil/arg   # trailing comment",
    "{name} /tmp/evil/arg\r",
    "--{name}  '/tmp/evil/arg' 2",
    "{name}\\ /tmp/evil/arg",
    "setenv opt {name} /tmp/evil/arg",
    "setenv opt --{name} /tmp/evil/arg",
    "ignore-unknown-option {name}\n{name} /tmp/evil/arg",
    "<{name}>\n/tmp/evil/arg\n</{name}>",
    "  <{name}>\n/tmp/evil/arg\n  </{name}>  trailing",
    "--<{name}>\n/tmp/evil/arg\n</{name}>",
]


def top_level_names(rendered: str) -> list[str]:
    """The first token of each line of rendered text that is not inside an inline block."""
    found: list[str] = []
    block = None
    for line in rendered.split("\n"):
        if block is not None:
            if line.startswith(f"</{block}>"):
                block = None
            continue
        tokens = tokenize(line + "\n")
        if tokens:
            found.append(tokens[0])
            if tokens[0].startswith("<") and tokens[0].endswith(">"):
                block = tokens[0][1:-1]
    return found


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_directive_in_every_spelling(name: str) -> None:
    for spelling in SPELLINGS:
        snippet = spelling.format(name=name)
        for text in (BASE + snippet + "\n", snippet + "\n" + BASE):
            config = sanitize(text)
            assert config.dropped, snippet
            assert len(config.directives) == 4, snippet
            rendered = config.render()
            assert "/tmp/evil" not in rendered, snippet
            assert name not in top_level_names(rendered), snippet
            assert sanitize(rendered) == SanitizedConfig(config.directives, ())


def test_forbidden_names_are_not_allowed() -> None:
    assert not set(FORBIDDEN) & ALLOWED_DIRECTIVES - {"auth-user-pass"}
    assert not set(FORBIDDEN) & INLINE_BLOCKS


def test_a_directive_past_openvpns_line_buffer_never_reaches_it() -> None:
    # openvpn reads 255 bytes at a time: fed the raw text, it would take
    # what follows byte 255 of this comment for a line of its own.
    hidden = "# " + "x" * 253 + "up /tmp/evil\n"
    config = sanitize(BASE + hidden)
    assert config.render() == sanitize(BASE).render()
    assert all(len(line.encode()) <= 254 for line in config.render().split("\n"))


def test_a_backslash_does_not_continue_a_line() -> None:
    config = sanitize(BASE + "verb 3 \\\nup /tmp/evil\n")
    assert "up" in config.dropped
    assert "/tmp/evil" not in config.render()


def test_a_close_tag_inside_another_block_is_key_material() -> None:
    text = BASE + "<cert>\nAAA\n</ca>\nup /tmp/evil\n</cert>\n"
    config = sanitize(text)
    assert inline_block(config, "cert") == "AAA\n</ca>\nup /tmp/evil\n"
    assert sanitize(config.render()) == config


def test_connection_blocks_are_dropped_whole() -> None:
    text = BASE + "<connection>\nremote evil.example 1 tcp\nhttp-proxy p 8080\n</connection>\n"
    config = sanitize(text)
    assert config.dropped == ("<connection>",)
    assert "evil" not in config.render()


def test_the_device_name_is_not_the_servers_choice() -> None:
    config = sanitize(BASE.replace("dev tun", "dev tun7"))
    assert args_of(config, "dev") == [("tun",)]


def test_rendered_config_holds_only_allowed_names() -> None:
    text = (CORPUS / "access-server.ovpn").read_text() + "".join(
        f"{name} /tmp/evil\n<{name}>\nX\n</{name}>\n" for name in FORBIDDEN
    )
    found = top_level_names(sanitize(text).render())
    allowed = ALLOWED_DIRECTIVES | {f"<{block}>" for block in INLINE_BLOCKS}
    assert set(found) <= allowed
    assert "<ca>" in found and "remote" in found


# --- bounds and rejections ----------------------------------------------------


def test_missing_remote_is_named() -> None:
    with pytest.raises(ConfigRejected, match="`remote`"):
        sanitize("client\n" + CA)


def test_missing_ca_is_named() -> None:
    with pytest.raises(ConfigRejected, match=r"inline <ca>"):
        sanitize("client\ndev tun\nremote h\n")


def test_ca_from_a_file_does_not_count() -> None:
    with pytest.raises(ConfigRejected, match=r"inline <ca>"):
        sanitize(HEAD + "remote h\nca /etc/ssl/ca.pem\n")


def test_empty_ca_does_not_count() -> None:
    with pytest.raises(ConfigRejected, match=r"inline <ca>"):
        sanitize(HEAD + "remote h\n<ca>\n\n</ca>\n")


def test_only_invalid_remotes_is_missing_remote() -> None:
    with pytest.raises(ConfigRejected, match="`remote`"):
        sanitize(HEAD + "remote h 99999\n" + CA)


def test_missing_dev_is_named() -> None:
    with pytest.raises(ConfigRejected, match="`dev tun`"):
        sanitize(BASE.replace("dev tun\n", ""))
    with pytest.raises(ConfigRejected, match="`dev tun`"):
        sanitize(BASE.replace("dev tun\n", "dev tap\n"))


def test_missing_client_is_named() -> None:
    with pytest.raises(ConfigRejected, match="`client`"):
        sanitize(BASE.replace("client\n", ""))
    assert names(sanitize(BASE.replace("client\n", "tls-client\n")))[0] == "tls-client"


def test_what_is_missing_is_said_in_one_sentence() -> None:
    with pytest.raises(ConfigRejected) as caught:
        sanitize("verb 3\n")
    assert caught.value.message == (
        "the server's OpenVPN config lacks a `remote` line, an inline <ca> block, "
        "a `dev tun` line and a `client` line that vpnd can use"
    )


def test_both_missing_are_named() -> None:
    with pytest.raises(ConfigRejected, match=r"`remote`.*<ca>"):
        sanitize("client\n")


@pytest.mark.parametrize("char", ["\0", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused(char: str) -> None:
    with pytest.raises(ConfigRejected, match="control character"):
        sanitize(BASE + f"verb 3{char}\n")


def test_control_characters_inside_inline_blocks_are_refused() -> None:
    with pytest.raises(ConfigRejected, match="control character"):
        sanitize(HEAD + "remote h\n<ca>\nA\0B\n</ca>\n")


def test_tab_cr_lf_are_fine() -> None:
    assert sanitize("client\t\r\n" + BASE).directives[0] == Directive("client")


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ConfigRejected):
        sanitize(BASE + "verb \ud800\n")


def test_unterminated_inline_block() -> None:
    with pytest.raises(ConfigRejected, match="never closed"):
        sanitize(HEAD + "remote h\n<ca>\nAAA\n")


def test_unterminated_dropped_inline_block() -> None:
    with pytest.raises(ConfigRejected, match="never closed"):
        sanitize(BASE + "<connection>\nremote x\n")


def test_text_too_large() -> None:
    with pytest.raises(ConfigRejected, match="256 KiB"):
        sanitize(BASE + "#" * MAX_TEXT_BYTES)


def test_text_too_large_in_utf8_bytes() -> None:
    with pytest.raises(ConfigRejected, match="256 KiB"):
        sanitize(BASE + "# " + "é" * (MAX_TEXT_BYTES // 2) + "\n")


def test_too_many_lines() -> None:
    sanitize(BASE + "\n" * (MAX_LINES - BASE.count("\n")))
    with pytest.raises(ConfigRejected, match="lines"):
        sanitize(BASE + "\n" * (MAX_LINES + 1 - BASE.count("\n")))


def test_line_too_long() -> None:
    sanitize(BASE + "#" * MAX_LINE_CHARS + "\n")
    with pytest.raises(ConfigRejected, match="line longer"):
        sanitize(BASE + "#" * (MAX_LINE_CHARS + 1) + "\n")


def test_inline_block_too_large() -> None:
    body = ("A" * 63 + "\n") * (MAX_INLINE_BYTES // 64)
    sanitize(BASE + f"<tls-crypt>\n{body}</tls-crypt>\n")
    with pytest.raises(ConfigRejected, match="64 KiB"):
        sanitize(BASE + f"<tls-crypt>\n{body}B\n</tls-crypt>\n")


def test_long_line_in_kept_inline_block_is_refused() -> None:
    # openvpn would read it in 255-byte pieces; a piece could close the block.
    sanitize(HEAD + "remote h\n<ca>\n" + "A" * 254 + "\n</ca>\n")
    with pytest.raises(ConfigRejected, match="inline <ca>"):
        sanitize(HEAD + "remote h\n<ca>\n" + "A" * 255 + "</ca>\nup /bin/sh\n</ca>\n")


def test_long_line_in_dropped_inline_block_is_fine() -> None:
    config = sanitize(BASE + "<connection>\n" + "A" * 1000 + "\n</connection>\n")
    assert config.dropped == ("<connection>",)


def test_kept_directive_that_openvpn_could_not_read_is_dropped() -> None:
    long_name = "CN=" + "x" * 190
    config = sanitize(BASE + f"verify-x509-name {long_name} subject\n")
    assert args_of(config, "verify-x509-name") == [(long_name, "subject")]
    config = sanitize(BASE + f"verify-x509-name 'a{'é' * 150}' subject\n")
    assert "verify-x509-name" in config.dropped
    assert all(len(line.encode()) <= 254 for line in config.render().split("\n"))


@pytest.mark.parametrize(
    "text",
    ['remote "unterminated\n' + CA, "remote a\\q\n" + CA, "remote 'x\n" + CA],
)
def test_unparsable_lines_refuse_the_config(text: str) -> None:
    with pytest.raises(ConfigRejected, match="line 1"):
        sanitize(text)


# --- rendering and helpers ----------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "rendered"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("a b", '"a b"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("it's", '"it\'s"'),
        ("#x", '"#x"'),
        (";x", '";x"'),
        ("a#b", "a#b"),
        ("tab\there", '"tab\there"'),
    ],
)
def test_quote_arg(arg: str, rendered: str) -> None:
    assert quote_arg(arg) == rendered
    assert tokenize(f"x {rendered}\n") == ["x", arg]


def test_render_shape() -> None:
    config = SanitizedConfig(
        directives=(
            Directive("client"),
            Directive("remote", ("h", "1194")),
            Directive("ca", inline="A\nB"),
            Directive("static-challenge", ("Enter PIN", "1")),
        ),
        dropped=(),
    )
    assert config.render() == (
        'client\nremote h 1194\n<ca>\nA\nB\n</ca>\nstatic-challenge "Enter PIN" 1\n'
    )


def test_remotes_defaults() -> None:
    config = sanitize(HEAD + "remote a\nremote b 443\nremote c 53 udp6\nproto tcp\n" + CA)
    assert remotes(config) == [("a", 1194, "tcp"), ("b", 443, "tcp"), ("c", 53, "udp6")]
    config = sanitize(HEAD + "remote a\n" + CA)
    assert remotes(config) == [("a", 1194, "udp")]


def test_inline_block_last_wins_and_without() -> None:
    config = sanitize(BASE + "<key>\nK1\n</key>\n<key>\nK2\n</key>\n")
    assert inline_block(config, "key") == "K2\n"
    assert inline_block(config, "cert") is None
    stripped = without(config, "key")
    assert inline_block(stripped, "key") is None
    assert "K1" not in stripped.render()
    assert inline_block(stripped, "ca") is not None


def test_openvpn_reads_rendered_arguments_unchanged(tmp_path: Path) -> None:
    require_tool("openvpn", "openvpn")
    # openvpn prints each connection profile's remote host at verb 4, then
    # stops because nobody can answer its password prompt; nothing is sent.
    hosts = ["a b", 'q"uote', "back\\slash", "it's", "#hash", ";semi", "tab\tx", "é"]
    directives = [
        Directive("client"),
        Directive("dev", ("null",)),
        Directive("verb", ("4",)),
        Directive("auth-user-pass"),
    ]
    directives += [Directive("remote", (h, "1194")) for h in hosts]
    directives.append(Directive("ca", inline="-----BEGIN CERTIFICATE-----\n"))
    path = tmp_path / "t.ovpn"
    path.write_text(SanitizedConfig(tuple(directives), ()).render(), encoding="utf-8")
    result = subprocess.run(
        ["openvpn", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=20,
        check=False,
    )
    output = result.stdout.decode("utf-8", "replace")
    assert re.findall(r"^\S+ \S+ us=\d+ +remote = '(.*)'$", output, re.M) == hosts


# --- properties -----------------------------------------------------------------

LINE_PARTS = st.sampled_from(
    [
        "client",
        "remote",
        "up",
        "dev",
        "tun",
        "1194",
        "udp",
        "verb",
        "9",
        "setenv",
        "IV_X",
        "opt",
        "<ca>",
        "</ca>",
        "<key>",
        "</key>",
        "<connection>",
        "</connection>",
        "--",
        '"',
        "'",
        "\\",
        "#",
        ";",
        " ",
        "\t",
        "\r",
        "é",
        "a b",
        "/etc/passwd",
        "route",
        "10.0.0.0",
        "redirect-gateway",
        "def1",
        "auth-user-pass",
        "static-challenge",
    ]
)
NOISY_LINES = st.lists(LINE_PARTS, max_size=6).map("".join)
NAMES = st.sampled_from(
    [
        "client",
        "dev",
        "proto",
        "remote",
        "verb",
        "setenv",
        "static-challenge",
        "route",
        "route-ipv6",
        "verify-x509-name",
        "redirect-gateway",
        "cipher",
        "data-ciphers",
        "keepalive",
        "tls-version-min",
        "up",
        "plugin",
        "auth-user-pass",
        "ca",
        "log",
    ]
)
ARGS = st.sampled_from(
    [
        "tun",
        "tun0",
        "udp",
        "tcp-client",
        "vpn.example.org",
        "1194",
        "443",
        "3",
        "9",
        "0",
        "IV_X",
        "UV_Y",
        "opt",
        "Enter PIN",
        "1",
        "10.0.0.0",
        "255.0.0.0",
        "vpn_gateway",
        "2001:db8::/32",
        'CN=a "b"',
        "it's",
        "back\\slash",
        "subject",
        "def1",
        "ipv6",
        "AES-256-GCM",
        "AES-256-GCM:none",
        "10",
        "60",
        "1.2",
        "or-highest",
        "/bin/sh",
        "",
        "#x",
        ";y",
        "é",
    ]
)


@st.composite
def directive_lines(draw: st.DrawFn) -> str:
    name = draw(NAMES)
    args = draw(st.lists(ARGS, max_size=3))
    dashes = draw(st.sampled_from(["", "--"]))
    space = draw(st.sampled_from([" ", "\t", "  "]))
    comment = draw(st.sampled_from(["", " # note", " ;note"]))
    return dashes + name + "".join(space + quote_arg(a) for a in args) + comment


@st.composite
def inline_blocks(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["ca", "cert", "key", "tls-crypt", "connection", "dh"]))
    body = draw(st.lists(st.sampled_from(["AAAA", "  x y", "# c", "up /bin/sh", ""]), max_size=3))
    return "\n".join([f"<{name}>", *body, draw(st.sampled_from([f"</{name}>", f" </{name}>"]))])


CONFIGS = st.lists(st.one_of(NOISY_LINES, directive_lines(), inline_blocks()), max_size=25).map(
    lambda lines: "\n".join(lines) + "\n"
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=500), CONFIGS, CONFIGS.map(lambda text: BASE + text)))
def test_sanitize_only_raises_config_rejected(text: str) -> None:
    try:
        config = sanitize(text)
    except ConfigRejected:
        return
    assert remotes(config)
    assert inline_block(config, "ca")
    rendered = config.render().split("\n")
    assert len(rendered) <= text.count("\n") + 2
    assert all(len(line.encode()) <= 254 for line in rendered)
    assert set(top_level_names(config.render())) <= ALLOWED_DIRECTIVES | {
        f"<{block}>" for block in INLINE_BLOCKS
    }


@settings(max_examples=150, deadline=None)
@given(CONFIGS)
def test_render_then_sanitize_is_stable(text: str) -> None:
    try:
        config = sanitize(BASE + text + CA)
    except ConfigRejected:
        return
    rendered = config.render()
    again = sanitize(rendered)
    assert again.directives == config.directives
    assert again.dropped == ()
    assert again.render() == rendered
    assert all(len(line.encode()) <= 254 for line in rendered.split("\n"))


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=200))
def test_quote_arg_round_trips(arg: str) -> None:
    assert tokenize(f"setenv {quote_arg(arg)}\n") == ["setenv", arg]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_tokenize_only_raises_config_rejected(line: str) -> None:
    try:
        tokens = tokenize(line)
    except ConfigRejected:
        return
    assert len(tokens) <= 16


def _remote_lines(config: str) -> list[str]:
    return [line for line in config.splitlines() if line.startswith("remote ")]


def test_tcp_first_moves_tcp_remotes_ahead_and_keeps_each_groups_order() -> None:
    from vpnd.protocols.ovpnconfig import tcp_first

    text = BASE.replace(
        "remote vpn.example.org 1194 udp\n",
        "remote a.example.org 1194 udp\nremote b.example.org 443 tcp\n"
        "remote c.example.org 1195\nremote d.example.org 443 tcp-client\n",
    )
    config = sanitize(text)
    assert _remote_lines(tcp_first(config).render()) == [
        "remote b.example.org 443 tcp",
        "remote d.example.org 443 tcp-client",
        "remote a.example.org 1194 udp",
        "remote c.example.org 1195",
    ]
    # Everything else stays where it was.
    assert [d.name for d in tcp_first(config).directives] == [d.name for d in config.directives]
    # With `proto tcp`, a remote without its own proto counts as TCP.
    with_proto = sanitize(text.replace("client\n", "client\nproto tcp\n", 1))
    assert _remote_lines(tcp_first(with_proto).render())[:3] == [
        "remote b.example.org 443 tcp",
        "remote c.example.org 1195",
        "remote d.example.org 443 tcp-client",
    ]
