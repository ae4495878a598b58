"""Drive eduvpn-common (the official eduVPN client library) for the side-by-side benchmark.

Runs in .venv-bench (`make bench-deps`), never in the project's venv: it
imports only the standard library and `eduvpn_common`. benchmarks/side_by_side.py
starts it as root and talks to it in JSON lines:

- at start it registers, adds the server as a custom server and logs in: the
  authorization URL goes to `--browser URL` (the lab's scripted browser), as
  an eduVPN client hands it to the user's browser. It answers {"ready": ...}.
- "connect": times `get_config` (what the library fetches over TLS) and then
  `openvpn --config` on the config it returned, until "Initialization
  Sequence Completed" (the way run.py times plain openvpn); answers
  {"up": s, "get_config": s, "openvpn": s, "started_at": t, "got_config_at": t}
  (durations, and instants of time.monotonic, which is CLOCK_MONOTONIC).
- "disconnect": stops openvpn and calls the library's `cleanup` (the
  portal's /disconnect), untimed; answers {"down": true}.
- "quit" or end of input: deregisters and exits.

The portal's CA comes from SSL_CERT_FILE in the environment (Go's crypto/x509
reads it on Linux); the machine's trust store is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from eduvpn_common.main import EduVPN, ServerType
from eduvpn_common.state import State, StateType

# A Let's Connect! client ID: no discovery, so the library never reaches for
# disco.eduvpn.org; the lab portal accepts it as it accepts eduVPN's.
CLIENT_ID = "org.letsconnect-vpn.app.linux"
DONE = "Initialization Sequence Completed"


# The library logs to standard output (at debug level); the answers get a
# descriptor of their own and everything else goes to standard error.
_answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


def reply(document: dict[str, Any]) -> None:
    _answers.write(json.dumps(document) + "\n")
    _answers.flush()


class Driver:
    """One registered eduvpn-common client with one custom server."""

    def __init__(self, server: str, profile: str, browser: str, workdir: Path) -> None:
        self.server = server
        self.profile = profile
        self.browser = browser
        self.workdir = workdir
        self.common = EduVPN(CLIENT_ID, "vpnd-bench", str(workdir / "common"))
        self.openvpn: subprocess.Popen[str] | None = None
        self.browser_failures: list[str] = []
        handlers = self.common.event_handler
        handlers.add_event(State.OAUTH_STARTED, StateType.ENTER, self._open_browser)
        handlers.add_event(State.ASK_PROFILE, StateType.ENTER, self._choose_profile)

    # Callbacks come on a thread of the Go library; answer from threads of our
    # own so that the library never waits on itself.

    def _open_browser(self, _old: State, url: str) -> None:
        def run() -> None:
            result = subprocess.run(
                [self.browser, url], capture_output=True, text=True, check=False, timeout=60
            )
            if result.returncode != 0:
                self.browser_failures.append(result.stderr.strip())

        threading.Thread(target=run, daemon=True).start()

    def _choose_profile(self, _old: State, data: str) -> None:
        cookie = json.loads(data)["cookie"]
        threading.Thread(
            target=self.common.cookie_reply, args=(cookie, self.profile), daemon=True
        ).start()

    def start(self) -> dict[str, Any]:
        started = time.monotonic()
        self.common.register()
        self.common.add_server(ServerType.CUSTOM, self.server)
        return {"ready": True, "login": time.monotonic() - started}

    def connect(self) -> dict[str, Any]:
        started = time.monotonic()
        document = json.loads(
            self.common.get_config(ServerType.CUSTOM, self.server, prefer_tcp=False)
        )
        got_config = time.monotonic()
        # The library hands over the config with the key inline.
        config = self.workdir / "eduvpn-common.ovpn"
        config.touch(mode=0o600)
        config.write_text(document["config"])
        process = subprocess.Popen(
            ["openvpn", "--config", str(config), "--verb", "3", "--suppress-timestamps"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.openvpn = process
        assert process.stdout is not None
        try:
            for line in process.stdout:
                if DONE in line:
                    up = time.monotonic()
                    break
            else:
                raise RuntimeError("openvpn exited before connecting")
        finally:
            config.unlink()
        return {
            "up": up - started,
            "get_config": got_config - started,
            "openvpn": up - got_config,
            "started_at": started,
            "got_config_at": got_config,
        }

    def disconnect(self) -> dict[str, Any]:
        process, self.openvpn = self.openvpn, None
        if process is not None:
            process.terminate()
            process.wait(10)
        self.common.cleanup()
        return {"down": True}

    def close(self) -> None:
        if self.openvpn is not None:
            self.openvpn.terminate()
            self.openvpn.wait(10)
        self.common.deregister()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the portal's base URL")
    parser.add_argument("--profile", required=True, help="the profile to connect with")
    parser.add_argument("--browser", required=True, help="a program that approves a login URL")
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args()
    driver = Driver(args.server, args.profile, args.browser, args.workdir)
    try:
        try:
            reply(driver.start())
        except Exception as exc:
            reply({"error": f"login failed: {exc}", "browser": driver.browser_failures})
            return 1
        commands = {"connect": driver.connect, "disconnect": driver.disconnect}
        for line in sys.stdin:
            command = line.strip()
            if command == "quit":
                break
            try:
                reply(commands[command]())
            except Exception as exc:  # reported to the benchmark, which stops
                reply({"error": f"{command}: {type(exc).__name__}: {exc}"})
    finally:
        driver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
