"""Signed server discovery: minisign signatures, the server and organization lists,
and legacy instance discovery (spec 002). Pure: no I/O.

Current discovery publishes `server_list.json` and `organization_list.json`,
each with a minisign signature (`.minisig`):

    untrusted comment: <anything; ignored>
    base64(<algorithm "Ed" or "ED"> <key id, 8 bytes> <Ed25519 signature, 64 bytes>)
    trusted comment: timestamp:<n>\tfile:<file name>[\thashed]
    base64(<Ed25519 signature of the signature above + the trusted comment>)

"Ed" signs the file itself, "ED" its BLAKE2b-512 hash. The key id picks the
trusted key; the trusted comment must name the file that was asked for, so
a genuine signature of one list cannot pass for another. Each list carries
a version `v`: a copy with a lower `v` than the cached one is a rollback,
an equal one means nothing changed.

Legacy instance discovery (`institute_access.json`, `secure_internet.json`)
signs each file with a base64 Ed25519 detached signature (`.sig`) and
versions it with `seq`, under the same rollback rule.

Everything a list holds is bounded (document size, entry counts, string
lengths, languages) and checked: base URLs are https, normalised with a
trailing slash; display names and keywords are a string or a language
map. A list of the wrong shape raises MalformedList naming what is wrong;
every refusal is a `ListRejected`, so the caller can keep its cached copy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast
from urllib.parse import quote

from vpnd.errors import InvalidArgument, ServerError
from vpnd.protocols.documents import (
    LANGUAGE_TAG_RE,
    MAX_DISPLAY_NAME,
    MAX_LANGUAGES,
    MAX_URL_LENGTH,
    clean_text,
    normalize_base_url,
)

SERVER_LIST = "server_list.json"
ORGANIZATION_LIST = "organization_list.json"
INSTITUTE_ACCESS_LIST = "institute_access.json"
SECURE_INTERNET_LIST = "secure_internet.json"

MINISIG_SUFFIX = ".minisig"
LEGACY_SIG_SUFFIX = ".sig"

INSTITUTE_ACCESS = "institute_access"
SECURE_INTERNET = "secure_internet"
SERVER_TYPES = frozenset({INSTITUTE_ACCESS, SECURE_INTERNET})
AUTHORIZATION_TYPES = frozenset({"local", "distributed"})

MAX_LIST_BYTES = 4 << 20
"""Largest list accepted (the organization list is about 1 MiB today)."""

MAX_SIGNATURE_BYTES = 16 << 10
"""Largest signature file accepted (minisign's trusted comment is at most 8 KiB)."""

MAX_TRUSTED_COMMENT = 8192
"""Longest trusted comment accepted, in bytes."""

MAX_SERVERS = 5_000
"""Most entries accepted in a server list (or a legacy instance list)."""

MAX_ORGANIZATIONS = 20_000
"""Most entries accepted in an organization list."""

MAX_KEYWORDS = 1_000
"""Longest keyword text kept per language (longer ones are cut)."""

MAX_CONTACTS = 16
"""Most support contacts kept per server."""

MAX_CONTACT = 256
"""Longest support contact kept."""

MAX_ORG_ID = 512
"""Longest org_id accepted."""

MAX_VERSION = (1 << 63) - 1
"""Highest `v` / `seq` accepted."""

_CONTACT_SCHEMES = ("mailto:", "https:", "tel:")
_COUNTRY_CODE_RE = re.compile(r"[A-Za-z]{2}")
_PUBLIC_KEY_BYTES = 42  # "Ed" + key id + Ed25519 public key
_SIGNATURE_BYTES = 74  # algorithm + key id + Ed25519 signature
_ED25519_SIGNATURE = 64
_ED25519_PUBLIC_KEY = 32
_UNTRUSTED_PREFIX = "untrusted comment:"
_TRUSTED_PREFIX = "trusted comment: "
_LEGACY = b"Ed"
_PREHASHED = b"ED"


# --- errors -------------------------------------------------------------------


class ListRejected(ServerError):
    """A discovery list or its signature was refused; a cached copy stays in use."""


class UnsignedList(ListRejected):
    """The list came without a signature file."""


class MalformedSignature(ListRejected):
    """The signature file is not a minisign signature (or a base64 Ed25519 signature)."""


class UntrustedKey(ListRejected):
    """The list is signed with a key that is not among the trusted ones."""


class BadSignature(ListRejected):
    """The signature does not match the list: it was changed after signing, or forged."""


class SignedForOtherFile(ListRejected):
    """The signature's trusted comment names another file than the one asked for."""


class ListRollback(ListRejected):
    """The list is older (lower `v` or `seq`) than the copy already verified."""


class MalformedList(ListRejected):
    """The list is signed but is not a list vpnd can read: wrong shape, bad values."""


class ListTooLarge(MalformedList):
    """The list (or its signature) is larger than vpnd accepts."""


# --- keys and signatures ----------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A minisign public key: its 8-byte id (as stored in files) and the Ed25519 key."""

    key_id: bytes
    public_key: bytes

    @property
    def key_id_hex(self) -> str:
        """The id as minisign prints it (hex of the little-endian number)."""
        return key_id_hex(self.key_id)


def key_id_hex(key_id: bytes) -> str:
    """A minisign key id as minisign prints it."""
    return key_id[::-1].hex().upper()


def _b64(text: str) -> bytes:
    return base64.b64decode(text.strip().encode("ascii"), validate=True)


def parse_public_key(text: str) -> TrustedKey:
    """A minisign public key: its base64 line ("RW…"), optionally after its
    "untrusted comment:" line. InvalidArgument (a setting) when it is not one."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].startswith(_UNTRUSTED_PREFIX):
        lines = lines[1:]
    problem = f"{text.strip()[:80]!r} is not a minisign public key (a base64 line starting RW)"
    if len(lines) != 1 or not lines[0].isascii():
        raise InvalidArgument(problem)
    try:
        raw = _b64(lines[0])
    except (binascii.Error, ValueError):
        raise InvalidArgument(problem) from None
    if len(raw) != _PUBLIC_KEY_BYTES or raw[:2] != _LEGACY:
        raise InvalidArgument(problem)
    return TrustedKey(key_id=raw[2:10], public_key=raw[10:])


def parse_legacy_key(text: str) -> bytes:
    """A legacy instance discovery key: base64 of a 32-byte Ed25519 public key."""
    problem = f"{text.strip()[:80]!r} is not a base64 Ed25519 public key (32 bytes)"
    if not text.strip().isascii():
        raise InvalidArgument(problem)
    try:
        raw = _b64(text)
    except (binascii.Error, ValueError):
        raise InvalidArgument(problem) from None
    if len(raw) != _ED25519_PUBLIC_KEY:
        raise InvalidArgument(problem)
    return raw


@dataclass(frozen=True)
class Minisig:
    """A parsed minisign signature file (not yet verified)."""

    algorithm: bytes  # b"Ed" (the file) or b"ED" (its BLAKE2b-512 hash)
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes


@dataclass(frozen=True)
class SignatureInfo:
    """What a verified signature says: which key, when (if it says), prehashed or not."""

    key_id: str
    timestamp: int | None
    prehashed: bool


def parse_minisig(data: bytes, file_name: str) -> Minisig:
    """The four lines of a minisign signature file; MalformedSignature (ListTooLarge
    past MAX_SIGNATURE_BYTES) when they are not."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise ListTooLarge(
            f"the signature of {file_name} is larger than {MAX_SIGNATURE_BYTES} bytes"
        )
    problem = f"the signature of {file_name} is not a minisign signature"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSignature(problem) from None
    lines = text.split("\n")
    while lines and lines[-1] in ("", "\r"):
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if len(lines) != 4 or not lines[0].startswith(_UNTRUSTED_PREFIX):
        raise MalformedSignature(problem)
    if not lines[2].startswith(_TRUSTED_PREFIX):
        raise MalformedSignature(problem + " (no trusted comment)")
    trusted_comment = lines[2][len(_TRUSTED_PREFIX) :]
    if len(trusted_comment.encode("utf-8")) > MAX_TRUSTED_COMMENT:
        raise MalformedSignature(problem + " (its trusted comment is too long)")
    try:
        if not (lines[1].isascii() and lines[3].isascii()):
            raise ValueError("not base64")
        signature = _b64(lines[1])
        global_signature = _b64(lines[3])
    except (binascii.Error, ValueError):
        raise MalformedSignature(problem) from None
    if len(signature) != _SIGNATURE_BYTES or len(global_signature) != _ED25519_SIGNATURE:
        raise MalformedSignature(problem)
    algorithm = signature[:2]
    if algorithm not in (_LEGACY, _PREHASHED):
        raise MalformedSignature(
            f"the signature of {file_name} uses an unknown algorithm {algorithm!r}"
        )
    return Minisig(
        algorithm=algorithm,
        key_id=signature[2:10],
        signature=signature[10:],
        trusted_comment=trusted_comment,
        global_signature=global_signature,
    )


def _ed25519_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    # PyNaCl is imported when a signature is first checked, not at daemon start.
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        VerifyKey(public_key).verify(message, signature)
    except BadSignatureError:
        return False
    return True


def _comment_fields(comment: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for part in comment.split("\t"):
        name, sep, value = part.partition(":")
        if sep:
            fields.setdefault(name.strip(), []).append(value)
    return fields


def verify_minisig(
    body: bytes, signature_file: bytes, keys: tuple[TrustedKey, ...], file_name: str
) -> SignatureInfo:
    """Check a list against its minisign signature; return what the signature says.

    The key id picks among `keys` (UntrustedKey if none has it); the
    signature must match the file (or its BLAKE2b-512 hash for "ED") and
    the global signature the signature and trusted comment (BadSignature);
    the trusted comment's `file:` must be `file_name` (SignedForOtherFile).
    The untrusted comment is not looked at.
    """
    minisig = parse_minisig(signature_file, file_name)
    candidates = [key for key in keys if key.key_id == minisig.key_id]
    if not candidates:
        raise UntrustedKey(
            f"{file_name} is signed with key {key_id_hex(minisig.key_id)}, which is not"
            " among the trusted discovery keys"
        )
    prehashed = minisig.algorithm == _PREHASHED
    message = hashlib.blake2b(body, digest_size=64).digest() if prehashed else body
    signed = minisig.signature + minisig.trusted_comment.encode("utf-8")
    for key in candidates:
        if _ed25519_valid(key.public_key, message, minisig.signature) and _ed25519_valid(
            key.public_key, signed, minisig.global_signature
        ):
            break
    else:
        raise BadSignature(
            f"the signature of {file_name} does not match it: the list was changed"
            " after it was signed, or the signature is forged"
        )
    fields = _comment_fields(minisig.trusted_comment)
    files = fields.get("file", [])
    if files != [file_name]:
        named = clean_text(files[0], 80) if len(files) == 1 else ""
        raise SignedForOtherFile(
            f"the signature served as {file_name}'s is for "
            + (f"another file ({named!r})" if named else "no single named file")
        )
    stamps = fields.get("timestamp", [])
    timestamp = (
        int(stamps[0]) if len(stamps) == 1 and stamps[0].isascii() and stamps[0].isdigit() else None
    )
    return SignatureInfo(
        key_id=key_id_hex(minisig.key_id),
        timestamp=timestamp if timestamp is not None and timestamp <= MAX_VERSION else None,
        prehashed=prehashed,
    )


def verify_legacy(body: bytes, signature_file: bytes, public_key: bytes, file_name: str) -> None:
    """Check a legacy instance list against its `.sig`: base64 of a detached
    Ed25519 signature (MalformedSignature, BadSignature)."""
    if len(signature_file) > MAX_SIGNATURE_BYTES:
        raise ListTooLarge(
            f"the signature of {file_name} is larger than {MAX_SIGNATURE_BYTES} bytes"
        )
    problem = f"the signature of {file_name} is not a base64 Ed25519 signature"
    try:
        text = signature_file.decode("ascii")
        signature = _b64(text)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise MalformedSignature(problem) from None
    if len(signature) != _ED25519_SIGNATURE:
        raise MalformedSignature(problem)
    if not _ed25519_valid(public_key, body, signature):
        raise BadSignature(
            f"the signature of {file_name} does not match it: the list was changed"
            " after it was signed, or the signature is forged"
        )


# --- versions -----------------------------------------------------------------


def is_newer(version: int, cached: int | None, file_name: str) -> bool:
    """Whether a verified list replaces the cached copy: True when there is none or
    `version` is higher, False when equal (unchanged); ListRollback when lower."""
    if cached is None or version > cached:
        return True
    if version == cached:
        return False
    raise ListRollback(
        f"{file_name} has version {version}, older than the copy vpnd already has ({cached})"
    )


# --- lists ----------------------------------------------------------------------

Translated = str | Mapping[str, str]


@dataclass(frozen=True)
class DiscoveredServer:
    """A server from the server list (or a legacy instance list).

    `display_name` and `keyword_list` as the list gives them (string or
    language map, cleaned; "" when absent); `country_code` upper case ("" when
    absent); `authentication_url_template` "" when absent."""

    server_type: str
    base_url: str
    display_name: Translated
    country_code: str = ""
    keyword_list: Translated = ""
    support_contact: tuple[str, ...] = ()
    authentication_url_template: str = ""


class Organization(NamedTuple):
    """An organization from the organization list, with its secure-internet home server.

    (A tuple: a list holds thousands, made in one go.)"""

    org_id: str
    display_name: Translated
    secure_internet_home: str
    keyword_list: Translated = ""


@dataclass(frozen=True)
class ServerList:
    """A verified server list. `skipped`: entries of a server type vpnd does not know."""

    version: int
    servers: tuple[DiscoveredServer, ...]
    skipped: int = 0


@dataclass(frozen=True)
class OrganizationList:
    """A verified organization list."""

    version: int
    organizations: tuple[Organization, ...]


@dataclass(frozen=True)
class InstanceList:
    """A verified legacy instance list: its `seq`, whether tokens are shared
    ("distributed") or not ("local"), and its servers, all of one type."""

    version: int
    authorization_type: str
    servers: tuple[DiscoveredServer, ...]


def _load(body: bytes, file_name: str) -> dict[str, object]:
    if len(body) > MAX_LIST_BYTES:
        raise ListTooLarge(f"{file_name} is larger than {MAX_LIST_BYTES >> 20} MiB")
    try:
        # The C decoder gives up on deep nesting with RecursionError; the
        # size bound above bounds everything else.
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MalformedList(f"{file_name} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise MalformedList(f"{file_name} is not a JSON object")
    return doc


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _version(doc: Mapping[str, object], key: str, file_name: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise MalformedList(f'{file_name} has no "{key}" version number')
    return value


def _entries(doc: Mapping[str, object], key: str, limit: int, file_name: str) -> list[object]:
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise MalformedList(f'{file_name} has no "{key}" list')
    if len(entries) > limit:
        raise ListTooLarge(f"{file_name} has more than {limit} entries")
    return entries


class _Reader:
    """Reads one list's entries; remembers what repeats (languages, URLs) so that
    thousands of entries cost little."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self._tags: set[str] = set()
        self._urls: dict[str, str] = {}

    def tags_known(self, tags: set[object]) -> bool:
        """Whether all `tags` are language tags (remembering them if so)."""
        if not self._tags.issuperset(tags):
            if not all(isinstance(tag, str) and LANGUAGE_TAG_RE.fullmatch(tag) for tag in tags):
                return False
            self._tags.update(tags)  # type: ignore[arg-type]
        return True

    @property
    def known_urls(self) -> Mapping[str, str]:
        """The normalised form of each base URL read so far."""
        return self._urls

    def fail(self, index: int, what: str) -> MalformedList:
        return MalformedList(f"{self.file_name}: entry {index} {what}")

    def translated(
        self, value: object, index: int, field: str, limit: int, required: bool
    ) -> Translated:
        # The common case (printable text) stays on the fast path: lists hold
        # thousands of these.
        if isinstance(value, str):
            text = value.strip()[:limit] if value.isprintable() else clean_text(value, limit)
            if not text and required:
                raise self.fail(index, f'has no "{field}"')
            return text
        if value is None:
            if required:
                raise self.fail(index, f'has no "{field}"')
            return ""
        if not isinstance(value, dict) or len(value) > MAX_LANGUAGES:
            raise self.fail(
                index,
                f'has a "{field}" that is neither a string nor a language map'
                f" (at most {MAX_LANGUAGES} languages)",
            )
        if not self._tags.issuperset(value):
            for tag in value:
                if not LANGUAGE_TAG_RE.fullmatch(tag):
                    raise self.fail(index, f'has a "{field}" with a key that is not a language tag')
                self._tags.add(tag)
        texts: dict[str, str] = {}
        for tag, text in value.items():
            if not isinstance(text, str):
                raise self.fail(index, f'has a "{field}" with a translation that is not a string')
            cleaned = text.strip()[:limit] if text.isprintable() else clean_text(text, limit)
            if cleaned:
                texts[tag] = cleaned
        if not texts and required:
            raise self.fail(index, f'has no "{field}"')
        return texts

    def base_url(self, value: object, index: int, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(index, f'has no "{field}"')
        known = self._urls.get(value)
        if known is not None:
            return known
        # normalize_base_url reads a bare host as https; a list must say so.
        if "://" not in value:
            raise self.fail(index, f'has a "{field}" that is not an https URL')
        try:
            url = normalize_base_url(value)
        except InvalidArgument:
            raise self.fail(index, f'has a "{field}" that is not an https URL') from None
        self._urls[value] = url
        return url

    def country_code(self, value: object, index: int, *, required: bool) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not _COUNTRY_CODE_RE.fullmatch(value):
            raise self.fail(index, 'has no two-letter "country_code"')
        return value.upper()

    def contacts(self, value: object, index: int) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(index, 'has a "support_contact" that is not a list of strings')
        kept: list[str] = []
        for item in value[:MAX_CONTACTS]:
            # Only what a person can act on safely; anything else is left out.
            if (
                len(item) <= MAX_CONTACT
                and item.lower().startswith(_CONTACT_SCHEMES)
                and _visible(item)
            ):
                kept.append(item)
        return tuple(kept)

    def template(self, value: object, index: int) -> str:
        if value is None:
            return ""
        if (
            not isinstance(value, str)
            or len(value) > MAX_URL_LENGTH
            or not value.startswith("https://")
            or not _visible(value)
        ):
            raise self.fail(index, 'has an "authentication_url_template" that is not an https URL')
        return value


def _visible(text: str) -> bool:
    """No whitespace, control, format or separator character (isprintable admits
    only the ASCII space among them)."""
    return text.isprintable() and " " not in text


def _object(entry: object, reader: _Reader, index: int) -> Mapping[str, object]:
    if not isinstance(entry, dict):
        raise reader.fail(index, "is not a JSON object")
    return entry


def parse_server_list(body: bytes) -> ServerList:
    """Read a (verified) server_list.json; MalformedList / ListTooLarge when it is
    not one. Entries of an unknown server_type are left out (and counted)."""
    doc = _load(body, SERVER_LIST)
    version = _version(doc, "v", SERVER_LIST)
    reader = _Reader(SERVER_LIST)
    servers: list[DiscoveredServer] = []
    seen: set[tuple[str, str]] = set()
    skipped = 0
    for index, raw in enumerate(_entries(doc, "server_list", MAX_SERVERS, SERVER_LIST)):
        entry = _object(raw, reader, index)
        server_type = entry.get("server_type")
        if not isinstance(server_type, str):
            raise reader.fail(index, 'has no "server_type"')
        if server_type not in SERVER_TYPES:
            skipped += 1
            continue
        secure = server_type == SECURE_INTERNET
        server = DiscoveredServer(
            server_type=server_type,
            base_url=reader.base_url(entry.get("base_url"), index, "base_url"),
            display_name=reader.translated(
                entry.get("display_name"),
                index,
                "display_name",
                MAX_DISPLAY_NAME,
                required=not secure,
            ),
            country_code=reader.country_code(entry.get("country_code"), index, required=secure),
            keyword_list=reader.translated(
                entry.get("keyword_list"), index, "keyword_list", MAX_KEYWORDS, required=False
            ),
            support_contact=reader.contacts(entry.get("support_contact"), index),
            authentication_url_template=reader.template(
                entry.get("authentication_url_template"), index
            ),
        )
        key = (server.server_type, server.base_url)
        if key in seen:
            raise reader.fail(index, f"lists {server.base_url} a second time")
        seen.add(key)
        servers.append(server)
    return ServerList(version=version, servers=tuple(servers), skipped=skipped)


_STR_ONLY = frozenset({str})


def _as_is(texts: Sequence[object], limit: int, *, empty: bool) -> bool:
    """Whether every one of `texts` is a printable string that cleaning leaves as
    it is: no whitespace around it, at most `limit` characters, and (unless
    `empty`) not empty. Checked for all at once, with no step per text in Python."""
    if not texts:
        return True
    if set(map(type, texts)) != _STR_ONLY:
        return False
    strings: Sequence[str] = texts  # type: ignore[assignment]
    lengths = list(map(len, strings))
    return (
        max(lengths) <= limit
        and (empty or min(lengths) > 0)
        and "".join(strings).isprintable()
        and list(map(str.strip, strings)) == strings
    )


def _translations_as_is(
    values: list[object], limit: int, reader: _Reader, *, required: bool
) -> list[Translated] | None:
    """A field of every entry (string, language map, or, unless `required`,
    absent) when none needs cleaning and all are valid, the maps kept as they
    are; None otherwise."""
    kinds = set(map(type, values))
    if not kinds <= ({str, dict} if required else {str, dict, type(None)}):
        return None
    maps: list[dict[object, object]] = [value for value in values if value.__class__ is dict]
    texts = [value for value in values if value.__class__ is str]
    if maps:
        sizes = list(map(len, maps))
        if max(sizes) > MAX_LANGUAGES or (required and min(sizes) == 0):
            return None
        tags = set(itertools.chain.from_iterable(maps))
        if not reader.tags_known(tags):
            return None
        if not _as_is(
            list(itertools.chain.from_iterable(map(dict.values, maps))), limit, empty=False
        ):
            return None
    if not _as_is(texts, limit, empty=not required):
        return None
    if type(None) in kinds:
        return ["" if value is None else value for value in values]  # type: ignore[misc]
    return values  # type: ignore[return-value]


def _organizations_at_once(
    entries: list[object], reader: _Reader
) -> tuple[Organization, ...] | None:
    """The organizations of a list whose every entry is valid and needs no
    cleaning (as a published list's are), checked a field at a time over all
    entries, with no step per entry in Python; None when one needs a closer look."""
    if not entries:
        return ()
    if set(map(type, entries)) != {dict}:
        return None
    fields: dict[str, list[object]] = {
        key: list(map(dict.get, cast("list[dict[str, object]]", entries), itertools.repeat(key)))
        for key in ("org_id", "display_name", "secure_internet_home", "keyword_list")
    }
    org_ids = fields["org_id"]
    if not _as_is(org_ids, MAX_ORG_ID, empty=False) or len(set(org_ids)) != len(org_ids):
        return None
    if " " in "".join(cast("list[str]", org_ids)):
        return None
    names = _translations_as_is(fields["display_name"], MAX_DISPLAY_NAME, reader, required=True)
    keywords = _translations_as_is(fields["keyword_list"], MAX_KEYWORDS, reader, required=False)
    homes = fields["secure_internet_home"]
    if names is None or keywords is None or set(map(type, homes)) != _STR_ONLY:
        return None
    try:
        for index, home in enumerate(dict.fromkeys(homes)):
            reader.base_url(home, index, "secure_internet_home")
    except MalformedList:
        return None
    urls = list(map(reader.known_urls.__getitem__, cast("list[str]", homes)))
    make = cast("Callable[[type[Organization], Iterable[object]], Organization]", tuple.__new__)
    return tuple(
        map(make, itertools.repeat(Organization), zip(org_ids, names, urls, keywords, strict=True))
    )


def parse_organization_list(body: bytes) -> OrganizationList:
    """Read a (verified) organization_list.json; MalformedList / ListTooLarge when
    it is not one."""
    doc = _load(body, ORGANIZATION_LIST)
    version = _version(doc, "v", ORGANIZATION_LIST)
    reader = _Reader(ORGANIZATION_LIST)
    entries = _entries(doc, "organization_list", MAX_ORGANIZATIONS, ORGANIZATION_LIST)
    organizations = _organizations_at_once(entries, reader)
    if organizations is None:
        # Something to clean or refuse: entry by entry, naming what is wrong.
        organizations = _organizations_each(entries, reader)
    return OrganizationList(version=version, organizations=organizations)


def _organizations_each(entries: list[object], reader: _Reader) -> tuple[Organization, ...]:
    """The organizations of a list, read entry by entry: each value cleaned, the
    first that is wrong named (MalformedList)."""
    organizations: list[Organization] = []
    seen: set[str] = set()
    translated, base_url = reader.translated, reader.base_url
    for index, raw in enumerate(entries):
        entry = _object(raw, reader, index)
        org_id = entry.get("org_id")
        if not isinstance(org_id, str) or not 0 < len(org_id) <= MAX_ORG_ID or not _visible(org_id):
            raise reader.fail(index, f'has no "org_id" of 1 to {MAX_ORG_ID} printable characters')
        if org_id in seen:
            raise reader.fail(index, "repeats an org_id")
        seen.add(org_id)
        organizations.append(
            Organization(
                org_id,
                translated(
                    entry.get("display_name"), index, "display_name", MAX_DISPLAY_NAME, True
                ),
                base_url(entry.get("secure_internet_home"), index, "secure_internet_home"),
                translated(entry.get("keyword_list"), index, "keyword_list", MAX_KEYWORDS, False),
            )
        )
    return tuple(organizations)


def parse_instance_list(body: bytes, file_name: str) -> InstanceList:
    """Read a (verified) legacy instance list; `file_name` says which
    (INSTITUTE_ACCESS_LIST or SECURE_INTERNET_LIST), and so the type of its servers."""
    server_type = SECURE_INTERNET if file_name == SECURE_INTERNET_LIST else INSTITUTE_ACCESS
    doc = _load(body, file_name)
    version = _version(doc, "seq", file_name)
    authorization_type = doc.get("authorization_type")
    if authorization_type not in AUTHORIZATION_TYPES:
        raise MalformedList(f'{file_name} has no "authorization_type" of local or distributed')
    assert isinstance(authorization_type, str)
    reader = _Reader(file_name)
    servers: list[DiscoveredServer] = []
    seen: set[str] = set()
    for index, raw in enumerate(_entries(doc, "instances", MAX_SERVERS, file_name)):
        entry = _object(raw, reader, index)
        server = DiscoveredServer(
            server_type=server_type,
            base_url=reader.base_url(entry.get("base_uri"), index, "base_uri"),
            display_name=reader.translated(
                entry.get("display_name"), index, "display_name", MAX_DISPLAY_NAME, required=True
            ),
        )
        if server.base_url in seen:
            raise reader.fail(index, f"lists {server.base_url} a second time")
        seen.add(server.base_url)
        servers.append(server)
    return InstanceList(
        version=version, authorization_type=authorization_type, servers=tuple(servers)
    )


def authentication_url(template: str, return_to: str, org_id: str) -> str:
    """The address that logs a member of `org_id` in at a secure-internet home
    server without its chooser of identity providers: `template` (a server
    list's `authentication_url_template`) with `@RETURN_TO@` replaced by the
    authorization URL and `@ORG_ID@` by the organization, both URL-encoded."""
    return template.replace("@RETURN_TO@", quote(return_to, safe="")).replace(
        "@ORG_ID@", quote(org_id, safe="")
    )
