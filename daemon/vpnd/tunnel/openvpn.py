"""One openvpn child process, driven over its management socket.

The daemon listens on a unix socket in its runtime directory and openvpn
connects to it (`--management-client`). That way nothing has to wait for a
socket file to appear, the daemon can check that the peer is its own child,
the socket file is gone as soon as openvpn is connected, and openvpn exits by
itself when the daemon goes away (it treats the end of a client-mode
management connection as SIGTERM).

The config text is handed to openvpn on its standard input (`--config
/dev/stdin`), so key material never touches the disk. Options after it on the
command line override whatever the config says. openvpn can be started before
its config is known (`prepare()`): it loads its libraries and initialises its
crypto library and then waits on its standard input, so that work is done
while the server is still being asked for the config.

The private key does not go to openvpn at all: given one, the tunnel adds
`management-external-key` to the config it hands over (the server's config
can hold no `management` directive) and answers each `>PK_SIGN` with a
signature made here. openvpn never runs as root for longer than its setup:
started by the daemon (`ChildLauncher`), it drops to an unprivileged user
(`--user`, `--group`) once the tun device is open, keeping CAP_NET_ADMIN
alone (linked with libcap-ng), which is what it needs to remove its routes
and device on the way out; started by systemd (`SystemdLauncher`), it runs
as that user with CAP_NET_ADMIN from the start. `--persist-tun` keeps the
device over a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import re
import signal
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from vpnd.errors import InvalidArgument, TunnelFailed, VpndError
from vpnd.protocols.credentials import Dialog, Question, Refusal, Reply
from vpnd.protocols.dns import PushedDnsRejected, PushReplyReader
from vpnd.protocols.management import (
    Answered,
    ByteCountEvent,
    CommandResult,
    Conversation,
    Event,
    FatalEvent,
    HoldEvent,
    InfoEvent,
    PasswordEvent,
    PkSignEvent,
    ProtocolViolation,
    StateEvent,
    UnexpectedLine,
    pk_sig,
)
from vpnd.steps import Steps
from vpnd.tunnel.events import (
    Lost,
    Progress,
    PromptEvent,
    Traffic,
    TunnelEvent,
    TunnelExited,
    Up,
)
from vpnd.tunnel.process import ChildLauncher, Launcher, OpenVPNProcess

if TYPE_CHECKING:
    # Loaded when a tunnel with a key starts: cryptography is not needed before.
    from vpnd.protocols.pksign import Signer

log = logging.getLogger("vpnd.tunnel")

_T = TypeVar("_T")

#: openvpn logs data-channel keys from verb 7 on.
MAX_VERB = 6

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: The account openvpn runs as after its setup, created when vpnd is installed.
DEFAULT_USER = "vpnd-openvpn"
# A key in the config (a directive or an inline block) that openvpn would load
# itself; with an external key there must be none.
_KEY_IN_CONFIG = re.compile(
    r"^[ \t]*(?:--)?(?:key|pkcs12)(?:[ \t]|$)|^[ \t]*<(?:key|pkcs12)>", re.M
)
# sockaddr_un.sun_path is 108 bytes, NUL included.
_MAX_SOCKET_PATH = 107
_TAIL_LINES = 20

# --machine-readable-output prefixes each line with "<time> <flags in hex> ".
_MACHINE_LINE = re.compile(r"[0-9]+\.[0-9]+ ([0-9a-fA-F]+) (.*)", re.DOTALL)
# openvpn's message flags (error.h).
_M_FATAL = 1 << 4
_M_NONFATAL = 1 << 5
_M_USAGE_SMALL = 1 << 13
_M_OPTERR = 1 << 15
_USAGE_HINT = "Use --help for more information."

# Secrets openvpn may echo into its log: arguments of management commands
# (usernames, challenge responses), challenge responses it sends to the
# server, and session tokens.
_REDACTIONS = (
    (re.compile(r"(MANAGEMENT: CMD '[^' ]*).*"), r"\1 [...]'"),
    (re.compile(r"(CR_RESPONSE,)[^'\s]*"), r"\1[...]"),
    (re.compile(r"(auth-token(?:-user)?[ ,])[^,'\s]*"), r"\1[...]"),
    (re.compile(r"(Auth-Token:)\S*"), r"\1[...]"),
)


def _redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


@dataclass(frozen=True)
class TunnelSettings:
    """How tunnels are run; the same for every tunnel of a daemon."""

    runtime_dir: Path  # 0700 directory for the management socket
    openvpn: str = "openvpn"  # binary
    verb: int = 3
    bytecount_interval: int = 1  # seconds between >BYTECOUNT events; 0 turns them off
    start_timeout: float = 10.0  # from spawning openvpn until its hold is released
    # The account openvpn drops to after setup; None keeps it root (tests, odd setups).
    user: str | None = DEFAULT_USER
    # Its group; None means the user's own primary group, never root's.
    group: str | None = DEFAULT_USER
    # How openvpn is started: the daemon's child, or a systemd unit.
    launcher: Launcher = field(default_factory=ChildLauncher)

    def __post_init__(self) -> None:
        if not 0 <= self.verb <= MAX_VERB:
            raise ValueError(
                f"verb must be between 0 and {MAX_VERB}: higher levels log key material"
            )
        if self.bytecount_interval < 0:
            raise ValueError("bytecount_interval cannot be negative")
        if self.start_timeout <= 0:
            raise ValueError("start_timeout must be positive")
        if self.user is None and self.group is not None:
            raise ValueError("a group without a user would leave openvpn running as root")


@dataclass(frozen=True)
class _LogLine:
    flags: int | None  # None when openvpn printed the line without flags
    text: str


class Tunnel:
    """One openvpn child process, driven over its management socket.

    `prepare()` spawns openvpn ahead of its config, if the caller knows that
    one is coming; `start()` hands over the config (spawning openvpn first if
    prepare() did not) and returns once openvpn is released from its hold
    and is connecting; from then on `on_event` gets openvpn's states, byte
    counts and fatal errors, and finally one `TunnelExited`. That last event
    comes whenever a process was spawned, also when `start()` fails (before
    it raises).
    """

    def __init__(
        self, name: str, settings: TunnelSettings, on_event: Callable[[TunnelEvent], None]
    ) -> None:
        """`name` names the socket (letters, digits, `._-`)."""
        if _NAME.fullmatch(name) is None:
            raise ValueError(f"invalid tunnel name {name!r}")
        self.socket_path: Path = settings.runtime_dir / f"{name}.sock"
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path {self.socket_path} is too long for a unix socket")
        #: The openvpn process id once it is spawned (kept after it exited, for logs).
        self.pid: int | None = None
        self._name = name
        self._settings = settings
        self._on_event = on_event
        self._signer: Signer | None = None
        self._account: tuple[str, str] | None = None  # (user, group) openvpn drops to

        self._proc: OpenVPNProcess | None = None
        self._conversation = Conversation()
        self._writer: asyncio.StreamWriter | None = None
        self._management_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._spawn_lock = asyncio.Lock()
        # Spawning openvpn, from prepare() or start(); its result is the listener.
        self._launch_task: asyncio.Task[socket.socket] | None = None
        self._listener: socket.socket | None = None
        self._config_sent = False
        # Replies awaited, by the ticket the conversation gave their command.
        self._replies: dict[int, asyncio.Future[CommandResult]] = {}
        self._exited = asyncio.Event()

        self._started = False
        self._stop_requested = False
        self._tail: deque[_LogLine] = deque(maxlen=_TAIL_LINES)
        # The device and the pushed DNS, from the log; Up waits for the log's
        # "Initialization Sequence Completed", which openvpn writes just before
        # it reports CONNECTED over the other channel (verb 1 and up).
        self._push = PushReplyReader()
        self._set_up = False
        self._pending_up: Up | None = None
        self._full_tunnel = False  # the config redirects the default gateway
        self._fatal = ""
        self._auth_failure: str | None = None
        self._dialog = Dialog(None)
        # Why the daemon ended openvpn: a protocol violation, a refused signature or login.
        self._failure: VpndError | None = None
        self._exit: TunnelExited | None = None
        self._signing_tasks: set[asyncio.Task[None]] = set()

    # -- public ------------------------------------------------------------

    def prepare(self) -> None:
        """Spawn openvpn now, ahead of its config, which start() hands over.

        openvpn loads its libraries and initialises its crypto library, then
        waits on its standard input. Call it when a config is on its way (the
        server is being asked for one); stop() ends such an openvpn, started
        or not. Failures to spawn come out of start().
        """
        if self._launch_task is None and not self._stop_requested:
            self._launch_task = asyncio.create_task(self._launch())
            # start() retrieves a failure; a tunnel stopped before that must not
            # leave it unretrieved.
            self._launch_task.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def start(
        self,
        config: str,
        *,
        private_key: bytes | None = None,
        user_pass: tuple[str, str] | None = None,
    ) -> None:
        """Hand openvpn `config` (sanitized config text), take over its
        management connection and release its hold.

        With `private_key` (PEM) openvpn signs through the daemon and never
        sees the key; `config` must then hold no key of its own (ValueError).
        `user_pass` answers openvpn's request for a user name and password
        (`auth-user-pass`), once: a second request means the server refused it.
        Whatever else openvpn asks (a password nobody kept, a challenge, a
        login in the browser) becomes a PromptEvent, answered with answer().

        Raises TunnelFailed, with openvpn's own last error lines in the
        message, if openvpn cannot be spawned, exits, does not connect within
        the settings' `start_timeout`, or stop() is called meanwhile; also if
        the private key cannot be used or openvpn's account does not exist.
        It cleans up (ends an openvpn that prepare() spawned) before raising.
        """
        if self._started:
            raise RuntimeError("a Tunnel can be started once")
        self._started = True
        if private_key is not None and _KEY_IN_CONFIG.search(config):
            await self.stop()
            raise ValueError("with an external private key the config must not hold a key")
        steps = Steps(log, f"tunnel {self._name}")
        self._take_config(config, user_pass)
        if private_key is not None:
            from vpnd.protocols.pksign import Signer

            try:
                # From here on the key lives in the signer only.
                self._signer = Signer.from_pem(private_key)
            except BaseException:
                await self.stop()
                raise
            # The paddings openvpn may ask for; without `pss` TLS 1.3 fails
            # with an RSA key. No `nopadding`: raw RSA is refused anyway.
            config += "\nmanagement-external-key pkcs1 pss\n"
        self.prepare()
        if self._launch_task is None:
            raise TunnelFailed("the connection was stopped before openvpn started")
        try:
            await asyncio.shield(self._launch_task)
        except BaseException:
            # Cancelled, or the spawn failed: stop() waits for a spawn still
            # under way, so that no openvpn is left waiting for its config.
            await asyncio.shield(self.stop())
            raise
        if self._stop_requested:
            await asyncio.shield(self._shutdown())
            raise TunnelFailed("the connection was stopped before openvpn started")
        steps.step("openvpn is spawned")
        try:
            async with asyncio.timeout(self._settings.start_timeout):
                await self._send_config(config)
                steps.step("sent the config")
                connection = await self._accept()
                self._close_listener()
                steps.step("openvpn connected to the management socket")
                await self._handshake(connection)
                steps.step("released openvpn from its hold")
            if self._stop_requested:
                raise TunnelFailed("the connection was stopped while openvpn was starting")
        except BaseException as error:
            self._close_listener()
            await asyncio.shield(self._shutdown())
            if self._writer is not None:
                # Opened after openvpn had already exited and been reported.
                self._writer.close()
            if not isinstance(error, Exception):
                raise  # cancelled: openvpn is gone, the cancellation goes on
            if self._stop_requested:
                raise TunnelFailed(
                    "the connection was stopped while openvpn was starting"
                ) from None
            if isinstance(error, TimeoutError):
                raise TunnelFailed(
                    f"openvpn did not start within {self._settings.start_timeout:g} seconds"
                    + self._reason_suffix()
                ) from None
            if isinstance(error, TunnelFailed):
                reason = self._exit.reason if self._exit is not None else error.message
                raise TunnelFailed(f"openvpn could not start: {reason}") from None
            raise

    def _take_config(self, config: str, user_pass: tuple[str, str] | None) -> None:
        """What the tunnel itself learns from its config and credentials."""
        self._dialog = Dialog(user_pass)
        self._full_tunnel = re.search(r"^redirect-gateway\b", config, re.M) is not None

    async def _launch(self) -> socket.socket:
        """Spawn openvpn with a listener for its management connection."""
        async with self._spawn_lock:
            if self._stop_requested:
                raise TunnelFailed("the connection was stopped before openvpn started")
            self._account = _account(self._settings)
            self._listener = self._listen()
            try:
                await self._spawn()
            except BaseException:
                self._close_listener()
                raise
            return self._listener

    async def stop(self, timeout: float = 5.0) -> None:
        """Make openvpn exit and wait until it has; idempotent, safe at any point.

        Asks over the management connection first, then sends SIGTERM, and
        SIGKILL when `timeout` seconds have passed. Returns after
        TunnelExited was delivered (or at once if openvpn was never spawned).
        """
        self._stop_requested = True
        # A start() that is spawning openvpn right now finishes spawning first.
        async with self._spawn_lock:
            pass
        await asyncio.shield(self._shutdown(timeout))

    # -- process -----------------------------------------------------------

    def _argv(self) -> list[str]:
        settings = self._settings
        argv = [
            settings.openvpn,
            "--config",
            "/dev/stdin",
            # After the config, so that the config cannot change them.
            "--management",
            settings.launcher.management_path(self.socket_path),
            "unix",
            "--management-client",
            "--management-hold",
            "--management-query-passwords",
            "--auth-retry",
            "interact",
            # What the daemon can ask a person through its prompt channel; a
            # server offers a browser login or a text challenge only to
            # clients that say so.
            "--setenv",
            "IV_SSO",
            "webauth,openurl,crtext",
            "--script-security",
            "1",
            "--verb",
            str(settings.verb),
            "--machine-readable-output",
        ]
        if self._account is not None:
            if settings.launcher.switches_user:
                user, group = self._account
                argv += ["--user", user, "--group", group]
            argv += ["--persist-tun", "--persist-key"]
        return argv

    def _listen(self) -> socket.socket:
        if not self._settings.runtime_dir.is_dir():
            raise TunnelFailed(f"the runtime directory {self._settings.runtime_dir} is missing")
        # A socket left by a run that was killed; names are unique per live tunnel.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fsencode(self.socket_path))
            os.chmod(self.socket_path, self._settings.launcher.socket_mode)
            listener.listen(1)
            listener.setblocking(False)
        except OSError as error:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            raise TunnelFailed(
                f"cannot create the management socket {self.socket_path}: {error.strerror}"
            ) from None
        return listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _spawn(self) -> None:
        self._proc = await self._settings.launcher.launch(
            self._name, self._argv(), _child_environment(), self.socket_path, self._account
        )
        self.pid = self._proc.pid
        log.info("tunnel %s: openvpn started (%s)", self._name, self._proc.label)
        self._watch_task = asyncio.create_task(self._watch(self._proc))

    async def _send_config(self, config: str) -> None:
        assert self._proc is not None
        self._config_sent = True
        await self._proc.send_input(config.encode("utf-8"))

    async def _accept(self) -> socket.socket:
        assert self._proc is not None and self._listener is not None
        listener = self._listener
        loop = asyncio.get_running_loop()
        while True:
            connection = await self._unless_exited(loop.sock_accept(listener))
            connection_socket = connection[0]
            peer_pid, peer_uid = _peer(connection_socket)
            try:
                accepted = await self._unless_exited(self._proc.is_peer(peer_pid, peer_uid))
            except BaseException:
                connection_socket.close()
                raise
            if accepted:
                self.pid = peer_pid
                return connection_socket
            log.warning(
                "tunnel %s: refused a management connection from pid %s", self._name, peer_pid
            )
            connection_socket.close()

    async def _watch(self, proc: OpenVPNProcess) -> None:
        """Read openvpn's output until it exits, then report the exit once."""
        try:
            await self._read_output(proc)
            returncode = await proc.wait()
            if self._management_task is not None:
                # The connection ends with the process; its last lines may hold >FATAL.
                with contextlib.suppress(Exception):
                    await self._management_task
            self._exit = TunnelExited(
                returncode=returncode,
                reason=self._exit_reason(returncode),
                requested=self._stop_requested,
                error=None if self._stop_requested else self._failure,
            )
        finally:
            if self._writer is not None:
                self._writer.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            # Set even if this task dies, so that stop() never waits forever.
            self._exited.set()
        log.info(
            "tunnel %s: openvpn (%s) exited with status %d: %s",
            self._name,
            proc.label,
            returncode,
            self._exit.reason,
        )
        self._emit(self._exit)

    async def _read_output(self, proc: OpenVPNProcess) -> None:
        while True:
            try:
                line = await proc.readline()
            except ValueError:
                continue  # an overlong line, dropped; reading on keeps openvpn from blocking
            except OSError as error:
                log.debug("tunnel %s: reading openvpn's output failed: %s", self._name, error)
                return
            if not line:
                return
            self._output_line(line)

    def _output_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        match = _MACHINE_LINE.fullmatch(line)
        text = match[2] if match is not None else line
        entry = _LogLine(int(match[1], 16) if match is not None else None, _redact(text))
        if not entry.text:
            return
        self._tail.append(entry)
        log.debug("openvpn[%s]: %s", self.pid or self._name, entry.text)
        # Unredacted: a redaction can take the option after a bare auth-token
        # with it. The reader keeps DNS options only, never a token.
        self._read_push(text)

    def _read_push(self, text: str) -> None:
        try:
            completed = self._push.feed(text)
        except PushedDnsRejected as error:
            log.warning("tunnel %s: %s; the DNS is left as it is", self._name, error.message)
            return
        if completed:
            self._set_up = True
            if self._pending_up is not None:
                up, self._pending_up = self._pending_up, None
                self._emit_up(up)

    def _emit_up(self, up: Up) -> None:
        pushed = self._push.pushed
        if self._full_tunnel and not pushed.redirect_gateway:
            pushed = dataclasses.replace(pushed, redirect_gateway=True)
        self._emit(dataclasses.replace(up, link=self._push.device, dns=pushed))

    async def _shutdown(self, timeout: float = 5.0) -> None:
        """The one way down, shared by stop() and a failed start()."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._terminate(timeout))
        await self._stop_task

    async def _terminate(self, timeout: float) -> None:
        self._close_listener()
        proc = self._proc
        if proc is None:
            return
        if not self._config_sent:
            # Spawned ahead of its config: blocked reading it, openvpn leaves
            # signals pending, but the end of its input ends it.
            self._config_sent = True
            await proc.send_input(b"")
        steps: list[tuple[Callable[[], None], float]] = []
        if self._writer is not None and not self._writer.is_closing():
            steps.append((self._ask_to_exit, timeout / 2))
            steps.append((lambda: proc.send_signal(signal.SIGTERM), timeout / 2))
        else:
            steps.append((lambda: proc.send_signal(signal.SIGTERM), timeout))
        steps.append((lambda: proc.send_signal(signal.SIGKILL), 0))
        for action, wait in steps:
            if self._exited.is_set():
                break
            action()
            if wait <= 0:
                await self._exited.wait()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._exited.wait()

    def _ask_to_exit(self) -> None:
        # Not through _command(): it must not wait behind a command in flight,
        # and openvpn may be gone before it answers.
        assert self._writer is not None
        data, _tickets = self._conversation.send(("signal", "SIGTERM"))
        with contextlib.suppress(OSError):
            self._writer.write(data)

    # -- management connection ---------------------------------------------

    async def _handshake(self, connection: socket.socket) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=connection)
        self._management_task = asyncio.create_task(self._read_management(reader))
        # `version 4`, which openvpn 2.6 does not answer and later ones do (the
        # conversation tells the two apart), and the rest in the same write,
        # then the replies in turn: openvpn reads the commands in order and
        # none depends on an earlier reply. Releasing the hold does
        # not wait for >HOLD either: a release that comes first is kept and
        # the hold then ends at once; what the hold is for, that vpnd is
        # connected and has asked for states, holds by the order of the lines.
        commands = [("state", "on")]
        if self._settings.bytecount_interval:
            commands.append(("bytecount", str(self._settings.bytecount_interval)))
        # With the hold flag off, openvpn's own restarts (ping-restart, a
        # server's RESTART) do not wait for the daemon again.
        commands += [("hold", "off"), ("hold", "release")]
        version, version_tickets = self._conversation.announce_version()
        data, tickets = self._conversation.send(*commands)
        await self._exchange(
            version + data,
            [*version_tickets, *tickets],
            ("version", "pid", *(words[0] for words in commands)),
        )
        log.info("tunnel %s: openvpn released from hold", self._name)

    async def _commands(self, commands: Sequence[tuple[str, ...]]) -> None:
        """Send several one-line commands in one write; TunnelFailed on the first ERROR.

        Raises ValueError, with nothing sent, for a word openvpn could not take."""
        data, tickets = self._conversation.send(*commands)
        await self._exchange(data, tickets, tuple(words[0] for words in commands))

    async def _request(self, data: bytes, name: str) -> CommandResult:
        """Send a block like `pk-sig` that has one reply line."""
        ticket = self._conversation.send_block(data)
        (result,) = await self._exchange(data, [ticket], (name,))
        return result

    async def _exchange(
        self, data: bytes, tickets: Sequence[int], names: Sequence[str]
    ) -> list[CommandResult]:
        """Write `data` at once (the tickets' order is the order on the wire),
        then await each reply; TunnelFailed on the first ERROR or an exit."""
        loop = asyncio.get_running_loop()
        replies = [loop.create_future() for _ in tickets]
        self._replies.update(zip(tickets, replies, strict=True))
        if self._writer is None or self._writer.is_closing():
            raise TunnelFailed("openvpn's management connection is closed")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError:
            raise TunnelFailed("openvpn's management connection is closed") from None
        results = []
        for name, reply in zip(names, replies, strict=True):
            result = await self._unless_exited(reply)
            if not result.ok:
                raise TunnelFailed(f"openvpn refused `{name}`: {result.text}")
            results.append(result)
        return results

    async def _read_management(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                for event in self._conversation.feed(data):
                    self._dispatch(event)
        except ProtocolViolation as error:
            log.error("tunnel %s: %s", self._name, error.message)
            self._fail(error)
        except OSError as error:
            log.debug("tunnel %s: management connection failed: %s", self._name, error)
        finally:
            # Cancelled, not failed: a future nobody awaits any more must not
            # leave an unretrieved exception behind.
            for reply in self._replies.values():
                reply.cancel()
            self._replies.clear()

    def _dispatch(self, event: Event | Answered) -> None:
        if isinstance(event, Answered):
            reply = self._replies.pop(event.ticket, None)
            if reply is None:
                log.debug("tunnel %s: reply nobody waited for: %s", self._name, event.result.text)
            elif not reply.done():
                reply.set_result(event.result)
            return
        if isinstance(event, StateEvent):
            self._on_state(event)
        elif isinstance(event, ByteCountEvent):
            self._emit(Traffic(event.bytes_in, event.bytes_out))
        elif isinstance(event, FatalEvent):
            log.debug("tunnel %s: fatal: %s", self._name, event.text)
            # The reason of the exit that follows.
            self._fatal = event.text
        elif isinstance(event, HoldEvent):
            # Released in the handshake already, with or without this notice.
            log.debug("tunnel %s: openvpn holds: %s", self._name, event.text)
        elif isinstance(event, PasswordEvent):
            self._on_password(event)
        elif isinstance(event, InfoEvent) and event.kind == "INFOMSG":
            self._on_outcome(self._dialog.on_info(event.text))
        elif isinstance(event, PkSignEvent):
            self._on_pk_sign(event)
        elif isinstance(event, UnexpectedLine):
            log.debug("tunnel %s: unexpected management line", self._name)
        else:
            # Notices vpnd does not act on (NEED-OK, LOG, ...); their text may
            # carry secrets, so only the kind is logged.
            log.debug("tunnel %s: management notification %s", self._name, type(event).__name__)

    def _on_state(self, event: StateEvent) -> None:
        """openvpn's state, as the neutral events the manager understands."""
        log.debug("tunnel %s: state %s %s", self._name, event.name, event.detail)
        if event.name == "EXITING":
            if event.detail == "auth-failure":
                self._auth_failure = self._auth_failure or ""
            return  # the exit itself (TunnelExited) tells the rest
        if self._dialog.on_state(event.name):
            self._emit(PromptEvent(None))
        if event.name == "CONNECTED":
            self._auth_failure = None
            up = Up(event.local_ip, event.local_ipv6, event.remote_ip, event.remote_port)
            if self._set_up or self._settings.verb < 1:
                self._emit_up(up)
            else:
                self._pending_up = up
        elif event.name == "RECONNECTING":
            self._set_up, self._pending_up = False, None
            self._push.restart()
            self._emit(Lost(event.detail))
        else:
            self._emit(Progress(event.name, event.detail))

    def _on_password(self, event: PasswordEvent) -> None:
        if event.text.startswith("Need "):
            # The request names what is asked, never a secret: fine to log.
            log.debug("tunnel %s: openvpn asks: %s", self._name, event.text[:80])
        else:
            log.debug("tunnel %s: password notification (not logged)", self._name)
        self._on_outcome(self._dialog.on_password(event.text))

    def _on_outcome(self, outcome: Question | Reply | Refusal | None) -> None:
        """Act on what the credential dialog made of a notification."""
        if isinstance(outcome, Question):
            log.info("tunnel %s: openvpn asks a person (%s)", self._name, outcome.kind)
            self._emit(PromptEvent(outcome))
        elif isinstance(outcome, Reply):
            log.debug("tunnel %s: answering openvpn's question", self._name)
            self._send_reply(outcome)
        elif isinstance(outcome, Refusal):
            log.info("tunnel %s: %s", self._name, outcome.error.message)
            self._fail(outcome.error)

    def answer(self, values: Mapping[str, str]) -> None:
        """Answer the question of the last PromptEvent with `values` (field name → text).

        Raises InvalidArgument, keeping the question open, when the values do
        not fit it, and when nothing is asked that takes an answer.
        """
        if self._exited.is_set():
            raise InvalidArgument("openvpn has stopped; nothing is asked any more")
        self._send_reply(self._dialog.answer(values))

    def _send_reply(self, reply: Reply) -> None:
        task = asyncio.create_task(self._send_commands(reply))
        # Kept like the signing tasks: a task without a reference may vanish.
        self._signing_tasks.add(task)
        task.add_done_callback(self._signing_tasks.discard)

    async def _send_commands(self, reply: Reply) -> None:
        try:
            await self._commands(reply.commands)
        except ValueError:
            # What openvpn could not receive intact (a control character, too long).
            self._fail(TunnelFailed("the answer cannot be passed to openvpn"))
        except TunnelFailed as error:
            self._fail(error)

    def _on_pk_sign(self, event: PkSignEvent) -> None:
        # Neither the data nor the signature is logged: both are handshake
        # material, and the log outlives the connection.
        if self._signer is None:
            self._fail(TunnelFailed("openvpn asked for a signature but has no external key"))
            return
        from vpnd.protocols.pksign import SigningError

        try:
            signature = self._signer.sign_request(event.data, event.algorithm)
        except SigningError as error:
            log.error("tunnel %s: %s", self._name, error.message)
            self._fail(error)
            return
        log.debug("tunnel %s: signed for openvpn (%s)", self._name, event.algorithm)
        task = asyncio.create_task(self._send_signature(signature))
        self._signing_tasks.add(task)
        task.add_done_callback(self._signing_tasks.discard)

    async def _send_signature(self, signature: bytes) -> None:
        try:
            await self._request(pk_sig(signature), "pk-sig")
        except TunnelFailed as error:
            if not self._exited.is_set() and self._failure is None:
                log.error("tunnel %s: %s", self._name, error.message)
                self._fail(error)

    def _fail(self, error: VpndError) -> None:
        """End openvpn because of `error`, which becomes the reason of its exit."""
        if self._failure is None:
            self._failure = error
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)

    # -- helpers -------------------------------------------------------------

    async def _unless_exited(self, awaitable: Awaitable[_T]) -> _T:
        """Await `awaitable`, or raise TunnelFailed if openvpn exits first."""
        task = asyncio.ensure_future(awaitable)
        exited = asyncio.ensure_future(self._exited.wait())
        try:
            await asyncio.wait((task, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            if not task.done():
                # Its reply, if it still comes, finds no one waiting.
                task.cancel()
        if not task.done():
            raise TunnelFailed("openvpn exited")
        if task.cancelled():
            raise TunnelFailed("openvpn closed its management connection")
        return task.result()

    def _emit(self, event: TunnelEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("tunnel %s: the event handler failed on %s", self._name, event)

    def _exit_reason(self, returncode: int | None = None) -> str:
        if self._auth_failure is not None:
            return "authentication failed" + (
                f": {self._auth_failure}" if self._auth_failure else ""
            )
        if self._stop_requested:
            return "stopped"
        if self._failure is not None:
            return self._failure.message
        if self._fatal:
            return self._fatal
        launcher_reason = None
        if returncode is not None and self._proc is not None:
            launcher_reason = self._proc.exit_reason(returncode)
        if launcher_reason is not None:
            return launcher_reason
        if returncode is not None and returncode < 0:
            # Its last lines tell what it was doing, not why it ended.
            return f"openvpn was killed by signal {-returncode}"
        summary = self._error_summary()
        if summary:
            return summary
        return f"openvpn exited with status {returncode}"

    def _reason_suffix(self) -> str:
        summary = self._error_summary()
        return f"; its last words: {summary}" if summary else ""

    def _error_summary(self) -> str:
        """openvpn's own words for what went wrong, from the last lines of its output."""
        lines = [line for line in self._tail if line.text != _USAGE_HINT]
        fatal = [line.text for line in lines if (line.flags or 0) & _M_FATAL]
        if fatal:
            return fatal[-1]
        errors = [
            line.text
            for line in lines
            if (line.flags or 0) & (_M_NONFATAL | _M_OPTERR | _M_USAGE_SMALL)
        ]
        if errors:
            return "; ".join(errors[-2:])
        return "; ".join(line.text for line in lines[-3:])


def _child_environment() -> dict[str, str]:
    """openvpn's whole environment: nothing of the daemon's is passed on.

    openvpn speaks sd_notify itself: with the daemon's NOTIFY_SOCKET it would
    report to the service manager in the daemon's name, and block once the
    socket's queue is full. Credentials, proxies and locales stay out too.
    """
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}


def _account(settings: TunnelSettings) -> tuple[str, str] | None:
    """The (user, group) openvpn drops to, checked to exist; None to stay root."""
    if settings.user is None:
        return None
    try:
        entry = pwd.getpwnam(settings.user)
    except KeyError:
        raise TunnelFailed(
            f"the user {settings.user} that openvpn runs as does not exist; create it with "
            f"`systemd-sysusers` or `useradd --system --no-create-home "
            f"--shell /usr/sbin/nologin {settings.user}`"
        ) from None
    if entry.pw_uid == 0:
        raise TunnelFailed(f"openvpn must run as an unprivileged user, not {settings.user}")
    if settings.group is None:
        try:
            group = grp.getgrgid(entry.pw_gid)
        except KeyError:
            raise TunnelFailed(
                f"the primary group ({entry.pw_gid}) of the user {settings.user} has no name"
            ) from None
    else:
        try:
            group = grp.getgrnam(settings.group)
        except KeyError:
            raise TunnelFailed(
                f"the group {settings.group} that openvpn runs as does not exist; create it "
                f"with `systemd-sysusers` or `groupadd --system {settings.group}`"
            ) from None
    if group.gr_gid == 0:
        raise TunnelFailed(f"openvpn must run with a group of its own, not {group.gr_name}")
    return settings.user, group.gr_name


def _peer(connection: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a unix socket."""
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    pid, uid, _gid = struct.unpack("3i", credentials)
    return int(pid), int(uid)
