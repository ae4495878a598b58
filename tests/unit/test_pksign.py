"""Signatures for openvpn's external key: each kind openvpn asks for, checked with the public key."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vpnd.errors import TunnelFailed
from vpnd.protocols.pksign import SignatureAlgorithm, Signer, SigningError, parse_algorithm

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED25519_KEY = ed25519.Ed25519PrivateKey.generate()
ED448_KEY = ed448.Ed448PrivateKey.generate()

MESSAGE = b" " * 64 + b"TLS 1.3, client CertificateVerify\x00" + bytes(range(48))
HASHES: dict[str, hashes.HashAlgorithm] = {
    "SHA224": hashes.SHA224(),
    "SHA256": hashes.SHA256(),
    "SHA384": hashes.SHA384(),
    "SHA512": hashes.SHA512(),
}
# DigestInfo headers written out from the ASN.1 (RFC 8017, 9.2 note 1), so
# the test does not share the module's table.
DIGEST_INFO_OIDS = {"SHA224": 4, "SHA256": 1, "SHA384": 2, "SHA512": 3}


def pem(key: object) -> bytes:
    assert hasattr(key, "private_bytes")
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data


def digest(name: str, data: bytes = MESSAGE) -> bytes:
    return hashlib.new(name.lower(), data).digest()


def digest_info(name: str, data: bytes = MESSAGE) -> bytes:
    value = digest(name, data)
    oid = bytes(
        [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, DIGEST_INFO_OIDS[name]]
    )
    algorithm_id = bytes([0x30, len(oid) + 2]) + oid + b"\x05\x00"
    body = algorithm_id + bytes([0x04, len(value)]) + value
    return bytes([0x30, len(body)]) + body


def request(signer: Signer, data: bytes, algorithm: str) -> bytes:
    return signer.sign_request(base64.b64encode(data).decode(), algorithm)


# --- RSA ----------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_pkcs1_over_a_digest_info(hash_name: str) -> None:
    signer = Signer.from_pem(pem(RSA_KEY))

    signature = request(signer, digest_info(hash_name), "RSA_PKCS1_PADDING")

    public = RSA_KEY.public_key()
    public.verify(signature, MESSAGE, padding.PKCS1v15(), HASHES[hash_name])
    # PKCS#1 v1.5 is deterministic: exactly what signing the message gives.
    assert signature == RSA_KEY.sign(MESSAGE, padding.PKCS1v15(), HASHES[hash_name])


def test_pkcs1_with_hashalg_over_a_digest_and_over_a_message() -> None:
    signer = Signer.from_pem(pem(RSA_KEY))
    expected = RSA_KEY.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA384())

    assert request(signer, digest("SHA384"), "RSA_PKCS1_PADDING,hashalg=SHA384") == expected
    assert request(signer, MESSAGE, "RSA_PKCS1_PADDING,hashalg=SHA384,data=message") == expected


@pytest.mark.parametrize(
    ("saltlen", "expected_salt"),
    [("digest", 32), ("max", 2048 // 8 - 32 - 2), ("auto", 2048 // 8 - 32 - 2), ("20", 20)],
)
def test_pss_over_a_digest(saltlen: str, expected_salt: int) -> None:
    signer = Signer.from_pem(pem(RSA_KEY))

    signature = request(
        signer, digest("SHA256"), f"RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen={saltlen}"
    )

    # An explicit salt length makes verification check it exactly.
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), expected_salt)
    RSA_KEY.public_key().verify(signature, digest("SHA256"), pss, Prehashed(hashes.SHA256()))
    wrong = padding.PSS(padding.MGF1(hashes.SHA256()), expected_salt + 1)
    with pytest.raises(InvalidSignature):
        RSA_KEY.public_key().verify(signature, MESSAGE, wrong, hashes.SHA256())


def test_pss_uses_the_named_hash_for_mgf1_and_can_hash_the_message() -> None:
    signer = Signer.from_pem(pem(RSA_KEY))

    signature = request(
        signer, MESSAGE, "RSA_PKCS1_PSS_PADDING,hashalg=SHA512,saltlen=digest,data=message"
    )

    pss = padding.PSS(padding.MGF1(hashes.SHA512()), 64)
    RSA_KEY.public_key().verify(signature, MESSAGE, pss, hashes.SHA512())


# --- ECDSA and EdDSA ------------------------------------------------------------


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_ecdsa_over_a_bare_digest(hash_name: str) -> None:
    signer = Signer.from_pem(pem(EC_KEY))

    signature = request(signer, digest(hash_name), "ECDSA")

    EC_KEY.public_key().verify(signature, MESSAGE, ec.ECDSA(HASHES[hash_name]))


def test_ecdsa_with_hashalg() -> None:
    signer = Signer.from_pem(pem(EC384_KEY))
    public = EC384_KEY.public_key()

    public.verify(
        request(signer, digest("SHA384"), "ECDSA,hashalg=SHA384"),
        MESSAGE,
        ec.ECDSA(hashes.SHA384()),
    )
    public.verify(
        request(signer, MESSAGE, "ECDSA,hashalg=SHA256,data=message"),
        MESSAGE,
        ec.ECDSA(hashes.SHA256()),
    )


@pytest.mark.parametrize("algorithm", ["ED25519,data=message", "ED25519"])
def test_ed25519_signs_the_message(algorithm: str) -> None:
    signer = Signer.from_pem(pem(ED25519_KEY))

    signature = request(signer, MESSAGE, algorithm)

    ED25519_KEY.public_key().verify(signature, MESSAGE)


def test_ed448_signs_the_message() -> None:
    signer = Signer.from_pem(pem(ED448_KEY))

    signature = request(signer, MESSAGE, "ED448,data=message")

    ED448_KEY.public_key().verify(signature, MESSAGE)


def test_a_traditional_rsa_pem_loads() -> None:
    traditional = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert traditional.startswith(b"-----BEGIN RSA PRIVATE KEY-----")

    signer = Signer.from_pem(traditional)

    assert signer.key_type == "RSA"


# --- refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "data", "algorithm", "says"),
    [
        (RSA_KEY, digest("SHA256"), "RSA_NO_PADDING", "RSA_NO_PADDING"),
        (RSA_KEY, digest("SHA256"), "", "no algorithm"),
        (RSA_KEY, digest("SHA256"), "RSA_X931_PADDING", "unknown algorithm"),
        (EC_KEY, digest("SHA256"), "ECDSA,hashalg=SHA256,foo=bar", "parameter"),
        (EC_KEY, digest("SHA256"), "ECDSA,hashalg=SHA256,hashalg=SHA256", "parameter"),
        (EC_KEY, digest("SHA256"), "ECDSA,", "parameter"),
        (EC_KEY, MESSAGE, "ECDSA,data=message", "without a hash"),
        (EC_KEY, MESSAGE, "ECDSA,hashalg=SHA256,data=message,data=message", "twice"),
        (EC_KEY, digest("SHA256"), "ECDSA,saltlen=digest", "salt length"),
        (ED25519_KEY, MESSAGE, "ED25519,hashalg=SHA256", "hash algorithm"),
        # the key does not fit the algorithm
        (EC_KEY, digest_info("SHA256"), "RSA_PKCS1_PADDING", "with an EC key"),
        (RSA_KEY, digest("SHA256"), "ECDSA", "with an RSA key"),
        (EC_KEY, MESSAGE, "ED25519", "with an EC key"),
        (ED25519_KEY, MESSAGE, "ED448", "with an ED25519 key"),
        (
            ED448_KEY,
            digest("SHA256"),
            "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest",
            "ED448",
        ),
        # hashes vpnd does not sign
        (RSA_KEY, digest("SHA1"), "RSA_PKCS1_PADDING,hashalg=SHA1", "hash algorithm"),
        (RSA_KEY, digest("MD5") + digest("SHA1"), "RSA_PKCS1_PADDING", "DigestInfo"),
        (
            RSA_KEY,
            digest("SHA256"),
            "RSA_PKCS1_PSS_PADDING,hashalg=MD5-SHA1,saltlen=digest",
            "hash",
        ),
        (EC_KEY, digest("SHA1"), "ECDSA", "20 bytes"),
        # data that is not what the algorithm says
        (RSA_KEY, digest_info("SHA256")[:-1], "RSA_PKCS1_PADDING", "DigestInfo"),
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PADDING", "DigestInfo"),
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PADDING,hashalg=SHA384", "as a SHA384 digest"),
        (EC_KEY, MESSAGE, "ECDSA,hashalg=SHA256", "as a SHA256 digest"),
        (EC_KEY, b"", "ECDSA", "0 bytes"),
        # PSS parameters
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PSS_PADDING", "without hashalg"),
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PSS_PADDING,hashalg=SHA256", "without hashalg"),
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=-1", "salt"),
        (RSA_KEY, digest("SHA256"), "RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=9999", "cannot"),
    ],
)
def test_refused(key: object, data: bytes, algorithm: str, says: str) -> None:
    signer = Signer.from_pem(pem(key))

    with pytest.raises(SigningError) as raised:
        request(signer, data, algorithm)

    assert says in raised.value.message
    # The tunnel reports it as a failed tunnel.
    assert isinstance(raised.value, TunnelFailed)


def test_data_that_is_not_base64_is_refused() -> None:
    signer = Signer.from_pem(pem(EC_KEY))
    for data in ("not base64!", "AAA", "ÄÄÄÄ", "AAAA\nAAAA"):
        with pytest.raises(SigningError, match="base64"):
            signer.sign_request(data, "ECDSA")


@pytest.mark.parametrize(
    ("pem_text", "says"),
    [
        (b"", "cannot be read"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot be read"),
        (
            EC_KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
        (pem(dsa.generate_private_key(key_size=2048)), "kind openvpn cannot use"),
        (pem(x25519.X25519PrivateKey.generate()), "kind openvpn cannot use"),
    ],
)
def test_keys_that_cannot_sign_are_refused(pem_text: bytes, says: str) -> None:
    with pytest.raises(SigningError) as raised:
        Signer.from_pem(pem_text)
    assert says in raised.value.message


def test_parse_algorithm_as_openvpn_sends_it() -> None:
    assert parse_algorithm("RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest") == (
        SignatureAlgorithm("pss", "SHA256", "digest", message=False)
    )
    assert parse_algorithm("ED25519,data=message") == SignatureAlgorithm("ed25519", message=True)
    assert parse_algorithm("ECDSA") == SignatureAlgorithm("ecdsa")


# --- whatever openvpn (or something posing as it) sends -----------------------------

SIGNERS = [Signer.from_pem(pem(k)) for k in (RSA_KEY, EC_KEY, ED25519_KEY, ED448_KEY)]
TOKENS = [
    "RSA_PKCS1_PADDING",
    "RSA_PKCS1_PSS_PADDING",
    "RSA_NO_PADDING",
    "ECDSA",
    "ED25519",
    "ED448",
    "hashalg=SHA256",
    "hashalg=SHA384",
    "hashalg=SHA1",
    "hashalg=",
    "saltlen=digest",
    "saltlen=max",
    "saltlen=0",
    "saltlen=4000",
    "data=message",
    "",
]
algorithms = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)), max_size=6).map(",".join),
)
data_texts = st.one_of(
    st.binary(max_size=600).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from([digest_info("SHA256"), digest("SHA256"), digest("SHA512")]).map(
        lambda b: base64.b64encode(b).decode()
    ),
    st.text(max_size=50),
)


@given(signer=st.sampled_from(SIGNERS), data=data_texts, algorithm=algorithms)
@settings(max_examples=300, deadline=None)
@example(signer=SIGNERS[0], data="", algorithm="RSA_PKCS1_PADDING")
@example(signer=SIGNERS[0], data="AAAA", algorithm="RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=0")
@example(signer=SIGNERS[2], data="", algorithm="ED25519")
def test_any_request_gives_a_signature_or_the_named_error(
    signer: Signer, data: str, algorithm: str
) -> None:
    try:
        signature = signer.sign_request(data, algorithm)
    except SigningError:
        return
    assert isinstance(signature, bytes) and signature
