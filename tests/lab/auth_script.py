"""The lab openvpn server's user check: `auth-user-pass-verify` and `client-crresponse`.

Run by the lab's openvpn server (as root, in its namespace), never imported:

    auth_script.py verify STATE_DIR FILE     username and password in FILE
    auth_script.py crresponse STATE_DIR FILE the answer to a CR_TEXT question

Each test user stands for one way a VPN server asks for credentials:

- alice: password "correct horse";
- sam: a static challenge, password "sam-pass" and the answer "123456";
- dora: password "dora-pass", then a dynamic challenge (CRV1) answered "777";
- wendy: a login in the browser (deferred, WEB_AUTH); the test finishes it
  by writing 1 to the control file whose path this script leaves in
  STATE_DIR/wendy.control;
- tess: password "tess-pass", then a text challenge (CR_TEXT) answered "424242";
- mallory: refused, the account is blocked.

Deferred results are written to openvpn's auth_control_file (with the reason
in auth_failed_reason_file first, as openvpn asks).
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

CRV1_STATE = "dora-state-1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(variable: str, text: str) -> None:
    Path(os.environ[variable]).write_text(text)


def _defer(result: str, reason: str = "") -> int:
    if reason:
        _write("auth_failed_reason_file", reason)
    _write("auth_control_file", result)
    return 2


def _pending(state_dir: Path, user: str, method: str, extra: str) -> int:
    _write("auth_pending_file", f"300\n{method}\n{extra}\n")
    (state_dir / f"{user}.control").write_text(os.environ["auth_control_file"])  # noqa: SIM112 (openvpn names it)
    return 2


def verify(state_dir: Path, username: str, password: str) -> int:
    """The exit status openvpn expects: 0 yes, 1 no, 2 deferred."""
    if username == "alice":
        return 0 if password == "correct horse" else 1
    if username == "sam":
        return 0 if password == f"SCRV1:{b64('sam-pass')}:{b64('123456')}" else 1
    if username == "dora":
        if password == f"CRV1::{CRV1_STATE}::777":
            return 0
        if password == "dora-pass":
            challenge = f"CRV1:R,E:{CRV1_STATE}:{b64('dora')}:Enter the code we sent you"
            return _defer("0", challenge)
        return 1
    if username == "wendy" and password == "wendy-pass":
        return _pending(state_dir, "wendy", "webauth", "WEB_AUTH::https://login.lab.test/sso?n=1")
    if username == "tess" and password == "tess-pass":
        return _pending(state_dir, "tess", "crtext", "CR_TEXT:R,E:Enter the code from the app")
    if username == "mallory":
        return _defer("0", "Your account is blocked")
    return 1


def main() -> int:
    mode, state_dir, path = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    lines = path.read_text().splitlines()
    if mode == "verify":
        return verify(state_dir, lines[0], lines[1] if len(lines) > 1 else "")
    if mode == "crresponse":
        # The answer comes base64-encoded, as the client sent it.
        ok = lines and lines[0].strip() == b64("424242")
        _write("auth_control_file", "1" if ok else "0")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
