"""Hostile OpenVPN configs, end to end: the portal serves them, vpnd runs them.

Each case injects one attack into the lab's real profile (`config_filter`),
connects with vpnctl through the real daemon and the real openvpn, and
proves that the attack did not take effect:

- no file written: every path a directive names lies in the case's scratch
  directory, which must hold exactly what the test put there afterwards;
- no program run: every hook points at a script that would leave a marker;
- nothing read: every file a directive would read is a FIFO, which would
  have blocked openvpn and which must have no reader afterwards;
- nothing contacted: every proxy or extra remote is a listening socket that
  must have no connection waiting;
- nothing changed: openvpn runs as the same account as without the attack,
  stays vpnd's child, has no management socket of its own, keeps its output
  going to vpnd.

Where the allow-list can drop the attack, the tunnel comes up, the daemon
logs the dropped names, and the disconnect is clean (so `down` hooks are
proven silent too). Where the config loses what it needs, vpnctl prints one
named error and openvpn is never started.

One daemon and one login serve the whole module. The last test bypasses
the allow-list and shows that vpnd's own options, which follow the config on
openvpn's command line, win over a server's `script-security` and
`management`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.daemon import VpndProcess, failed, ok, status, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.netns import OpenVPNLab
from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal
from vpnd.tunnel.events import TunnelEvent, TunnelExited, Up
from vpnd.tunnel.openvpn import Tunnel, TunnelSettings

pytestmark = pytest.mark.e2e

PROFILE = "employees"
WAIT = 30.0


# --- helpers ----------------------------------------------------------------------


def account(pid: int) -> tuple[str, str]:
    """The effective uid and gid of a process."""
    text = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+\d+\s+(\d+)", text, re.M)
    gid = re.search(r"^Gid:\s+\d+\s+(\d+)", text, re.M)
    assert uid is not None and gid is not None
    return uid.group(1), gid.group(1)


def dropped_names(log: str) -> list[str]:
    found = re.findall(r"dropped directives from .*?'s configuration: (.*)$", log, re.M)
    return found[-1].split(", ") if found else []


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Scratch:
    """A case's traps: a directory, a hook script, a FIFO and a listening socket.

    The directory is world-writable and outside pytest's root-only tree, so
    that a hook run by openvpn after it dropped its privileges could still
    leave its marker: a trap must not fail to spring for want of permission.
    """

    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.dir.mkdir()
        self.dir.chmod(0o777)
        self.marker = self.dir / "marker"
        self.script = self.dir / "mark.sh"
        self.script.write_text(f'#!/bin/sh\necho "$0 $*" >> {self.marker}\n')
        self.script.chmod(0o755)
        self.fifo = self.dir / "fifo"
        os.mkfifo(self.fifo, 0o666)
        (self.dir / "certs").mkdir(mode=0o777)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.closed_port: int = probe.getsockname()[1]
        self.before = self.listing()

    def values(self) -> dict[str, str]:
        return {
            "dir": str(self.dir),
            "mark": str(self.script),
            "fifo": str(self.fifo),
            "port": str(self.listener.getsockname()[1]),
            "closed": str(self.closed_port),
        }

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.dir)) for p in self.dir.rglob("*"))

    def assert_untouched(self) -> None:
        assert not self.marker.exists(), self.marker.read_text()
        assert self.listing() == self.before
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            assert error.errno == errno.ENXIO  # nobody has it open for reading
        else:
            os.close(fd)
            raise AssertionError("something opened the FIFO for reading")
        with pytest.raises(BlockingIOError):
            self.listener.accept()

    def close(self) -> None:
        self.listener.close()


# --- the cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """What a check made while the tunnel is up can see."""

    daemon: VpndProcess
    env: dict[str, str]
    scratch: Scratch
    pid: int
    log_start: int


Edit = Callable[[str, Scratch], str]
Check = Callable[[Live], None]


@dataclass(frozen=True)
class Case:
    """One attack. `snippet` is appended to the profile (with {dir}, {mark},
    {fifo}, {port}, {closed} filled in) unless `edit` rewrites it instead.
    `dropped`: names the daemon must log as dropped. `refused`: the text of
    the ConfigRejected error when the config must not run at all."""

    id: str
    snippet: str = ""
    dropped: tuple[str, ...] = ()
    edit: Edit | None = None
    refused: str | None = None
    check: Check | None = None


def replace(pattern: str, replacement: str) -> Edit:
    def edit(text: str, scratch: Scratch) -> str:
        changed, count = re.subn(pattern, replacement.format(**scratch.values()), text, flags=re.M)
        assert count, f"{pattern!r} not in the lab profile"
        return changed

    return edit


def refuses_management_connections(live: Live) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", live.scratch.closed_port), timeout=5).close()


def keeps_output_with_vpnd(live: Live) -> None:
    assert "Initialization Sequence Completed" in live.daemon.log()[live.log_start :]


def survives_sigusr1(live: Live) -> None:
    # A soft restart; remapped to SIGHUP, openvpn would re-read a config
    # from a standard input that is already at its end.
    completed = "Initialization Sequence Completed"

    def restarts() -> int:
        return live.daemon.log()[live.log_start :].count(completed)

    before = restarts()
    os.kill(live.pid, signal.SIGUSR1)
    wait_until(lambda: restarts() > before, "openvpn to come back after SIGUSR1")
    wait_until(lambda: status(live.env)["state"] == "connected", "the connection to settle")
    assert live.daemon.openvpn_children() == [live.pid]


def no_tun7(live: Live) -> None:
    assert not Path("/sys/class/net/tun7").exists()


HOOKS = [
    "route-up",
    "down",
    "route-pre-down",
    "ipchange",
    "tls-verify",
    "learn-address",
    "client-connect",
    "dns-updown",
    "iproute",
]

CASES: list[Case] = [
    # script hooks, in every spelling openvpn accepts
    Case("up", "script-security 2\nup {mark}", ("script-security", "up")),
    Case("up-dashes", "--script-security 2\n--up {mark}", ("script-security", "up")),
    Case("up-double-quotes", '"script-security" "2"\n"up" "{mark}"', ("script-security", "up")),
    Case("up-single-quotes", "'script-security' '2'\n'up' '{mark}'", ("script-security", "up")),
    Case(
        "up-odd-whitespace",
        "\t script-security\t2 \r\n  up \t{mark}  # hook\r",
        ("script-security", "up"),
    ),
    Case("up-setenv-opt", "setenv opt script-security 2\nsetenv opt up {mark}", ("setenv",)),
    Case(
        "up-ignore-unknown-option",
        "ignore-unknown-option up script-security\nscript-security 2\nup {mark}",
        ("ignore-unknown-option", "script-security", "up"),
    ),
    Case("up-inline-block", "<up>\n{mark}\n</up>", ("<up>",)),
    Case("up-after-a-backslash", "verb 3 \\\nup {mark}", ("up",)),
    # openvpn reads 255 bytes at a time: fed this line raw, it would take
    # what follows the comment's 255th byte for a directive.
    Case("up-past-openvpns-line-buffer", "# " + "x" * 253 + "up {mark}"),
    Case("up-after-a-close-tag", edit=replace(r"^</ca>$", "</ca> up {mark}")),
    *(
        Case(hook, f"script-security 2\n{hook} {{mark}}", ("script-security", hook))
        for hook in HOOKS
    ),
    Case(
        "auth-user-pass-verify", "auth-user-pass-verify {mark} via-env", ("auth-user-pass-verify",)
    ),
    Case("tls-export-cert", "tls-export-cert {dir}/certs", ("tls-export-cert",)),
    # code loading
    Case("plugin", "plugin {dir}/evil.so init", ("plugin",)),
    Case("engine", "engine dynamic", ("engine",)),
    Case("providers", "providers evil-provider", ("providers",)),
    Case("pkcs11-providers", "pkcs11-providers {dir}/evil.so", ("pkcs11-providers",)),
    # files
    Case("log", "log {dir}/log", ("log",)),
    Case("log-append", "log-append {dir}/log", ("log-append",)),
    Case("status", "status {dir}/status 1", ("status",)),
    Case("writepid", "writepid {dir}/pid", ("writepid",)),
    Case("replay-persist", "replay-persist {dir}/replay", ("replay-persist",)),
    Case("tmp-dir", "tmp-dir {dir}/tmp", ("tmp-dir",)),
    Case("cd", "cd {dir}/nowhere", ("cd",)),
    Case("chroot", "chroot {dir}/nowhere", ("chroot",)),
    Case("config", "config {fifo}", ("config",)),
    Case("config-dashes-quoted", "--config '{fifo}'", ("config",)),
    Case("dev-node", "dev-node {dir}/tun", ("dev-node",)),
    Case("askpass", "askpass {fifo}", ("askpass",)),
    Case("auth-user-pass-file", "auth-user-pass {fifo}", ("auth-user-pass",)),
    Case(
        "key-material-files",
        "ca {fifo}\ncert {fifo}\nkey {fifo}\ntls-auth {fifo} 1\nsecret {fifo}\n"
        "pkcs12 {fifo}\ncrl-verify {fifo}\nextra-certs {fifo}",
        ("ca", "cert", "key", "tls-auth", "secret", "pkcs12", "crl-verify", "extra-certs"),
    ),
    # network
    Case("http-proxy", "http-proxy 127.0.0.1 {port} {fifo}", ("http-proxy",)),
    Case("socks-proxy", "socks-proxy 127.0.0.1 {port} {fifo}", ("socks-proxy",)),
    Case(
        "connection-block",
        "<connection>\nremote 127.0.0.1 {port} tcp\nup {mark}\n</connection>",
        ("<connection>",),
    ),
    Case(
        "http-proxy-credentials-inline",
        "<http-proxy-user-pass>\nuser\npass\n</http-proxy-user-pass>",
        ("<http-proxy-user-pass>",),
    ),
    # control
    Case(
        "management-tcp",
        "management 127.0.0.1 {closed}",
        ("management",),
        check=refuses_management_connections,
    ),
    Case("management-unix", "management {dir}/mgmt.sock unix", ("management",)),
    Case(
        "management-options",
        "management-client-user nobody\nmanagement-client-group nogroup\nmanagement-hold\n"
        "management-query-passwords\nmanagement-external-key\nmanagement-forget-disconnect",
        (
            "management-client-user",
            "management-client-group",
            "management-hold",
            "management-query-passwords",
            "management-external-key",
            "management-forget-disconnect",
        ),
    ),
    Case("user-group", "user nobody\ngroup nogroup", ("user", "group")),
    Case("daemon", "daemon evil", ("daemon",)),
    Case("syslog", "syslog evil", ("syslog",), check=keeps_output_with_vpnd),
    Case("setcon", "setcon unconfined_t", ("setcon",)),
    Case("remap-usr1", "remap-usr1 SIGHUP", ("remap-usr1",), check=survives_sigusr1),
    Case("push-peer-info", "push-peer-info", ("push-peer-info",)),
    Case(
        "exporters",
        "keying-material-exporter EXPORTER-evil 64\nx509-track CN",
        ("keying-material-exporter", "x509-track"),
    ),
    Case("device-name", edit=replace(r"^dev tun$", "dev tun7"), check=no_tun7),
    # configs that lost what they need: refused before openvpn runs
    Case("no-remote", edit=replace(r"^remote .*\n", ""), refused="`remote`"),
    Case(
        "only-bad-remotes",
        edit=replace(r"^remote (\S+) \d+ (\S+)$", r"remote \1 99999 \2"),
        refused="`remote`",
    ),
    Case(
        "ca-from-a-file",
        edit=replace(r"^<ca>\n(?:.*\n)*?</ca>$", "ca {fifo}"),
        refused="inline <ca>",
    ),
    Case("empty-ca", edit=replace(r"^<ca>\n(?:.*\n)*?</ca>$", "<ca>\n</ca>"), refused="<ca>"),
    Case("no-dev", edit=replace(r"^dev tun\n", ""), refused="`dev tun`"),
    Case("dev-tap", edit=replace(r"^dev tun$", "dev tap"), refused="`dev tun`"),
    Case("no-client", edit=replace(r"^client\n", ""), refused="`client`"),
    Case("nul", edit=replace(r"^verb 3$", "verb 3\0"), refused="NUL"),
    Case("escape", edit=replace(r"^verb 3$", "verb 3\x1b[2J"), refused="control character"),
    Case("unclosed-quote", 'remote "10.0.0.1', refused="not closed"),
    Case("stray-backslash", "verb 3\\q", refused="backslash"),
    Case("unterminated-block", edit=replace(r"^</tls-crypt>\n", ""), refused="never closed"),
    Case(
        "line-openvpn-would-split",
        edit=replace(r"^</ca>$", "A" * 255 + "\n</ca>"),
        refused="longer than 254 bytes",
    ),
    Case(
        "block-over-64kib",
        "<extra-certs>\n" + ("A" * 63 + "\n") * 1100 + "</extra-certs>",
        refused="64 KiB",
    ),
    Case("too-many-lines", "\n" * 3000, refused="more than 2000 lines"),
    Case("overlong-line", "#" * 5000, refused="longer than 4096"),
]


def test_the_corpus_is_complete() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, private_bus: PrivateSystemBus, lab_pki: LabPKI
) -> Iterator[VpndProcess]:
    """One vpnd for the whole corpus."""
    process = VpndProcess(
        tmp_path_factory.mktemp("hostile") / "vpnd", private_bus.env({}), ca_file=lab_pki.ca_path
    )
    process.start()
    yield process
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def env(
    daemon: VpndProcess,
    private_bus: PrivateSystemBus,
    portal_session: TestPortal,
    lab_browser: Path,
) -> dict[str, str]:
    """A logged-in user of the module's daemon."""
    client = {
        "DBUS_SYSTEM_BUS_ADDRESS": private_bus.address,
        "BROWSER": str(lab_browser),
        "LANG": "C.UTF-8",
        "LANGUAGE": "",
        "LC_ALL": "",
        "LC_MESSAGES": "",
    }
    portal_session.reset()
    ok(vpnctl(["add", portal_session.base_url], client))
    ok(vpnctl(["login", portal_session.base_url], client))
    return client


@pytest.fixture(scope="module")
def baseline(
    daemon: VpndProcess, env: dict[str, str], portal_session: TestPortal
) -> tuple[str, str]:
    """The account openvpn runs as once connected, with nothing hostile in its config."""
    portal_session.reset()
    ok(vpnctl(["connect", portal_session.base_url, "--profile", PROFILE], env))
    [pid] = daemon.openvpn_children()
    found = account(pid)
    ok(vpnctl(["disconnect"], env))
    return found


@pytest.fixture(scope="module")
def traps() -> Iterator[Path]:
    """Where the cases' scratch directories go: readable by openvpn's account."""
    base = Path(tempfile.mkdtemp(prefix="vpnd-hostile-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


# --- the corpus, end to end ---------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_hostile_config_does_not_take_effect(
    case: Case,
    daemon: VpndProcess,
    env: dict[str, str],
    baseline: tuple[str, str],
    portal: TestPortal,
    traps: Path,
) -> None:
    scratch = Scratch(traps, case.id)
    try:
        if case.edit is not None:
            edit = case.edit
            portal.config_filter = lambda text: edit(text, scratch)
        else:
            snippet = case.snippet.format(**scratch.values())
            portal.config_filter = lambda text: text + snippet + "\n"
        log_start = len(daemon.log())
        result = vpnctl(["connect", portal.base_url, "--profile", PROFILE], env)
        if case.refused is not None:
            assert case.refused in failed(result)
            assert status(env)["error"] == "org.vpnd.Error.ConfigRejected"
            assert daemon.openvpn_children() == []
            # openvpn may have been started ahead of the config, but never got
            # it: it never came back over its management socket.
            assert "released from hold" not in daemon.log()[log_start:]
        else:
            ok(result)
            assert status(env)["state"] == "connected"
            [pid] = daemon.openvpn_children()
            assert account(pid) == baseline
            assert sorted(dropped_names(daemon.log()[log_start:])) == sorted(case.dropped)
            # While it runs (openvpn removes some files when it exits) ...
            scratch.assert_untouched()
            if case.check is not None:
                case.check(Live(daemon, env, scratch, pid, log_start))
            ok(vpnctl(["disconnect"], env))
            assert status(env)["state"] == "disconnected"
            assert daemon.openvpn_children() == []
        # ... and after (the `down` hooks have had their turn).
        scratch.assert_untouched()
    except BaseException:
        vpnctl(["disconnect"], env)
        raise
    finally:
        scratch.close()


# --- vpnd's own options come after the server's text ----------------------------------


async def test_vpnds_options_override_the_config_they_follow(
    openvpn_lab: OpenVPNLab, lab_pki: LabPKI, traps: Path, tmp_path: Path
) -> None:
    # The allow-list is bypassed here on purpose: this is the second line of
    # defence, for a directive the allow-list might one day let through.
    scratch = Scratch(traps, "override")
    cert_pem, key_pem = lab_pki.issue_client("hostile-override")
    config = openvpn_lab.client_config(cert_pem, key_pem) + (
        "script-security 2\nroute-up {mark}\nmanagement 127.0.0.1 {closed}\n".format(
            **scratch.values()
        )
    )
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    events: list[TunnelEvent] = []
    changed = asyncio.Event()

    def record(event: TunnelEvent) -> None:
        events.append(event)
        changed.set()

    async def until(predicate: Callable[[TunnelEvent], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not any(predicate(event) for event in events):
                changed.clear()
                await changed.wait()

    tunnel = Tunnel("override", TunnelSettings(runtime_dir=runtime_dir), record)
    try:
        await tunnel.start(config)  # vpnd's management connection works: it was not replaced
        await until(lambda e: isinstance(e, Up))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", scratch.closed_port), timeout=5).close()
    finally:
        await tunnel.stop()
    await until(lambda e: isinstance(e, TunnelExited))
    scratch.assert_untouched()  # route-up ran at CONNECTED, or would have
    scratch.close()
