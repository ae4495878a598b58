"""`vpnctl status --watch` run in the background, its lines read as they come."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tests.lab.process import VpnctlProcess


class Watcher(VpnctlProcess):
    """`vpnctl status --watch [ARGS]` as a child process; `line()` waits for its next line."""

    what = "watcher"

    def __init__(self, env: Mapping[str, str], args: Sequence[str] = ("--json",)) -> None:
        super().__init__(env, ["status", "--watch", *args])

    def line(self, timeout: float = 30.0) -> str:
        """The next line; fails when the watcher ends or says nothing for `timeout` s."""
        line = self._next_line(timeout)
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
