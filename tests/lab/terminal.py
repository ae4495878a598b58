"""A command run on a real terminal (a pseudo-terminal), typed at as a person would."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from types import TracebackType


class Terminal:
    """`argv` on a new pseudo-terminal that is its controlling terminal, so
    that getpass turns echo off as it does for a person."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        full_env = {**os.environ, **env, "TERM": "dumb"}
        pid, fd = pty.fork()
        if pid == 0:  # the child: nothing but exec
            try:
                os.execvpe(argv[0], list(argv), full_env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self._seen = 0
        self.returncode: int | None = None

    @classmethod
    def vpnctl(cls, args: Sequence[str], env: Mapping[str, str]) -> Terminal:
        """vpnctl with `args`, from the tests' Python."""
        return cls([sys.executable, "-m", "vpnctl", *args], env)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Wait until `text` appears in the output after what earlier calls saw;
        return the output up to and with it."""
        deadline = time.monotonic() + timeout
        while True:
            at = self.output.find(text, self._seen)
            if at >= 0:
                start, self._seen = self._seen, at + len(text)
                return self.output[start : self._seen]
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")

    def send(self, line: str) -> None:
        """Type `line` and Enter."""
        os.write(self.fd, line.encode() + b"\r")

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the command to end (reading all it prints); its exit status."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                while self._read(0.2):
                    pass
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s:\n{self.output}")
            self._read(0.1)
        return self.returncode

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the other side is closed
            return False
        if not data:
            return False
        self.output += data.decode(errors="replace").replace("\r\n", "\n")
        return True

    def close(self) -> None:
        """End the command if it still runs."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.returncode = -9
        os.close(self.fd)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
