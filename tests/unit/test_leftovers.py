"""Finding and ending an earlier run's openvpn (vpnd.tunnel.leftovers), with real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnd.tunnel.leftovers import (
    Leftover,
    find_processes,
    remove_processes,
    stop_process,
    tunnel_of,
)


def argv(runtime_dir: Path, name: str = "conn1") -> list[str]:
    return ["--management", f"{runtime_dir}/{name}.sock", "unix", "--management-client"]


def test_tunnel_of() -> None:
    run = Path("/run/vpnd")
    line = b"\0".join([b"/usr/sbin/openvpn", *(a.encode() for a in argv(run, "conn3.1"))]) + b"\0"
    assert tunnel_of(line, run) == "conn3.1"
    assert tunnel_of(line, Path("/run/other")) is None
    assert tunnel_of(line.replace(b"--management-client", b"--verb"), run) is None
    assert tunnel_of(line.replace(b"/usr/sbin/openvpn", b"/usr/bin/python3"), run) is None
    assert tunnel_of(line.replace(b"conn3.1.sock", b"conn3.1"), run) is None
    assert tunnel_of(b"", run) is None
    assert tunnel_of(b"openvpn\0--management\0", run) is None


def fake_openvpn(
    runtime_dir: Path, name: str, *, ignore_term: bool = False
) -> subprocess.Popen[bytes]:
    """A process whose command line is an openvpn of the daemon with `runtime_dir`."""
    code = "import signal, sys, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print(flush=True)\ntime.sleep(60)\n"
    process = subprocess.Popen(
        ["openvpn", "-c", code, *argv(runtime_dir, name)],
        executable=sys.executable,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.readline()  # its handler is in place
    return process


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


async def test_leftovers_are_found_and_ended(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    ours = tmp_path / "run"
    processes.append(fake_openvpn(ours, "conn1"))
    processes.append(fake_openvpn(ours, "conn2", ignore_term=True))
    processes.append(fake_openvpn(tmp_path / "another", "conn1"))
    found = find_processes(ours)
    assert found == [Leftover(processes[0].pid, "conn1"), Leftover(processes[1].pid, "conn2")]
    assert await stop_process(found[0], ours) == "it ended on SIGTERM"
    assert await stop_process(found[1], ours, timeout=0.3) == (
        "it did not end within 0.3 s of SIGTERM and was killed"
    )
    for process in processes[:2]:
        assert process.wait(5) != 0
    # Gone already, or another process under the number: nothing is sent.
    assert await stop_process(found[0], ours) == "it had ended by itself"
    assert processes[2].poll() is None
    assert find_processes(ours) == []
    assert await remove_processes(ours) == []
