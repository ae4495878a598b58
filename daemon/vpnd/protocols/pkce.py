"""PKCE (RFC 7636, S256) and OAuth state values. Pure: no I/O."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from vpnd.errors import InvalidArgument

# RFC 7636 section 4.1: 43 to 128 characters from the unreserved set.
_VERIFIER_RE = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    """A fresh code verifier: 32 random bytes, base64url without padding."""
    return _b64url(secrets.token_bytes(32))


def challenge_s256(verifier: str) -> str:
    """The S256 code challenge for a verifier.

    Raises InvalidArgument for a verifier RFC 7636 does not allow, so a
    malformed one is caught here rather than by the server.
    """
    if not _VERIFIER_RE.fullmatch(verifier):
        raise InvalidArgument("a PKCE code verifier must be 43 to 128 unreserved characters")
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    """A fresh OAuth state value: 32 random bytes, base64url without padding."""
    return _b64url(secrets.token_bytes(32))
