"""A real openvpn server (UDP and TCP) inside its own network namespace, for tests and the demo.

Each lab claims a *slot* (a small number) by holding an advisory lock on
`/run/vpnd-lab/slot-N.lock` for its lifetime. The slot picks the names and
addresses, so two labs running at once (two test sessions, or a test next to
`make demo`) never collide, and a lock that nobody holds means whatever still
carries that slot's names was left by a lab that died and may be cleaned up.
The kernel drops the lock when its owner dies, however it dies.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.lab.pki import LabPKI
from tests.lab.process import terminate

_LOCK_DIR = Path("/run/vpnd-lab")
_SLOTS = 64
_READY_LINE = "Initialization Sequence Completed"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_UNIX_PATH_MAX = 107
_POLL_INTERVAL = 0.02
DATA_CIPHERS = "AES-256-GCM:CHACHA20-POLY1305"


class LabError(RuntimeError):
    """The lab could not be set up, or a process in it failed."""


@dataclass(frozen=True)
class Remote:
    """One `remote` line of a client profile."""

    host: str
    port: int
    proto: str  # "udp" or "tcp"


def build_client_config(
    *, ca_pem: str, cert_pem: str, key_pem: str, tls_crypt_key: str, remotes: list[Remote]
) -> str:
    """Return an OpenVPN client profile shaped like the ones an eduVPN v3 server returns."""
    lines = [
        "client",
        "dev tun",
        "nobind",
        "remote-cert-tls server",
        "verb 3",
        "server-poll-timeout 10",
        "tls-version-min 1.3",
        f"data-ciphers {DATA_CIPHERS}",
        "reneg-sec 0",
        *(f"remote {r.host} {r.port} {r.proto}" for r in remotes),
    ]
    blocks = [
        ("ca", ca_pem),
        ("cert", cert_pem),
        ("key", key_pem),
        ("tls-crypt", tls_crypt_key),
    ]
    text = "\n".join(lines) + "\n"
    for tag, body in blocks:
        text += f"<{tag}>\n{body.strip()}\n</{tag}>\n"
    return text


def ensure_tun_device() -> None:
    """Create /dev/net/tun when the machine lacks it (some containers do)."""
    path = Path("/dev/net/tun")
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(10, 200))


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def netns_exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return Path("/run/netns", name).exists()


def link_exists(name: str) -> bool:
    """Whether a network interface of that name exists in the root namespace."""
    return Path("/sys/class/net", name).exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it no longer runs anything.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_for_log(
    log_path: Path, needle: str, process: subprocess.Popen[bytes], timeout: float, what: str
) -> None:
    """Poll a log file until `needle` appears; fail early when the process exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if needle in log_path.read_text(errors="replace"):
                return
        if process.poll() is not None:
            raise LabError(f"{what} exited with {process.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(_POLL_INTERVAL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class OpenVPNLab:
    """A real openvpn server (UDP and TCP instances) inside its own network namespace, reached over a veth pair."""

    udp_port: int = 1194
    tcp_port: int = 1194

    def __init__(
        self,
        pki: LabPKI,
        workdir: Path,
        name: str = "vpnd-lab",
        *,
        server_lines: Sequence[str] = (),
    ) -> None:
        """Prepare a lab; nothing is created on the system until `start`.

        `server_lines` go into both servers' configs (a user check, say)."""
        self.pki = pki
        self.workdir = workdir
        self._server_lines = tuple(server_lines)
        # Room for "-NN-h" within the 15 characters Linux allows in an interface name.
        self._base = name[:10]
        self._lock: IO[str] | None = None
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._claim_slot()

    # --- names and addresses (all derived from the slot) ---

    @property
    def slot(self) -> int:
        """The number this lab's names and addresses are derived from."""
        return self._slot

    @property
    def netns(self) -> str:
        """The network namespace the servers run in."""
        return f"{self._base}-{self._slot}"

    @property
    def veth_host(self) -> str:
        """The root-namespace end of the veth pair."""
        return f"{self._base}-{self._slot}-h"

    @property
    def veth_peer(self) -> str:
        """The namespace end of the veth pair."""
        return f"{self._base}-{self._slot}-n"

    @property
    def host_address(self) -> str:
        """The veth address on the host side."""
        return f"10.213.{self._slot}.1"

    @property
    def server_address(self) -> str:
        """The veth address inside the namespace, where both servers listen."""
        return f"10.213.{self._slot}.2"

    @property
    def tunnel_gateway_udp(self) -> str:
        """The UDP server's own address inside its tunnel."""
        return f"10.214.{self._slot}.1"

    @property
    def tunnel_gateway_tcp(self) -> str:
        """The TCP server's own address inside its tunnel."""
        return f"10.215.{self._slot}.1"

    def tunnel_subnet(self, proto: str) -> str:
        """The tunnel subnet (CIDR) of the server for `proto` ("udp" or "tcp")."""
        return f"10.{214 if proto == 'udp' else 215}.{self._slot}.0/24"

    def management_path(self, proto: str) -> Path:
        """The unix socket of the management interface of the server for `proto`."""
        return self.workdir / f"mgmt-{proto}.sock"

    def log_path(self, proto: str) -> Path:
        """The log file of the server for `proto`."""
        return self.workdir / f"server-{proto}.log"

    # --- life cycle ---

    def start(self) -> None:
        """Create the namespace and veth, start both servers and wait until they serve."""
        if self._servers:
            return
        self._claim_slot()
        ensure_tun_device()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for proto in ("udp", "tcp"):
            if len(str(self.management_path(proto))) > _UNIX_PATH_MAX:
                raise LabError(f"workdir {self.workdir} is too long for a unix socket path")
        self._cleanup_system()
        atexit.register(self.stop)
        try:
            self._create_network()
            for proto in ("udp", "tcp"):
                self._start_server(proto)
            for proto in ("udp", "tcp"):
                _wait_for_log(
                    self.log_path(proto),
                    _READY_LINE,
                    self._servers[proto],
                    _START_TIMEOUT,
                    f"openvpn {proto} server in {self.netns}",
                )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the servers, delete the namespace and veth; safe to call twice."""
        atexit.unregister(self.stop)
        # Signal both first so their shutdowns overlap.
        for process in self._servers.values():
            if process.poll() is None:
                process.terminate()
                # A suspended server would sit on the signal until continued.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
        for process in self._servers.values():
            terminate(process, _STOP_TIMEOUT)
        self._servers.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._lock is not None:
            self._cleanup_system()
            self._lock.close()
            self._lock = None

    def __enter__(self) -> OpenVPNLab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether both servers are alive."""
        return bool(self._servers) and all(p.poll() is None for p in self._servers.values())

    def server_pid(self, proto: str) -> int:
        """The process id of the server for `proto`."""
        return self._servers[proto].pid

    # --- what tests use ---

    def client_config(self, cert_pem: str, key_pem: str, *, prefer_tcp: bool = False) -> str:
        """The profile text an eduVPN v3 server would return for this lab."""
        udp = Remote(self.server_address, self.udp_port, "udp")
        tcp = Remote(self.server_address, self.tcp_port, "tcp")
        return build_client_config(
            ca_pem=self.pki.ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            tls_crypt_key=self.pki.tls_crypt_key,
            remotes=[tcp, udp] if prefer_tcp else [udp, tcp],
        )

    def management(self, proto: str, command: str, timeout: float = 5.0) -> str:
        """Send one command to a server's management interface and return its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.management_path(proto)))
            reader = sock.makefile("r", encoding="utf-8", newline="\n")
            sock.sendall(command.encode() + b"\n")
            answer: list[str] = []
            for raw in reader:
                line = raw.rstrip("\r\n")
                if line.startswith(">"):
                    continue  # greeting and real-time notifications
                if not answer and line.startswith(("SUCCESS:", "ERROR:")):
                    return line
                if line == "END":
                    return "\n".join(answer)
                answer.append(line)
            raise LabError(f"management interface of the {proto} server closed early")

    def connected_clients(self, proto: str) -> list[str]:
        """The common names of the clients connected to the server for `proto`."""
        status = self.management(proto, "status 2")
        return [
            line.split(",")[1] for line in status.splitlines() if line.startswith("CLIENT_LIST,")
        ]

    def suspend(self, proto: str) -> None:
        """Freeze a server (SIGSTOP) so it stops answering, as a blocked port would."""
        os.kill(self._servers[proto].pid, signal.SIGSTOP)

    def resume(self, proto: str) -> None:
        """Let a suspended server run again."""
        os.kill(self._servers[proto].pid, signal.SIGCONT)

    # --- internals ---

    def _claim_slot(self) -> None:
        if self._lock is not None:
            return
        _LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(_SLOTS):
            handle = open(_LOCK_DIR / f"slot-{slot}.lock", "a+")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._slot = slot
            self._lock = handle
            return
        raise LabError(f"all {_SLOTS} lab slots are in use")

    def _cleanup_system(self) -> None:
        """Remove whatever carries this slot's names: ours, or a dead lab's leftovers."""
        if netns_exists(self.netns):
            pids = _run("ip", "netns", "pids", self.netns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + _STOP_TIMEOUT
            while any(_pid_alive(int(p)) for p in pids) and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL)
            _run("ip", "netns", "del", self.netns, check=False)
        if link_exists(self.veth_host):
            _run("ip", "link", "del", self.veth_host, check=False)
        for proto in ("udp", "tcp"):
            with contextlib.suppress(FileNotFoundError):
                self.management_path(proto).unlink()

    def _create_network(self) -> None:
        ns = self.netns
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer,
             "netns", ns)  # fmt: skip
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth_host)
        _run("ip", "link", "set", self.veth_host, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.server_address}/30", "dev", self.veth_peer)
        _run("ip", "-n", ns, "link", "set", self.veth_peer, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _server_config(self, proto: str) -> str:
        network = self.tunnel_subnet(proto).split("/")[0]
        lines = [
            f"dev lab-{proto}",
            "dev-type tun",
            "proto udp" if proto == "udp" else "proto tcp-server",
            f"local {self.server_address}",
            f"port {self.udp_port if proto == 'udp' else self.tcp_port}",
            "topology subnet",
            f"server {network} 255.255.255.0",
            # The client runs in the root namespace of a shared machine: it must
            # learn only the tunnel subnet, never a default route.
            f'push "route {network} 255.255.255.0"',
            "dh none",
            f"ca {self.pki.ca_path}",
            f"cert {self.pki.server_cert_path}",
            f"key {self.pki.server_key_path}",
            f"tls-crypt {self.pki.tls_crypt_path}",
            "remote-cert-tls client",
            "tls-version-min 1.3",
            f"data-ciphers {DATA_CIPHERS}",
            "reneg-sec 0",
            "keepalive 10 60",
            "disable-dco",
            "verb 3",
            f"management {self.management_path(proto)} unix",
            *self._server_lines,
        ]
        return "\n".join(lines) + "\n"

    def _start_server(self, proto: str) -> None:
        config = self.workdir / f"server-{proto}.conf"
        config.write_text(self._server_config(proto))
        log = open(self.log_path(proto), "wb")  # noqa: SIM115
        self._logs[proto] = log
        self._servers[proto] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "openvpn", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )


class PlainClient:
    """A plain `openvpn --config FILE` client in the root namespace (no daemon), as a baseline."""

    def __init__(self, config_text: str, workdir: Path, name: str = "client") -> None:
        """Write the profile to `workdir`; nothing runs until `start`."""
        self.workdir = workdir
        self.config_path = workdir / f"{name}.ovpn"
        self.log_path = workdir / f"{name}.log"
        self.config_text = config_text
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start openvpn; returns at once (see `wait_connected`)."""
        ensure_tun_device()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        self.config_path.chmod(0o600)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            ["openvpn", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def wait_connected(self, timeout: float = 20.0) -> None:
        """Wait until openvpn reports the tunnel up; raise LabError if it fails first."""
        assert self.process is not None, "start() first"
        _wait_for_log(self.log_path, _READY_LINE, self.process, timeout, "openvpn client")

    @property
    def log(self) -> str:
        """The client's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def tun_device(self) -> str | None:
        """The tun interface openvpn opened, once it has."""
        match = re.search(r"TUN/TAP device (\S+) opened", self.log)
        return match.group(1) if match else None

    def stop(self) -> None:
        """Stop openvpn and wait for it to exit; safe to call twice."""
        if self.process is not None:
            terminate(self.process, _STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PlainClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
