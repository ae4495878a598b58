"""`vpnctl status --watch` run in the background, its lines read as they come."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from tests.lab.daemon import REPO


class Watcher:
    """`vpnctl status --watch [ARGS]` as a child process; `line()` waits for its next line."""

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ("--json",)) -> None:
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "client"), full_env.get("PYTHONPATH", "")]
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vpnctl", "status", "--watch", *args],
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

    def line(self, timeout: float = 30.0) -> str:
        """The next line; fails when the watcher ends or says nothing for `timeout` s."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s; so far: {self.lines}") from None
        if line is None:
            self._queue.put(None)
            raise AssertionError(f"the watcher ended: {self.stop()}; so far: {self.lines}")
        self.lines.append(line)
        return line

    def record(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next line as a JSON record."""
        data: dict[str, Any] = json.loads(self.line(timeout))
        return data

    def records_until(
        self, done: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Records up to and with the first one `done` accepts."""
        records = [self.record(timeout)]
        while not done(records[-1]):
            records.append(self.record(timeout))
        return records

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """The exit status and standard error of a watcher that ends by itself."""
        code = self.process.wait(timeout)
        assert self.process.stderr is not None
        return code, self.process.stderr.read()

    def interrupt(self, timeout: float = 30.0) -> tuple[int, str]:
        """Ctrl-C; then the exit status and standard error."""
        self.process.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def stop(self) -> tuple[int, str]:
        """End the watcher if it still runs; its exit status and standard error."""
        if self.process.poll() is None:
            self.process.kill()
        return self.wait()

    def __enter__(self) -> Watcher:
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
