"""Where an operation spends its time: monotonic milliseconds per step, logged at debug level.

`vpnd --log-level debug` then shows, for every connect, how long each step
took and when it ended after the start, e.g.

    connection 3: obtained the configuration at 9.8 ms (+6.1)
"""

from __future__ import annotations

import logging
import time


class Steps:
    """The steps of one operation; each `step()` logs its end, if debug logging is on."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._start = self._last = time.monotonic()

    def step(self, name: str) -> None:
        """Log that `name` ended now."""
        now = time.monotonic()
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "%s: %s at %.1f ms (+%.1f)",
                self._what,
                name,
                (now - self._start) * 1000,
                (now - self._last) * 1000,
            )
        self._last = now
