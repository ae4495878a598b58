"""Child processes of the lab: how one is ended, and vpnctl run in the background."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from tests.lab.daemon import REPO


def terminate(process: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM a process that still runs and wait for it; SIGKILL it after `timeout` s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class VpnctlProcess:
    """`vpnctl ARGS` as a child process whose output lines are read as they come.

    A reader thread queues each line; `_next_line()` waits for the next one.
    `what` names the process in a failed test's message.
    """

    what = "vpnctl"

    def __init__(self, env: Mapping[str, str], args: Sequence[str]) -> None:
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "client"), full_env.get("PYTHONPATH", "")]
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vpnctl", *args],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next_line(self, timeout: float) -> str:
        """The next line as written; fails when the process ends or says nothing for `timeout` s."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far: {self.lines}") from None
        if line is None:
            self._queue.put(None)
            raise AssertionError(f"the {self.what} ended: {self.stop()}; so far: {self.lines}")
        return line

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """The exit status and standard error of a process that ends by itself."""
        code = self.process.wait(timeout)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def interrupt(self, timeout: float = 30.0) -> tuple[int, str]:
        """Ctrl-C; then the exit status and standard error."""
        self.process.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def stop(self) -> tuple[int, str]:
        """End the process if it still runs; its exit status and standard error."""
        if self.process.poll() is None:
            self.process.kill()
        return self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
