"""The sealed record format: one secret, encrypted and bound to where it belongs.

Pure: bytes in, bytes out, no I/O. A record on disk is

    magic "VPNS" | format (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag

Format 1 is AES-256-GCM with a random 96-bit nonce per record. The associated
data is the first 9 bytes of the header (so the format byte and key id cannot
be altered) followed by the record's context, `service NUL username`
(`vpnd/{uid}/{server_id}` and the record name): a record copied into another
user's or server's directory, or renamed, no longer opens. The format byte lets
a later version change the scheme and still read what this one wrote.

The key id is the first 4 bytes of HMAC-SHA256(key, "vpnd store key id"). It
names the key a record was written with, so "written with another key" can be
told apart from "damaged", and an older key can still open older records.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"VPNS"
FORMAT_AES256GCM = 1
KEY_SIZE = 32
_KEY_ID_SIZE = 4
_NONCE_SIZE = 12
_TAG_SIZE = 16
_PREFIX_SIZE = len(MAGIC) + 1 + _KEY_ID_SIZE
_HEADER_SIZE = _PREFIX_SIZE + _NONCE_SIZE
MIN_SIZE = _HEADER_SIZE + _TAG_SIZE


class RecordUnreadable(ValueError):
    """A sealed record does not open; the message says why, in words for a person."""


def key_id(key: bytes) -> bytes:
    """The 4-byte id a record carries to name its key (not enough to guess the key)."""
    return hmac.digest(key, b"vpnd store key id", "sha256")[:_KEY_ID_SIZE]


def context(service: str, username: str) -> bytes:
    """The associated data that binds a record to its place.

    Neither part may contain NUL, so the joined form is unambiguous."""
    if "\x00" in service or "\x00" in username:
        raise ValueError("a record's service or name contains NUL")
    return f"{service}\x00{username}".encode()


class Sealer:
    """Seals with one key and opens with it or any older key still known."""

    def __init__(self, key: bytes, older: Iterable[bytes] = ()) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a store key has {KEY_SIZE} bytes")
        self.key_id = key_id(key)
        self._keys: dict[bytes, bytes] = {}
        for old in older:
            if len(old) != KEY_SIZE:
                raise ValueError(f"a store key has {KEY_SIZE} bytes")
            self._keys.setdefault(key_id(old), old)
        self._keys[self.key_id] = key
        self._ciphers: dict[bytes, AESGCM] = {}

    def _cipher(self, kid: bytes) -> AESGCM:
        # cryptography is loaded on the first secret read or write, not at
        # start-up: an idle daemon with no secret in use does without it.
        cipher = self._ciphers.get(kid)
        if cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            cipher = self._ciphers[kid] = AESGCM(self._keys[kid])
        return cipher

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        """A record holding `plaintext`, bound to `context`."""
        prefix = MAGIC + bytes([FORMAT_AES256GCM]) + self.key_id
        nonce = os.urandom(_NONCE_SIZE)
        return (
            prefix + nonce + self._cipher(self.key_id).encrypt(nonce, plaintext, prefix + context)
        )

    def open(self, record: bytes, context: bytes) -> tuple[bytes, bool]:
        """The plaintext of a record, and whether it was sealed with an older key
        (then the caller should seal it again with the current one).

        RecordUnreadable if it is not a record, not ours, or damaged."""
        if len(record) < len(MAGIC) or record[: len(MAGIC)] != MAGIC:
            raise RecordUnreadable("it is not a vpnd secret record")
        if len(record) < MIN_SIZE:
            raise RecordUnreadable("it is truncated")
        version = record[len(MAGIC)]
        if version != FORMAT_AES256GCM:
            raise RecordUnreadable(f"it has format {version}, which this vpnd does not know")
        prefix = record[:_PREFIX_SIZE]
        kid = record[len(MAGIC) + 1 : _PREFIX_SIZE]
        if kid not in self._keys:
            raise RecordUnreadable("it was written with another store key")
        from cryptography.exceptions import InvalidTag

        nonce = record[_PREFIX_SIZE:_HEADER_SIZE]
        try:
            plaintext = self._cipher(kid).decrypt(nonce, record[_HEADER_SIZE:], prefix + context)
        except InvalidTag:
            raise RecordUnreadable(
                "it is damaged, or was moved here from another user, server or name"
            ) from None
        return plaintext, kid != self.key_id
