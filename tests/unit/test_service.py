"""The service module's keep-alive for systemd's watchdog."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from vpnd.service import _keep_alive, _notifier, watchdog_interval


def test_the_watchdog_is_fed_at_half_its_period_when_systemd_asks() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    for value in ("", "0", "-5", "soon"):
        assert watchdog_interval({"WATCHDOG_USEC": value}, 42) is None
    assert watchdog_interval({}, 42) is None


async def test_the_keep_alive_notifies_while_the_loop_turns() -> None:
    sent: list[str] = []
    task = asyncio.create_task(_keep_alive(sent.append, 0.001))
    async with asyncio.timeout(10):
        while len(sent) < 3:
            await asyncio.sleep(0.001)
    task.cancel()
    assert set(sent) == {"WATCHDOG=1"}


def test_notices_never_wait_for_a_service_manager_that_does_not_read(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(path))
    notify = _notifier({"NOTIFY_SOCKET": str(path)})
    sender = threading.Thread(target=lambda: [notify(f"STATUS={n}") for n in range(200)])
    sender.start()
    sender.join(10)
    assert not sender.is_alive()  # the queue filled up and nothing waited
    manager.settimeout(1)
    assert manager.recv(100) == b"STATUS=0"  # what fitted arrived in order
    manager.close()
    assert _notifier({})("READY=1") is None  # without a service manager: nothing
