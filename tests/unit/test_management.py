"""The management-interface parser and command builder, without a socket."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vpnd.errors import TunnelFailed
from vpnd.protocols.management import (
    MAX_BLOCK_LINES,
    MAX_LINE,
    Answered,
    ByteCountEvent,
    CommandResult,
    Conversation,
    Event,
    FatalEvent,
    HoldEvent,
    InfoEvent,
    LogEvent,
    ManagementParser,
    NeedEvent,
    OtherNotification,
    PasswordEvent,
    PkSignEvent,
    ProtocolViolation,
    StateEvent,
    UnexpectedLine,
    command,
    pk_sig,
)

# --- an openvpn-style tokenizer, to check command() against ---------------

_INITIAL, _QUOTED, _UNQUOTED, _SQUOTED = range(4)
_C_SPACE = frozenset(b" \t\n\v\f\r\0")


class TokenizerError(Exception):
    """openvpn would reject the line."""


def openvpn_words(line: bytes) -> list[str]:
    """Split one management command line the way openvpn 2.6 does.

    The input stage keeps printable bytes only and holds 1023 bytes before
    the LF; the lexer is the config-file one: blanks separate words, double
    or single quotes enclose them, a backslash escapes a backslash, a double
    quote or a blank (not inside single quotes), a word starting with # or ;
    starts a comment, at most 16 words and 256 bytes per word.
    """
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    body = line[:-1]
    if len(body) > 1023:
        raise TokenizerError("input buffer overflow")
    body = bytes(b for b in body if b >= 0x20 and b != 0x7F) + b"\0"
    words: list[str] = []
    word = bytearray()
    state = _INITIAL
    backslash = False
    for char in body:
        out = 0
        if not backslash and char == ord("\\") and state != _SQUOTED:
            backslash = True
            continue
        if state == _INITIAL:
            if char not in _C_SPACE:
                if char in b";#":
                    break
                if not backslash and char == ord('"'):
                    state = _QUOTED
                elif not backslash and char == ord("'"):
                    state = _SQUOTED
                else:
                    out = char
                    state = _UNQUOTED
        elif state == _UNQUOTED:
            if not backslash and char in _C_SPACE:
                words.append(word.decode())
                word.clear()
                state = _INITIAL
            else:
                out = char
        elif state == _QUOTED:
            if not backslash and char == ord('"'):
                words.append(word.decode())
                word.clear()
                state = _INITIAL
            else:
                out = char
        elif char == ord("'"):
            words.append(word.decode())
            word.clear()
            state = _INITIAL
        else:
            out = char
        if backslash and out and not (out in b'\\"' or out in _C_SPACE):
            raise TokenizerError("bad backslash")
        backslash = False
        if out:
            if len(word) >= 256:
                raise TokenizerError("parameter too long")
            word.append(out)
        if len(words) >= 16:
            break
    return words


def test_tokenizer_follows_the_documented_examples() -> None:
    assert openvpn_words(b'password "Private Key" "foo\\"bar"\n') == [
        "password",
        "Private Key",
        'foo"bar',
    ]
    assert openvpn_words(b"needstr 'x\\' y\n") == ["needstr", "x\\", "y"]
    assert openvpn_words(b'a "" b\n') == ["a", "", "b"]
    assert openvpn_words(b"a #b\n") == ["a"]
    with pytest.raises(TokenizerError):
        openvpn_words(b"a \\x\n")


# --- command() --------------------------------------------------------------


def test_plain_words_stay_unquoted() -> None:
    assert command("state", "on") == b"state on\n"
    assert command("hold", "release") == b"hold release\n"
    assert command("password", "Auth", 'a"b#c') == b'password Auth a"b#c\n'


def test_words_are_quoted_only_when_needed() -> None:
    assert command("username", "Auth", "j doe") == b'username Auth "j doe"\n'
    assert command("password", "Auth", 'fo"o b\\ar') == b'password Auth "fo\\"o b\\\\ar"\n'
    assert command("password", "Auth", "") == b'password Auth ""\n'
    assert command("password", "Auth", "#x") == b'password Auth "#x"\n'
    assert command("password", "Auth", ";x") == b'password Auth ";x"\n'
    assert command("password", "Auth", "'x") == b'password Auth "\'x"\n'
    assert command("password", "Auth", "\\") == b'password Auth "\\\\"\n'


def test_static_challenge_answer_matches_the_documentation() -> None:
    line = command("password", "Auth", "SCRV1:YmFy:ODY3NTMwOQ==")
    assert line == b"password Auth SCRV1:YmFy:ODY3NTMwOQ==\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\0b", "a\rb", "a\tb", "\x7f", "x\x1b"])
def test_control_characters_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot contain"):
        command("password", "Auth", bad)


def test_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        command()
    with pytest.raises(ValueError, match="256"):
        command("password", "Auth", "x" * 257)
    with pytest.raises(ValueError, match="1023"):
        command("x" * 200, "y" * 200, "z" * 200, "w" * 200, "v" * 200, "u" * 200)
    with pytest.raises(ValueError, match="16"):
        command(*["w"] * 17)
    with pytest.raises(ValueError, match="Unicode"):
        command("password", "Auth", "\ud800")
    assert command("password", "Auth", "x" * 256).endswith(b"x\n")


_printable = st.characters(
    blacklist_categories=("Cs",), blacklist_characters="".join(map(chr, [*range(32), 127]))
)
_word = st.text(alphabet=_printable, max_size=40) | st.sampled_from(
    ["", " ", "\\", '"', "'", "#", ";", '\\"', "a b", "'x'", '"x"', "é ü", "#a b"]
)


@given(st.lists(_word, min_size=1, max_size=16))
@example(["password", "Auth", 'foo"bar\\ baz'])
@example(["x", "", '"'])
def test_command_round_trips_through_openvpns_tokenizer(words: list[str]) -> None:
    try:
        line = command(*words)
    except ValueError as error:
        # These words are all receivable; only the line length may be too much.
        assert "1023" in str(error)
        return
    assert openvpn_words(line) == words


_control = st.sampled_from([*map(chr, range(32)), "\x7f"])


@given(st.text(max_size=10), _control, st.text(max_size=10))
def test_any_control_character_is_refused(before: str, control: str, after: str) -> None:
    with pytest.raises(ValueError):
        command("needstr", "name", before + control + after)


# --- the parser: examples ---------------------------------------------------


def feed_all(data: bytes, *, multiline: bool = False) -> list[Event]:
    parser = ManagementParser()
    if multiline:
        parser.expect_multiline()
    return parser.feed(data)


def test_greeting_and_hold() -> None:
    events = feed_all(
        b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"
        b">HOLD:Waiting for hold release:0\r\n"
    )
    assert events == [
        InfoEvent("INFO", "OpenVPN Management Interface Version 5 -- type 'help' for more info"),
        HoldEvent("Waiting for hold release:0"),
    ]


def test_state_with_every_field() -> None:
    line = (
        b">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.2,192.0.2.1,1194,192.0.2.7,45678,fd00::2\r\n"
    )
    assert feed_all(line) == [
        StateEvent(
            time=1700000000,
            name="CONNECTED",
            detail="SUCCESS",
            local_ip="10.8.0.2",
            remote_ip="192.0.2.1",
            remote_port="1194",
            local_addr="192.0.2.7",
            local_port="45678",
            local_ipv6="fd00::2",
        )
    ]


def test_state_with_fewer_fields() -> None:
    assert feed_all(b">STATE:1700000000,WAIT,,,,,,\r\n") == [StateEvent(1700000000, "WAIT")]
    assert feed_all(b">STATE:5,EXITING,auth-failure\n") == [
        StateEvent(5, "EXITING", "auth-failure")
    ]
    assert feed_all(b">STATE:5,CONNECTING\n") == [StateEvent(5, "CONNECTING")]


@pytest.mark.parametrize(
    "line", [b">STATE:\n", b">STATE:x,WAIT\n", b">STATE:-1,WAIT\n", b">BYTECOUNT:1\n"]
)
def test_malformed_known_notifications_are_violations(line: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        feed_all(line)


def test_bytecount_and_others() -> None:
    events = feed_all(
        b">BYTECOUNT:1024,2048\r\n"
        b">FATAL:Cannot load CA certificate file\r\n"
        b">PASSWORD:Need 'Auth' username/password SC:1,Please enter token PIN\r\n"
        b">INFOMSG:WEB_AUTH::https://example.org/login\r\n"
        b">LOG:1700000000,W,a warning\r\n"
        b">PK_SIGN:ZGF0YQ==,RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest\r\n"
        b">PK_SIGN:ZGF0YQ==\r\n"
        b">NEED-OK:Need 'token-insertion-request' confirmation MSG:Please insert your token\r\n"
        b">NEED-STR:Need 'name' input MSG:Please specify your name\r\n"
        b">ECHO:1101519562,forget-passwords\r\n"
        b">BYTECOUNT_CLI:3,10,20\r\n"
        b">CLIENT:ENV,END\r\n"
        b">REMOTE:vpn.example.com,1194,udp\r\n"
    )
    assert events == [
        ByteCountEvent(1024, 2048),
        FatalEvent("Cannot load CA certificate file"),
        PasswordEvent("Need 'Auth' username/password SC:1,Please enter token PIN"),
        InfoEvent("INFOMSG", "WEB_AUTH::https://example.org/login"),
        LogEvent("1700000000,W,a warning"),
        PkSignEvent("ZGF0YQ==", "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest"),
        PkSignEvent("ZGF0YQ==", ""),
        NeedEvent("NEED-OK", "token-insertion-request", "Please insert your token"),
        NeedEvent("NEED-STR", "name", "Please specify your name"),
        OtherNotification("ECHO", "1101519562,forget-passwords"),
        OtherNotification("BYTECOUNT_CLI", "3,10,20"),
        OtherNotification("CLIENT", "ENV,END"),
        OtherNotification("REMOTE", "vpn.example.com,1194,udp"),
    ]


def test_one_line_replies() -> None:
    assert feed_all(b"SUCCESS: pid=5840\r\nERROR: unknown command, enter 'help'\r\n") == [
        CommandResult(ok=True, text="pid=5840"),
        CommandResult(ok=False, text="unknown command, enter 'help'"),
    ]


def test_multiline_reply_with_interleaved_notifications() -> None:
    parser = ManagementParser()
    parser.expect_multiline()
    events = parser.feed(
        b"OpenVPN Version: OpenVPN 2.6.14\r\n"
        b">BYTECOUNT:1,2\r\n"
        b"Management Version: 5\r\n"
        b">STATE:7,WAIT,,,,,,\r\n"
        b"END\r\n"
        b"SUCCESS: after\r\n"
    )
    assert events == [
        ByteCountEvent(1, 2),
        StateEvent(7, "WAIT"),
        CommandResult(
            ok=True, text="", lines=("OpenVPN Version: OpenVPN 2.6.14", "Management Version: 5")
        ),
        CommandResult(ok=True, text="after"),
    ]


def test_multiline_body_may_look_like_a_reply() -> None:
    parser = ManagementParser()
    parser.expect_multiline()
    assert parser.feed(b"line\r\nSUCCESS: inside\r\n\r\nEND\r\n") == [
        CommandResult(ok=True, text="", lines=("line", "SUCCESS: inside", ""))
    ]


def test_refused_multiline_command_and_empty_block() -> None:
    parser = ManagementParser()
    parser.expect_multiline()
    assert parser.feed(b"ERROR: no\r\n") == [CommandResult(ok=False, text="no")]
    # The expectation is used up: a later stray line is not a block.
    assert parser.feed(b"stray\r\n") == [UnexpectedLine("stray")]
    parser.expect_multiline()
    assert parser.feed(b"END\r\n") == [CommandResult(ok=True, text="", lines=())]


def test_blank_lines_outside_a_reply_are_ignored() -> None:
    assert feed_all(b"\r\n\n>HOLD:x\n") == [HoldEvent("x")]


def test_partial_lines_wait_for_their_end() -> None:
    parser = ManagementParser()
    assert parser.feed(b">BYTECOUNT:1") == []
    assert parser.feed(b"0,20\r") == []
    assert parser.feed(b"\n>HOLD") == [ByteCountEvent(10, 20)]
    assert parser.feed(b":x\r\n") == [HoldEvent("x")]


def test_line_length_limit() -> None:
    fits = b">LOG:" + b"x" * (MAX_LINE - 6) + b"\r\n"
    assert feed_all(fits) == [LogEvent("x" * (MAX_LINE - 6))]
    with pytest.raises(ProtocolViolation):
        feed_all(b">LOG:" + b"x" * (MAX_LINE - 4) + b"\r\n")
    parser = ManagementParser()
    parser.feed(b"x" * MAX_LINE)
    with pytest.raises(ProtocolViolation):
        parser.feed(b"x")


def test_block_length_limit() -> None:
    parser = ManagementParser()
    parser.expect_multiline()
    parser.feed(b"l\n" * MAX_BLOCK_LINES)
    with pytest.raises(ProtocolViolation):
        parser.feed(b"l\n")


def test_undecodable_input_is_a_violation_and_sticks() -> None:
    parser = ManagementParser()
    with pytest.raises(ProtocolViolation) as raised:
        parser.feed(b">INFO:\xff\xfe\r\n")
    assert isinstance(raised.value, TunnelFailed)
    with pytest.raises(ProtocolViolation):
        parser.feed(b">HOLD:x\r\n")


# --- the parser: properties -------------------------------------------------

_realistic_line = st.sampled_from(
    [
        b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
        b">HOLD:Waiting for hold release:0",
        b">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.2,192.0.2.1,1194,,,",
        b">STATE:1700000000,WAIT,,,,,,",
        b">BYTECOUNT:10,20",
        b">PASSWORD:Verification Failed: 'Auth'",
        b">FATAL:oops",
        b">PK_SIGN:AAAA,ECDSA",
        b">NEED-OK:Need 'x' confirmation MSG:y",
        b"SUCCESS: pid=1",
        b"ERROR: no",
        b"END",
        b"",
        b"body line",
        b"caf\xc3\xa9",
        b"\xc3",
        b">STATE:nope",
    ]
)
_stream = st.lists(
    st.tuples(_realistic_line | st.binary(max_size=30), st.sampled_from([b"\n", b"\r\n", b""])),
    max_size=30,
).map(lambda parts: b"".join(line + end for line, end in parts))


def _events_until_violation(
    parser: ManagementParser, chunks: list[bytes]
) -> tuple[list[Event], bool]:
    events: list[Event] = []
    for chunk in chunks:
        try:
            events += parser.feed(chunk)
        except ProtocolViolation:
            return events, True
    return events, False


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300)
@given(_stream, st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_split_points_do_not_change_the_events(
    data: bytes, cuts: list[int], multiline: bool
) -> None:
    def parser() -> ManagementParser:
        p = ManagementParser()
        if multiline:
            p.expect_multiline()
        return p

    bytewise, bytewise_broke = _events_until_violation(
        parser(), [data[i : i + 1] for i in range(len(data))]
    )
    chunked, chunked_broke = _events_until_violation(parser(), _split(data, cuts))
    assert chunked_broke == bytewise_broke
    if bytewise_broke:
        # A chunk that ends in a violation loses that chunk's events, nothing else.
        assert chunked == bytewise[: len(chunked)]
    else:
        assert chunked == bytewise
        whole = parser()
        assert whole.feed(data) == bytewise


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_arbitrary_bytes_raise_nothing_but_protocol_violations(
    chunks: list[bytes], multiline: bool
) -> None:
    parser = ManagementParser()
    if multiline:
        parser.expect_multiline()
    _events_until_violation(parser, chunks)


# --- pk-sig ------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=1024))
@example(b"\x00" * 48)  # exactly one full line of base64
@example(b"\xff" * 512)  # an RSA-4096 signature
def test_pk_sig_is_a_block_of_single_word_lines(signature: bytes) -> None:
    block = pk_sig(signature)

    lines = block.split(b"\n")
    assert lines[0] == b"pk-sig" and lines[-2:] == [b"END", b""]
    body = lines[1:-2]
    for line in body:
        # openvpn reads each line alone: it must come through its tokenizer as one word.
        assert openvpn_words(line + b"\n") == [line.decode()]
    assert base64.b64decode(b"".join(body), validate=True) == signature


def test_pk_sig_needs_a_signature() -> None:
    with pytest.raises(ValueError, match="empty"):
        pk_sig(b"")


def test_pk_sig_reply_and_a_request_during_a_reply() -> None:
    parser = ManagementParser()
    parser.expect_multiline()
    events = parser.feed(
        b"line 1\r\n>PK_SIGN:AAAA,ECDSA\r\nEND\r\nSUCCESS: pk-sign command succeeded\r\n"
    )
    assert events == [
        PkSignEvent("AAAA", "ECDSA"),
        CommandResult(ok=True, text="", lines=("line 1",)),
        CommandResult(ok=True, text="pk-sign command succeeded"),
    ]


# --- Conversation: replies paired with commands -----------------------------------


def test_replies_are_paired_with_commands_in_order_around_notifications() -> None:
    talk = Conversation()
    data, first = talk.send(("state", "on"), ("hold", "release"))
    assert data == b"state on\nhold release\n"
    second = talk.send_block(pk_sig(b"sig"))
    events = talk.feed(
        b"SUCCESS: state on\r\n>HOLD:Waiting\r\nERROR: no hold\r\n>STATE:1,WAIT,,,,,,\r\n"
        b"SUCCESS: pk-sig ok\r\n"
    )
    answered = [e for e in events if isinstance(e, Answered)]
    assert [a.ticket for a in answered] == [*first, second]
    assert [a.result.ok for a in answered] == [True, False, True]
    assert isinstance(events[1], HoldEvent) and isinstance(events[3], StateEvent)


def test_a_reply_nobody_asked_for_has_ticket_zero() -> None:
    (event,) = Conversation().feed(b"SUCCESS: surprise\n")
    assert event == Answered(0, CommandResult(ok=True, text="surprise"))


def test_a_command_openvpn_cannot_take_queues_nothing() -> None:
    talk = Conversation()
    with pytest.raises(ValueError):
        talk.send(("state", "on"), ("username", "Auth", "new\nline"))
    _data, (ticket,) = talk.send(("state", "on"))
    (event,) = talk.feed(b"SUCCESS: ok\n")
    assert isinstance(event, Answered) and event.ticket == ticket


def test_version_is_answered_by_openvpn_2_6_which_does_not_reply_to_it() -> None:
    talk = Conversation()
    data, (version, pid) = talk.announce_version()
    assert data == b"version 4\npid\n"
    events = talk.feed(b"SUCCESS: pid=4242\r\n")
    assert events == [
        Answered(version, CommandResult(ok=True, text="")),
        Answered(pid, CommandResult(ok=True, text="pid=4242")),
    ]
    _data, (after,) = talk.send(("hold", "release"))
    assert talk.feed(b"SUCCESS: released\n")[0] == Answered(
        after, CommandResult(ok=True, text="released")
    )


def test_version_is_answered_by_later_openvpns_that_reply_to_it() -> None:
    talk = Conversation()
    _data, (version, pid) = talk.announce_version()
    events = talk.feed(b"SUCCESS: Management Version set to 4\r\nSUCCESS: pid=7\r\n")
    assert [(e.ticket, e.result.text) for e in events if isinstance(e, Answered)] == [
        (version, "Management Version set to 4"),
        (pid, "pid=7"),
    ]
