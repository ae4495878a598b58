"""Signatures for openvpn's `--management-external-key`. Pure: no I/O.

openvpn never sees the private key. When TLS needs a signature it sends
`>PK_SIGN:<base64 data>,<algorithm>` and the daemon answers with the
signature. The algorithm string is what openvpn 2.6 (management client
version 3 or later) sends:

- `RSA_PKCS1_PADDING`: PKCS#1 v1.5; the data is a DER DigestInfo (hash
  identifier and digest). With `hashalg=` the data is the bare digest.
- `RSA_PKCS1_PSS_PADDING,hashalg=SHA256,saltlen=digest`: PSS over a digest;
  `saltlen` is `digest`, `max`, `auto` (the maximum, when signing) or a
  number of bytes; MGF1 uses the same hash.
- `ECDSA` (data: a digest, its length names the hash) or
  `ECDSA,hashalg=SHA256` (data: a digest of that hash); DER signature.
- `ED25519` / `ED448`: the data is the message itself.
- `data=message` after any of them: the data is the message, to be hashed
  with `hashalg` (openvpn sends it only to a client that announced `digest`).

`RSA_NO_PADDING` (a raw RSA operation on whatever openvpn sends) is refused,
and so is anything else this module does not know: a signature of the wrong
kind is never sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils

from vpnd.errors import TunnelFailed

Scheme = Literal["pkcs1", "pss", "ecdsa", "ed25519", "ed448"]
SigningKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

#: The longest algorithm string accepted (openvpn builds it in 128 bytes).
MAX_ALGORITHM_CHARS = 128

_SCHEMES: dict[str, Scheme] = {
    "RSA_PKCS1_PADDING": "pkcs1",
    "RSA_PKCS1_PSS_PADDING": "pss",
    "ECDSA": "ecdsa",
    "ED25519": "ed25519",
    "ED448": "ed448",
}

# SHA-1 and MD5-SHA1 are left out on purpose: TLS 1.2 and later never need
# them, and a signature over a collision-prone hash is one an attacker can reuse.
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "SHA224": hashes.SHA224(),
    "SHA256": hashes.SHA256(),
    "SHA384": hashes.SHA384(),
    "SHA512": hashes.SHA512(),
}

# DER DigestInfo headers (RFC 8017, section 9.2, note 1): what precedes the
# digest in the data of a plain RSA_PKCS1_PADDING request.
_DIGEST_INFO: dict[bytes, str] = {
    bytes.fromhex("302d300d06096086480165030402040500041c"): "SHA224",
    bytes.fromhex("3031300d060960864801650304020105000420"): "SHA256",
    bytes.fromhex("3041300d060960864801650304020205000430"): "SHA384",
    bytes.fromhex("3051300d060960864801650304020305000440"): "SHA512",
}

_SALT_LENGTH = re.compile(r"digest|max|auto|[0-9]{1,4}")
_KEY_TYPES: dict[Scheme, tuple[type, ...]] = {
    "pkcs1": (rsa.RSAPrivateKey,),
    "pss": (rsa.RSAPrivateKey,),
    "ecdsa": (ec.EllipticCurvePrivateKey,),
    "ed25519": (ed25519.Ed25519PrivateKey,),
    "ed448": (ed448.Ed448PrivateKey,),
}


class SigningError(TunnelFailed):
    """openvpn asked for a signature the daemon will not or cannot make."""


@dataclass(frozen=True)
class SignatureAlgorithm:
    """One parsed `>PK_SIGN` algorithm string."""

    scheme: Scheme
    hash_name: str | None = None  # from hashalg=, one of SHA224/256/384/512
    salt_length: str | None = None  # PSS only: digest, max, auto or a number
    message: bool = False  # data=message: the data is not yet hashed


def _refuse(what: str) -> SigningError:
    return SigningError(f"openvpn asked for a signature vpnd does not make: {what}")


def parse_algorithm(text: str) -> SignatureAlgorithm:
    """Parse the algorithm part of a `>PK_SIGN` notification; SigningError if unknown."""
    if not text:
        raise _refuse("no algorithm named (management client version below 3)")
    if len(text) > MAX_ALGORITHM_CHARS:
        raise _refuse("an over-long algorithm string")
    name, *parameters = text.split(",")
    if name == "RSA_NO_PADDING":
        raise _refuse("RSA_NO_PADDING (a raw RSA operation)")
    scheme = _SCHEMES.get(name)
    if scheme is None:
        raise _refuse(f"unknown algorithm {name[:40]!r}")
    values: dict[str, str] = {}
    message = False
    for parameter in parameters:
        if parameter == "data=message":
            if message:
                raise _refuse("data=message given twice")
            message = True
            continue
        key, sep, value = parameter.partition("=")
        if not sep or key not in ("hashalg", "saltlen") or key in values:
            raise _refuse(f"parameter {parameter[:40]!r} of {name}")
        values[key] = value
    hash_name = values.get("hashalg")
    salt_length = values.get("saltlen")
    if hash_name is not None and hash_name not in _HASHES:
        raise _refuse(f"hash algorithm {hash_name[:20]!r}")
    if scheme in ("ed25519", "ed448"):
        if hash_name is not None:
            raise _refuse(f"{name} with a separate hash algorithm")
        # EdDSA always signs the message itself.
        message = True
    if scheme == "pss":
        if hash_name is None or salt_length is None:
            raise _refuse("RSA_PKCS1_PSS_PADDING without hashalg and saltlen")
        if _SALT_LENGTH.fullmatch(salt_length) is None:
            raise _refuse(f"PSS salt length {salt_length[:20]!r}")
    elif salt_length is not None:
        raise _refuse(f"a salt length for {name}")
    if message and hash_name is None and scheme in ("pkcs1", "pss", "ecdsa"):
        raise _refuse(f"{name} over a message without a hash algorithm")
    return SignatureAlgorithm(scheme, hash_name, salt_length, message)


def _prehashed(hash_name: str, digest: bytes) -> utils.Prehashed:
    algorithm = _HASHES[hash_name]
    if len(digest) != algorithm.digest_size:
        raise _refuse(f"{len(digest)} bytes of data as a {hash_name} digest")
    return utils.Prehashed(algorithm)


def _digest_info(data: bytes) -> tuple[str, bytes]:
    for header, hash_name in _DIGEST_INFO.items():
        if data.startswith(header) and len(data) == len(header) + _HASHES[hash_name].digest_size:
            return hash_name, data[len(header) :]
    raise _refuse("PKCS#1 v1.5 data that is not a SHA-2 DigestInfo")


_ECDSA_DIGEST_SIZES = {hash_.digest_size: name for name, hash_ in _HASHES.items()}


class Signer:
    """A private key in memory that answers openvpn's signature requests."""

    def __init__(self, key: SigningKey) -> None:
        """Wrap a loaded key; `from_pem` is the usual way in."""
        self._key = key

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        """Load an unencrypted PEM private key (RSA, EC, Ed25519 or Ed448); SigningError if not."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise SigningError("the private key is encrypted; vpnd needs it unencrypted") from None
        except (ValueError, UnsupportedAlgorithm):
            raise SigningError("the private key cannot be read (not a PEM private key)") from None
        if not isinstance(
            key,
            rsa.RSAPrivateKey
            | ec.EllipticCurvePrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            raise SigningError(
                f"the private key is of a kind openvpn cannot use ({type(key).__name__})"
            )
        return cls(key)

    @property
    def key_type(self) -> str:
        """`RSA`, `EC`, `ED25519` or `ED448`, for messages."""
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            return "RSA"
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return "EC"
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return "ED25519"
        return "ED448"

    def sign_request(self, data_b64: str, algorithm: str) -> bytes:
        """The signature for one `>PK_SIGN:<data_b64>,<algorithm>`; SigningError if refused."""
        parsed = parse_algorithm(algorithm)
        try:
            data = base64.b64decode(data_b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise _refuse("data that is not base64") from None
        return self.sign(data, parsed)

    def sign(self, data: bytes, algorithm: SignatureAlgorithm) -> bytes:
        """Sign `data` as `algorithm` says; SigningError if the key does not fit or it fails."""
        if not isinstance(self._key, _KEY_TYPES[algorithm.scheme]):
            raise _refuse(f"a {algorithm.scheme.upper()} signature with an {self.key_type} key")
        try:
            return self._sign(data, algorithm)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            # e.g. a salt too long for the key size
            raise _refuse(
                f"a {algorithm.scheme.upper()} signature it cannot make ({error})"
            ) from None

    def _sign(self, data: bytes, algorithm: SignatureAlgorithm) -> bytes:
        key = self._key
        hash_name = algorithm.hash_name
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            return key.sign(data)
        chosen: hashes.HashAlgorithm | utils.Prehashed
        if algorithm.message:
            assert hash_name is not None  # parse_algorithm guarantees it
            chosen = _HASHES[hash_name]
        elif hash_name is not None:
            chosen = _prehashed(hash_name, data)
        elif algorithm.scheme == "pkcs1":
            hash_name, data = _digest_info(data)
            chosen = _prehashed(hash_name, data)
        else:
            # ECDSA over a bare digest: only its length matters to the
            # signature, and it tells which hash made it.
            size_name = _ECDSA_DIGEST_SIZES.get(len(data))
            if size_name is None:
                raise _refuse(f"{len(data)} bytes of data as an ECDSA digest")
            chosen = _prehashed(size_name, data)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(chosen))
        if algorithm.scheme == "pkcs1":
            return key.sign(data, padding.PKCS1v15(), chosen)
        assert hash_name is not None and algorithm.salt_length is not None
        return key.sign(data, _pss(hash_name, algorithm.salt_length), chosen)


def _pss(hash_name: str, salt_length: str) -> padding.PSS:
    mgf = padding.MGF1(_HASHES[hash_name])
    if salt_length == "digest":
        return padding.PSS(mgf, padding.PSS.DIGEST_LENGTH)
    if salt_length in ("max", "auto"):
        # For signing, OpenSSL's "auto" means the maximum as well.
        return padding.PSS(mgf, padding.PSS.MAX_LENGTH)
    return padding.PSS(mgf, int(salt_length))
