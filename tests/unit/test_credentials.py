"""openvpn's credential questions and their answers (vpnd.protocols.credentials)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnd.errors import CredentialsRejected, InvalidArgument
from vpnd.protocols.credentials import (
    Dialog,
    LoginRefused,
    Question,
    QuestionRefused,
    Refusal,
    Reply,
)
from vpnd.protocols.management import command

NEED = "Need 'Auth' username/password"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ask(dialog: Dialog, text: str) -> Question:
    outcome = dialog.on_password(text)
    assert isinstance(outcome, Question), outcome
    return outcome


def refusal(outcome: object) -> str:
    assert isinstance(outcome, Refusal), outcome
    return outcome.error.message


def test_a_kept_password_answers_once_and_a_second_request_is_a_refusal() -> None:
    dialog = Dialog(("alice", "correct horse"))
    assert dialog.on_password(NEED) == Reply(
        (("username", "Auth", "alice"), ("password", "Auth", "correct horse"))
    )
    assert "correct horse" not in repr(dialog.on_password("Verification Failed: 'Auth'"))
    assert "refused the user name or password" in refusal(dialog.on_password(NEED))


def test_without_a_kept_password_a_person_is_asked() -> None:
    dialog = Dialog()
    question = ask(dialog, NEED)
    assert question.kind == "credentials" and question.answerable
    assert [(f.name, f.echo) for f in question.fields] == [("username", True), ("password", False)]
    reply = dialog.answer({"username": "bob", "password": "s3cret"})
    assert reply.commands == (("username", "Auth", "bob"), ("password", "Auth", "s3cret"))
    assert "s3cret" not in repr(reply)
    assert dialog.question is None


def test_a_kept_user_name_leaves_only_the_password_to_ask() -> None:
    dialog = Dialog(("alice", ""))
    question = ask(dialog, NEED)
    assert [f.name for f in question.fields] == ["password"]
    assert "alice" in question.message
    reply = dialog.answer({"password": "pw"})
    assert reply.commands == (("username", "Auth", "alice"), ("password", "Auth", "pw"))


def test_a_static_challenge_asks_for_the_answer_and_sends_scrv1() -> None:
    dialog = Dialog(("alice", "pw"))
    question = ask(dialog, NEED + " SC:1,Enter your PIN")
    assert question.kind == "challenge" and question.message == "Enter your PIN"
    (field,) = question.fields  # the kept password goes with the answer
    assert field.name == "response" and field.echo
    reply = dialog.answer({"response": "1234"})
    assert reply.commands[1] == ("password", "Auth", f"SCRV1:{b64('pw')}:{b64('1234')}")
    assert "refused the password or the answer" in refusal(
        dialog.on_password("Verification Failed: 'Auth'")
    )


def test_a_static_challenge_without_echo_and_concatenated() -> None:
    dialog = Dialog()
    question = ask(dialog, NEED + " SC:2,Token")
    assert [(f.name, f.echo) for f in question.fields] == [
        ("username", True),
        ("password", False),
        ("response", False),
    ]
    reply = dialog.answer({"username": "u", "password": "pw", "response": "99"})
    assert reply.commands[1] == ("password", "Auth", "pw99")


def test_a_dynamic_challenge_is_asked_at_the_next_request_and_answered_with_crv1() -> None:
    dialog = Dialog(("alice", "pw"))
    assert isinstance(dialog.on_password(NEED), Reply)
    failed = f"Verification Failed: 'Auth' ['CRV1:R,E:state42:{b64('alice-2')}:Enter the code']"
    assert dialog.on_password(failed) is None
    question = ask(dialog, NEED)
    assert question.kind == "challenge" and question.message == "Enter the code"
    (field,) = question.fields
    assert field.echo and field.required
    reply = dialog.answer({"response": "777"})
    assert reply.commands == (
        ("username", "Auth", "alice-2"),
        ("password", "Auth", "CRV1::state42::777"),
    )
    message = refusal(dialog.on_password("Verification Failed: 'Auth' ['wrong code']"))
    assert message == "the server did not accept the answer to its challenge: wrong code"


def test_the_server_s_reason_is_passed_on_cleaned() -> None:
    dialog = Dialog(("mallory", "pw"))
    dialog.on_password(NEED)
    outcome = dialog.on_password("Verification Failed: 'Auth' ['Your account is\x07 blocked']")
    assert refusal(outcome).endswith(": Your account is  blocked")
    assert isinstance(outcome, Refusal) and isinstance(outcome.error, CredentialsRejected)


def test_a_refusal_before_anything_was_answered_ends_it_the_second_time() -> None:
    dialog = Dialog()
    # Once may be in passing (openvpn tries again by itself); twice is a refusal.
    assert dialog.on_password("Verification Failed: 'Auth'") is None
    assert refusal(dialog.on_password("Verification Failed: 'Auth' ['not today']")) == (
        "the server refused the connection: not today"
    )


def test_an_unreadable_challenge_is_a_refusal_not_a_question() -> None:
    dialog = Dialog()
    outcome = dialog.on_password("Verification Failed: 'Auth' ['CRV1:R:state:***:text']")
    assert "could not be read" in refusal(outcome)


def test_other_passwords_are_refused_and_tokens_ignored() -> None:
    outcome = Dialog().on_password("Need 'Private Key' password")
    assert isinstance(outcome, Refusal) and isinstance(outcome.error, QuestionRefused)
    assert "Private Key" in outcome.error.message
    assert Dialog().on_password("Auth-Token:abcdef") is None


def test_a_web_login_is_a_question_without_fields_closed_when_openvpn_moves_on() -> None:
    dialog = Dialog()
    outcome = dialog.on_info("WEB_AUTH::https://vpn.example.org/sso?x=1")
    assert isinstance(outcome, Question)
    assert outcome.kind == "web" and outcome.url == "https://vpn.example.org/sso?x=1"
    assert not outcome.answerable
    with pytest.raises(InvalidArgument):
        dialog.answer({})
    assert not dialog.on_state("AUTH_PENDING")
    assert dialog.on_state("GET_CONFIG") and dialog.question is None
    older = dialog.on_info("OPEN_URL:https://vpn.example.org/")
    assert isinstance(older, Question) and older.url == "https://vpn.example.org/"


@pytest.mark.parametrize(
    "text",
    ["WEB_AUTH::http://vpn.example.org/", "WEB_AUTH::file:///etc/shadow", "OPEN_URL:javascript:x",
     "WEB_AUTH::https://x/\nEvil", "WEB_AUTH::https://" + "a" * 3000],
)  # fmt: skip
def test_a_web_login_elsewhere_than_a_plain_https_address_is_refused(text: str) -> None:
    assert "https" in refusal(Dialog().on_info(text))


def test_a_text_challenge_is_answered_with_cr_response() -> None:
    dialog = Dialog()
    question = dialog.on_info("CR_TEXT:R:Enter the code from the app")
    assert isinstance(question, Question) and question.kind == "text"
    (field,) = question.fields
    assert not field.echo and field.required
    assert dialog.answer({"response": "424242"}).commands == (("cr-response", b64("424242")),)
    assert Dialog().on_info("something else") is None


def test_answers_that_do_not_fit_keep_the_question_open_and_name_no_value() -> None:
    dialog = Dialog()
    ask(dialog, NEED)
    for values in (
        {"username": "bob"},
        {"username": "bob", "password": ""},
        {"username": "bob", "password": "x", "pin": "1"},
        {"username": "bob", "password": "tab\there"},
        {"username": "bob", "password": "p" * 500},
    ):
        with pytest.raises(InvalidArgument) as raised:
            dialog.answer(values)
        assert "here" not in raised.value.message and "ppp" not in raised.value.message
        assert dialog.question is not None
    with pytest.raises(InvalidArgument):
        Dialog().answer({"password": "x"})  # nothing asked


def test_an_optional_response_may_be_empty() -> None:
    dialog = Dialog()
    dialog.on_password(f"Verification Failed: 'Auth' ['CRV1:E:s:{b64('u')}:Optional']")
    ask(dialog, NEED)
    assert dialog.answer({}).commands[1] == ("password", "Auth", "CRV1::s::")


@given(st.text(max_size=300))
def test_any_password_notification_gives_a_known_outcome(text: str) -> None:
    outcome = Dialog(("u", "p")).on_password(text)
    assert outcome is None or isinstance(outcome, Question | Reply | Refusal)
    if isinstance(outcome, Question):
        assert all(ch.isprintable() for ch in outcome.message)


@given(st.text(max_size=300))
def test_any_info_notification_gives_a_known_outcome(text: str) -> None:
    outcome = Dialog().on_info(text)
    if isinstance(outcome, Question) and outcome.kind == "web":
        assert outcome.url.startswith("https://") and outcome.url.isprintable()


@given(st.text(min_size=1, max_size=120).filter(str.isprintable))
def test_every_accepted_answer_reaches_openvpn_intact(answer: str) -> None:
    dialog = Dialog()
    ask(dialog, NEED + " SC:0,Code")
    values = {"username": answer, "password": answer, "response": answer}
    if len(f"SCRV1:{b64(answer)}:{b64(answer)}") > 256:
        # base64 of both in one word of at most 256 bytes: refused, still open.
        with pytest.raises(InvalidArgument, match="too long"):
            dialog.answer(values)
        assert dialog.question is not None
        return
    reply = dialog.answer(values)
    for words in reply.commands:
        assert command(*words).endswith(b"\n")  # no ValueError: openvpn can take it
    scrv1 = reply.commands[1][2].split(":")
    assert base64.b64decode(scrv1[2]).decode() == answer


def test_login_refused_is_a_named_authorization_failure() -> None:
    assert LoginRefused("x").dbus_name == "org.vpnd.Error.AuthorizationFailed"
