"""PKCE verifier, S256 challenge and state values (RFC 7636)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.errors import InvalidArgument
from vpnd.protocols.pkce import challenge_s256, new_state, new_verifier

B64URL_43 = re.compile(r"[A-Za-z0-9_-]{43}")


def test_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert challenge_s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize("make", [new_verifier, new_state])
def test_fresh_values_are_32_random_bytes_base64url(make: object) -> None:
    assert callable(make)
    values = {make() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert B64URL_43.fullmatch(value)
        assert len(base64.urlsafe_b64decode(value + "=")) == 32


@pytest.mark.parametrize(
    "verifier",
    [
        "",
        "short",
        "a" * 42,
        "a" * 129,
        "a" * 42 + "=",
        "a" * 42 + " ",
        "a" * 42 + "é",
        "a" * 42 + "+",
        "a" * 42 + "/",
    ],
)
def test_verifiers_rfc7636_forbids_are_refused(verifier: str) -> None:
    with pytest.raises(InvalidArgument):
        challenge_s256(verifier)


def test_longest_and_shortest_allowed_verifiers() -> None:
    assert B64URL_43.fullmatch(challenge_s256("~" * 43))
    assert B64URL_43.fullmatch(challenge_s256("a._-~" * 25 + "abc"))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=96))
def test_challenge_is_sha256_of_verifier(raw: bytes) -> None:
    verifier = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    challenge = challenge_s256(verifier)
    assert B64URL_43.fullmatch(challenge)
    assert base64.urlsafe_b64decode(challenge + "=") == hashlib.sha256(verifier.encode()).digest()
    assert challenge_s256(verifier) == challenge
    assert challenge != verifier


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140))
def test_challenge_only_raises_invalid_argument(verifier: str) -> None:
    try:
        challenge = challenge_s256(verifier)
    except InvalidArgument:
        return
    assert B64URL_43.fullmatch(challenge)


def test_distinct_verifiers_give_distinct_challenges() -> None:
    verifiers = [new_verifier() for _ in range(50)]
    assert len({challenge_s256(v) for v in verifiers}) == 50
