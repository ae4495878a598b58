"""The decisions of `vpnctl monitor` (vpnctl.notify): which change of a connection makes
which notice, with which words, urgency and action, and what an action does."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vpnctl import cli, monitor, notify
from vpnctl.notify import CRITICAL, LOW, NORMAL, Notice, Renew, Run, View, Withdraw

PATH = "/org/vpnd/Daemon/connections/7"
SERVER = "/org/vpnd/Daemon/servers/abc"
NOW = 1_800_000_000.0
STATES = (
    "",
    "preparing",
    "connecting",
    "connected",
    "needs-input",
    "reconnecting",
    "disconnecting",
    "disconnected",
    "failed",
)
ERRORS = ("", "org.vpnd.Error.TunnelFailed", "org.vpnd.Error.SessionExpired")
KINDS = ("", "eduvpn-v3", "eduvpn-v2", "secure-internet", "access-server")

CHALLENGE = {
    "id": 3,
    "kind": "challenge",
    "message": "Enter the code we sent you",
    "url": None,
    "fields": [{"name": "response", "label": "Enter the code", "echo": True, "required": True}],
}
WEB = {
    "id": 4,
    "kind": "web",
    "message": "Log in with your institution.",
    "url": "https://login.example.org/sso?n=1",
    "fields": [],
}


def view(**changes: Any) -> View:
    base = View(
        path=PATH,
        state="connected",
        server=SERVER,
        server_url="https://vpn.example.org/",
        profile="employees",
        connected_since=int(NOW) - 3 * 3600,
        session_expiry=int(NOW) + 4 * 3600,
        server_kind="eduvpn-v3",
    )
    return replace(base, **changes)


views = st.builds(
    view,
    state=st.sampled_from(STATES),
    error=st.sampled_from(ERRORS),
    error_message=st.text(max_size=40),
    server_kind=st.sampled_from(KINDS),
    connected_since=st.integers(0, int(NOW)),
    prompt=st.sampled_from([None, CHALLENGE, WEB]),
)


# --- reading vpnd's properties ---------------------------------------------------


def test_a_view_reads_connection1_properties() -> None:
    properties = {
        "State": "needs-input",
        "Error": "",
        "ErrorMessage": "",
        "Server": SERVER,
        "ServerUrl": "https://vpn.example.org/",
        "Profile": "employees",
        "ConnectedSince": 0,
        "SessionExpiry": 1234,
        "Prompt": {"id": 3, "kind": "challenge", "message": "Code?", "url": "", "fields": []},
        "BytesIn": 5,
    }
    read = View.read(PATH, properties, "eduvpn-v3")
    assert (read.state, read.server, read.session_expiry, read.server_kind) == (
        "needs-input",
        SERVER,
        1234,
        "eduvpn-v3",
    )
    assert read.prompt is not None and read.prompt["message"] == "Code?"
    assert read.where == "vpn.example.org"
    assert View.read(PATH, {}).where == "the VPN server"
    assert View.read(PATH, {"Prompt": {}}).prompt is None


# --- the session's end -----------------------------------------------------------


def test_the_three_notices_before_the_end_and_their_urgency() -> None:
    four, two, one = (notify.expiring(view(), hours * 3600, NOW) for hours in (4, 2, 1))
    assert [n.summary for n in (four, two, one)] == [
        "VPN session ends in 4 hours",
        "VPN session ends in 2 hours",
        "VPN session ends in 1 hour",
    ]
    assert [n.urgency for n in (four, two, one)] == [NORMAL, NORMAL, CRITICAL]
    assert four.body == (
        "Your VPN session at vpn.example.org ends in 4 hours. Renew it to stay connected."
    )
    assert {n.action for n in (four, two, one)} == {notify.Action("renew", "Renew")}
    assert {n.kind for n in (four, two, one)} == {"expiring"}
    assert not any(n.sticky for n in (four, two, one))


def test_a_young_connection_is_told_when_it_can_be_renewed() -> None:
    young = view(connected_since=int(NOW) - 60)
    notice = notify.expiring(young, 3 * 3600 + 1800, NOW)
    assert notice.action is None
    assert notice.summary == "VPN session ends in 3 hours, 30 minutes"
    assert notice.body.endswith("It can be renewed once it is 30 minutes old.")


def test_a_server_without_a_browser_login_offers_no_renewal() -> None:
    access_server = view(server_kind="access-server")
    assert notify.expiring(access_server, 3600, NOW).action is None
    assert notify.expired(access_server).action is None
    assert "renew" not in notify.expiring(access_server, 3600, NOW).body.lower()
    # A kind that could not be read offers nothing it cannot promise.
    assert notify.expiring(view(server_kind=""), 3600, NOW).action is None


def test_the_end_is_critical_stays_and_offers_a_renewal() -> None:
    ended = notify.expiring(view(), 0, NOW)
    assert ended == notify.expired(view())
    assert (ended.kind, ended.summary, ended.urgency, ended.sticky) == (
        "expired",
        "VPN session ended",
        CRITICAL,
        True,
    )
    assert ended.action == notify.Action("renew", "Renew")
    # However young the connection was: vpnd renews an ended one.
    assert notify.expired(view(connected_since=int(NOW))).action is not None


@given(views, st.sampled_from(["disconnected", "failed"]))
def test_a_connection_ended_by_its_session_is_the_end_notice(before: View, state: str) -> None:
    after = replace(before, state=state, error=notify.SESSION_EXPIRED)
    decision = notify.on_change(before, after, NOW)
    if before.state in ("disconnected", "failed"):
        assert decision is None
    else:
        assert decision == notify.expired(after)


def test_the_signal_and_the_state_change_make_one_notification() -> None:
    shown = notify.Shown()
    connected = view()
    ended = view(state="disconnected", error=notify.SESSION_EXPIRED)
    first = shown.decide(notify.expiring(connected, 0, NOW))
    assert isinstance(first, Notice)
    assert shown.decide(notify.on_change(connected, ended, NOW)) is None


def test_on_start_tells_of_a_session_ending_within_four_hours() -> None:
    soon = view(session_expiry=int(NOW) + 90 * 60)
    notice = notify.on_start(soon, NOW)
    assert isinstance(notice, Notice)
    assert notice.summary == "VPN session ends in 1 hour, 30 minutes"
    assert notify.on_start(view(session_expiry=int(NOW) + 5 * 3600), NOW) is None
    assert notify.on_start(view(session_expiry=0), NOW) is None
    assert notify.on_start(view(state="connecting", session_expiry=int(NOW) + 60), NOW) is None


@given(views)
def test_on_start_tells_nothing_of_the_past(found: View) -> None:
    decision = notify.on_start(found, NOW)
    if found.state in ("failed", "disconnected", "reconnecting"):
        assert decision is None


# --- lost, back, failed ---------------------------------------------------------


def test_a_lost_tunnel_and_its_return() -> None:
    lost = notify.on_change(view(), view(state="reconnecting"), NOW)
    assert isinstance(lost, Notice)
    assert (lost.kind, lost.summary, lost.urgency) == ("lost", "VPN connection lost", NORMAL)
    assert lost.body == "The tunnel to vpn.example.org went down; reconnecting."
    back = notify.on_change(view(state="reconnecting"), view(), NOW)
    assert isinstance(back, Notice)
    assert (back.kind, back.summary, back.urgency) == ("restored", "VPN connection restored", LOW)
    # Coming up the first time is what the person asked for: nothing to tell.
    assert notify.on_change(view(state="connecting"), view(), NOW) is None
    assert notify.on_change(View(PATH), view(), NOW) is None


def test_a_failure_names_the_error_once() -> None:
    failed = view(state="failed", error="org.vpnd.Error.TunnelFailed", error_message="")
    notice = notify.on_change(view(state="connecting"), failed, NOW)
    assert isinstance(notice, Notice)
    assert (notice.kind, notice.urgency) == ("failed", CRITICAL)
    assert notice.body == "TunnelFailed (vpn.example.org)"
    said = replace(failed, error_message="openvpn  exited:\nTLS  error")
    notice = notify.on_change(View(PATH), said, NOW)
    assert isinstance(notice, Notice)
    assert notice.body == "openvpn exited: TLS error (vpn.example.org)"
    assert notify.on_change(said, said, NOW) is None


# --- questions --------------------------------------------------------------------


def test_a_code_asked_opens_a_terminal_to_answer() -> None:
    asking = view(state="needs-input", prompt=CHALLENGE)
    notice = notify.on_change(view(state="connecting"), asking, NOW)
    assert isinstance(notice, Notice)
    assert (notice.kind, notice.summary, notice.urgency, notice.sticky) == (
        "input",
        "The VPN needs an answer",
        CRITICAL,
        True,
    )
    assert notice.body == "Enter the code we sent you. The connection waits for you."
    assert notice.action == notify.Action("answer", "Answer")
    assert notify.command("answer", asking) == Run(
        ("x-terminal-emulator", "-e", "vpnctl", "answer")
    )


def test_a_web_login_opens_the_page() -> None:
    asking = view(state="needs-input", prompt=WEB)
    notice = notify.on_change(view(state="connecting"), asking, NOW)
    assert isinstance(notice, Notice)
    assert notice.summary == "VPN login needed"
    assert notice.body == "Log in with your institution. The connection waits for you."
    bare = notify.asking(view(state="needs-input", prompt={**WEB, "message": ""}))
    assert bare is not None
    assert bare.body == "Log in on the web page of vpn.example.org. The connection waits for you."
    assert notice.action == notify.Action("login", "Log in")
    assert notify.command("login", asking) == Run(("xdg-open", WEB["url"]))


def test_a_question_answered_is_withdrawn_and_a_new_one_replaces_it() -> None:
    asking = view(state="needs-input", prompt=CHALLENGE)
    assert notify.on_change(asking, asking, NOW) is None
    assert notify.on_change(asking, view(state="connecting"), NOW) == Withdraw(PATH)
    assert notify.on_change(asking, view(), NOW) == Withdraw(PATH)
    again = view(state="needs-input", prompt={**CHALLENGE, "id": 9})
    assert isinstance(notify.on_change(asking, again, NOW), Notice)
    # needs-input with its question already gone: nothing left to ask about.
    assert notify.on_change(asking, view(state="needs-input"), NOW) == Withdraw(PATH)
    # A question found at the start is told.
    assert notify.on_start(asking, NOW) == notify.asking(asking)


def test_a_closed_connection_takes_its_notice_away() -> None:
    assert notify.on_change(view(), view(state="disconnected"), NOW) == Withdraw(PATH)
    assert notify.on_change(View(PATH), view(state="disconnected"), NOW) is None


# --- actions -----------------------------------------------------------------------


@given(views, st.sampled_from(["renew", "answer", "login", "default", "bogus", ""]))
def test_an_action_does_only_what_fits_the_connection_now(seen: View, key: str) -> None:
    result = notify.command(key, seen)
    if key == "renew":
        assert result == Renew(SERVER)
    elif key == "answer":
        expected = seen.state == "needs-input" and seen.prompt is not None
        assert (result is not None) == expected
    elif key == "login":
        expected = seen.state == "needs-input" and seen.prompt is WEB
        assert result == (Run(("xdg-open", WEB["url"])) if expected else None)
    else:
        assert result is None


def test_a_refused_renewal_says_why() -> None:
    notice = notify.renew_failed(view(), "the VPN session is less than 30 minutes old")
    assert (notice.kind, notice.connection, notice.urgency) == ("renew-failed", PATH, NORMAL)
    assert notice.body == "the VPN session is less than 30 minutes old"


# --- the whole machine ---------------------------------------------------------------


@given(views, views)
def test_every_decision_is_about_the_connection_and_reads_well(before: View, after: View) -> None:
    decision = notify.on_change(before, after, NOW)
    assert decision is None or decision.connection == PATH
    if isinstance(decision, Notice):
        assert decision.summary and decision.body
        assert decision.urgency in (LOW, NORMAL, CRITICAL)
        line = decision.line()
        assert "\n" not in line and "  " not in line
        # An action is always one that does something for the same view.
        if decision.action is not None:
            assert notify.command(decision.action.key, after) is not None


@given(st.lists(st.tuples(views, views), max_size=12))
def test_shown_never_sends_the_same_notice_twice_in_a_row(changes: list[tuple[View, View]]) -> None:
    shown = notify.Shown()
    last: Notice | None = None
    for before, after in changes:
        decision = shown.decide(notify.on_change(before, after, NOW))
        if isinstance(decision, Notice):
            assert decision != last
            last = decision
        elif isinstance(decision, Withdraw):
            last = None
    shown.closed(PATH)
    assert shown.notice(PATH) is None


@given(st.integers(1, 4 * 3600), views)
def test_expiring_urgency_rises_in_the_last_hour(seconds_left: int, seen: View) -> None:
    notice = notify.expiring(seen, seconds_left, NOW)
    assert notice.urgency == (CRITICAL if seconds_left <= 3600 else NORMAL)
    assert (notice.action is not None) == notify.renewable(seen, NOW)


# --- what starts it ------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[2]


def ini_values(path: Path, key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith(key + "=")
    ]


def test_the_autostart_file_and_the_user_unit_run_a_notifying_monitor() -> None:
    desktop_file = REPO / "data" / "xdg" / "autostart" / "vpnd-notify.desktop"
    unit = REPO / "data" / "systemd" / "user" / "vpnd-notify.service"
    [run_desktop] = ini_values(desktop_file, "Exec")
    [run_unit] = ini_values(unit, "ExecStart")
    for line in (run_desktop, run_unit):
        # make install points /usr/bin/vpnctl at the installed one.
        program, *words = shlex.split(line)
        assert program == "/usr/bin/vpnctl"
        args = cli.build_parser().parse_args(words)
        assert (args.command, args.notify) == ("monitor", True)
    assert ini_values(desktop_file, "Type") == ["Application"]
    # The notifications name their desktop entry, the autostart file.
    assert desktop_file.stem == monitor.DESKTOP_ENTRY
    assert ini_values(unit, "WantedBy") == ["graphical-session.target"]
