"""Throw-away client certificates for the eduVPN v1/v2 tests (any validity, any key)."""

from __future__ import annotations

import datetime
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.lab.pki import KeyType, PrivateKey

DAY = 86400.0


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh private key of the given type."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey, password: bytes | None = None) -> str:
    """A private key as PKCS#8 PEM (encrypted when `password` is given)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode("ascii")


def make_pair(
    common_name: str = "fd2c32de88c87d38df8547c54ac6c30e",
    *,
    not_before: float | None = None,
    not_after: float | None = None,
    key_type: KeyType = "ec",
    subject: x509.Name | None = None,
) -> tuple[str, str, PrivateKey]:
    """A self-signed certificate and its key: (cert_pem, key_pem, key).

    Valid from an hour ago to 90 days ahead unless told otherwise (Unix times).
    """
    now = time.time()
    key = new_key(key_type)
    name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = now - 3600 if not_before is None else not_before
    end = now + 90 * DAY if not_after is None else not_after
    algorithm = None if key_type == "ed25519" else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(start, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(end, datetime.UTC))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem(key), key
