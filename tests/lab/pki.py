"""A throw-away certificate authority for the lab: portal TLS, openvpn server and clients."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# Certificates start a little in the past so a clock that steps back a few
# seconds between issuing and verifying does not make them "not yet valid".
_BACKDATE = datetime.timedelta(minutes=5)
_CA_DAYS = 365


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}; use 'ec', 'rsa' or 'ed25519'")


def _key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_usage(key: PrivateKey) -> x509.KeyUsage:
    # TLS needs digitalSignature for every key type; RSA may also do key
    # transport and EC key agreement, which is what a real CA would grant.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=isinstance(key, ec.EllipticCurvePrivateKey),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def generate_tls_crypt_key() -> str:
    """Return a fresh OpenVPN static key (2048 bits) in the format `<tls-crypt>` expects."""
    material = secrets.token_hex(256)
    lines = [material[i : i + 32] for i in range(0, len(material), 32)]
    return (
        "#\n# 2048 bit OpenVPN static key\n#\n"
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(lines)
        + "\n-----END OpenVPN Static key V1-----\n"
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


@dataclass
class LabPKI:
    """A throw-away CA with the certificates the lab needs."""

    directory: Path
    ca_path: Path
    ca_pem: str
    portal_cert_path: Path
    portal_key_path: Path
    server_cert_pem: str
    server_key_pem: str
    server_cert_path: Path
    server_key_path: Path
    tls_crypt_key: str
    tls_crypt_path: Path
    _ca_key: ec.EllipticCurvePrivateKey
    _ca_cert: x509.Certificate

    @classmethod
    def create(cls, directory: Path) -> LabPKI:
        """Make a new CA and the portal and server certificates, written under `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnd lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"vpnd lab CA {secrets.token_hex(4)}"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca_pem = _cert_pem(ca_cert)
        ca_path = directory / "ca.pem"
        ca_path.write_text(ca_pem)
        _write_private(directory / "ca.key", _key_pem(ca_key))

        tls_crypt_key = generate_tls_crypt_key()
        tls_crypt_path = directory / "tls-crypt.key"
        _write_private(tls_crypt_path, tls_crypt_key)

        pki = cls(
            directory=directory,
            ca_path=ca_path,
            ca_pem=ca_pem,
            portal_cert_path=directory / "portal.pem",
            portal_key_path=directory / "portal.key",
            server_cert_pem="",
            server_key_pem="",
            server_cert_path=directory / "server.pem",
            server_key_path=directory / "server.key",
            tls_crypt_key=tls_crypt_key,
            tls_crypt_path=tls_crypt_path,
            _ca_key=ca_key,
            _ca_cert=ca_cert,
        )

        portal_cert, portal_key = pki._issue(
            "localhost",
            days=_CA_DAYS,
            key_type="ec",
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=[
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ],
        )
        pki.portal_cert_path.write_text(portal_cert)
        _write_private(pki.portal_key_path, portal_key)

        pki.server_cert_pem, pki.server_key_pem = pki._issue(
            "vpnd-lab-server",
            days=_CA_DAYS,
            key_type="ec",
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=[x509.DNSName("vpnd-lab-server")],
        )
        pki.server_cert_path.write_text(pki.server_cert_pem)
        _write_private(pki.server_key_path, pki.server_key_pem)
        return pki

    def issue_client(
        self, common_name: str, days: int = 1, *, key_type: KeyType = "ec"
    ) -> tuple[str, str]:
        """Issue a client certificate (EKU clientAuth); returns (cert_pem, key_pem)."""
        return self._issue(
            common_name, days=days, key_type=key_type, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def _issue(
        self,
        common_name: str,
        *,
        days: int,
        key_type: KeyType,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName] | None = None,
    ) -> tuple[str, str]:
        key = _new_key(key_type)
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)
