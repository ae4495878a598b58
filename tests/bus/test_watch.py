"""`vpnctl status --watch` and the completion helper against the real vpnd on the private bus.

No tunnel here: a connection with a profile the portal does not have goes
from preparing to failed, which is enough to see connections come, change
and be replaced. tests/e2e/test_watch.py watches a real tunnel.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.daemon import REPO, VpndProcess, ok, vpnctl
from tests.lab.dbus import PrivateSystemBus
from tests.lab.portal import TestPortal
from tests.lab.watch import Watcher

pytestmark = pytest.mark.bus

BASH_SCRIPT = REPO / "data" / "completion" / "vpnctl.bash"


def add_and_login(portal: TestPortal, env: dict[str, str]) -> None:
    ok(vpnctl(["add", portal.base_url], env))
    ok(vpnctl(["login", portal.host], env))


def failed_connect(portal: TestPortal, env: dict[str, str]) -> None:
    result = vpnctl(["connect", portal.host, "--profile", "nope"], env)
    assert result.returncode == 1, result.stderr


def test_watch_follows_each_connection_and_ctrl_c_ends_it_quietly(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    with Watcher(client_env) as watcher:
        first = watcher.record()
        assert (first["state"], first["connection"]) == ("disconnected", None)
        add_and_login(portal, client_env)

        failed_connect(portal, client_env)
        one = watcher.records_until(lambda record: record["state"] == "failed")
        path = one[0]["connection"]
        assert path.startswith("/org/vpnd/Daemon/connections/")
        assert {(r["connection"], r["server_url"]) for r in one} == {(path, portal.base_url)}
        assert {r["state"] for r in one} <= {"preparing", "failed"}
        assert one[-1]["error"] == "org.vpnd.Error.NotFound"
        assert one[-1]["error_message"]

        # The next connection replaces that one; the watcher follows it.
        failed_connect(portal, client_env)
        two = watcher.records_until(lambda record: record["state"] == "failed")
        assert {r["connection"] for r in two} == {two[0]["connection"]}
        assert two[0]["connection"] != path

        code, err = watcher.interrupt()
        assert (code, err) == (130, "")


def test_watch_for_people_and_vpnd_leaving(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str]
) -> None:
    add_and_login(portal, client_env)
    with Watcher({**client_env, "NO_COLOR": ""}, args=()) as watcher:
        assert watcher.line().endswith("  disconnected")
        failed_connect(portal, client_env)
        line = watcher.line()
        while " failed  " not in line:
            line = watcher.line()
        assert "error: " in line
        assert line.endswith(f"{portal.base_url} profile nope")
        assert "\033[" not in "".join(watcher.lines)  # not a terminal
        assert vpnd.stop() == 0
        code, err = watcher.wait()
    vpnd.start()  # for the fixture's own clean stop
    assert code == 4
    [message] = err.splitlines()
    assert message.startswith("vpnctl: vpnd left the system bus")


def test_completion_names_servers_and_profiles_from_the_daemon(
    vpnd: VpndProcess, portal: TestPortal, client_env: dict[str, str], tmp_path: Path
) -> None:
    assert ok(vpnctl(["__complete", "servers"], client_env)) == ""
    add_and_login(portal, client_env)
    assert ok(vpnctl(["__complete", "servers"], client_env)) == f"{portal.host}\n"
    assert ok(vpnctl(["__complete", "profiles", portal.host], client_env)) == "employees\nguests\n"
    # The tests run as root, whose own servers are the system-wide ones.
    assert ok(vpnctl(["__complete", "servers", "--system"], client_env)) == f"{portal.host}\n"
    missing = vpnctl(["__complete", "profiles", "no-such-server"], client_env)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "")

    # A person pressing TAB in bash, with vpnctl from this checkout.
    env = {**os.environ, **client_env}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "client"), env.get("PYTHONPATH", "")])
    script = (
        f"source {shlex.quote(str(BASH_SCRIPT))}\n"
        f'vpnctl() {{ {shlex.quote(sys.executable)} -m vpnctl "$@"; }}\n'
        f"COMP_LINE={shlex.quote('vpnctl connect ' + portal.host + ' --profile ')}\n"
        'COMP_POINT=${#COMP_LINE}; _vpnctl; printf "%s\\n" "${COMPREPLY[@]}"\n'
        "COMP_LINE='vpnctl connect '; COMP_POINT=${#COMP_LINE}; _vpnctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["employees", "guests", portal.host]


def test_completion_does_not_start_vpnd(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    standin = tmp_path / "standin.py"
    standin.write_text(f"open({str(marker)!r}, 'w').close()\n")
    with PrivateSystemBus(
        tmp_path / "bus",
        with_activation=[sys.executable, str(standin)],
        # The stand-in never takes the name: let the bus give up on it soon.
        extra_policy='<limit name="service_start_timeout">2000</limit>',
    ) as bus:
        for words in (["servers"], ["profiles", "vpn"]):
            result = vpnctl(["__complete", *words], {"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
            assert (result.returncode, result.stdout, result.stderr) == (1, "", "")
        # An ordinary command does start it (the stand-in then fails to take the name).
        assert not marker.exists()
        vpnctl(["list"], {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}, timeout=60)
        assert marker.exists()
