"""Signed discovery lists for tests and benchmarks, and a server that serves them.

`LabSigner` makes minisign signatures (both the legacy "Ed" and the
prehashed "ED" form) and legacy instance-discovery `.sig` files with a
throw-away Ed25519 key, through PyNaCl. `DiscoveryServer` serves files over
real TLS on 127.0.0.1 (the lab CA's portal certificate, TCP_NODELAY on
every connection, through the portals' shared server and handler in
tests.lab.portal), with ETag / Last-Modified and the 304 replies that
conditional requests earn.

Knobs: `files` (path -> bytes; `publish` and `publish_legacy` fill it).
Records: `requests` (method, path, lower-cased headers) and `replies`
(path, status). `reset()` restores both.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import random
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from tests.lab.daemon import VpndProcess
from tests.lab.pki import LabPKI
from tests.lab.portal import Hostile, HostileServed, ServedPortal, _Reply

MINISIG_SUFFIX = ".minisig"
LEGACY_SIG_SUFFIX = ".sig"


class LabSigner:
    """A minisign key pair (and the same key as a legacy instance-discovery key)."""

    def __init__(self, key_id: bytes | None = None) -> None:
        self.signing_key = SigningKey.generate()
        self.key_id = key_id if key_id is not None else secrets.token_bytes(8)
        public = bytes(self.signing_key.verify_key)
        self.public_key = base64.b64encode(b"Ed" + self.key_id + public).decode("ascii")
        """The minisign public key line ("RW…"), as discovery_keys takes it."""
        self.legacy_public_key = base64.b64encode(public).decode("ascii")
        """The bare Ed25519 key, as instance_discovery_key takes it."""

    def sign(
        self,
        body: bytes,
        file_name: str,
        *,
        prehashed: bool = True,
        trusted_comment: str | None = None,
        key_id: bytes | None = None,
        timestamp: int | None = None,
    ) -> bytes:
        """A minisign signature file for `body`, named `file_name` in its trusted comment.

        `trusted_comment` replaces the whole comment; `key_id` claims another key id."""
        message = hashlib.blake2b(body, digest_size=64).digest() if prehashed else body
        signature = self.signing_key.sign(message).signature
        if trusted_comment is None:
            stamp = int(time.time()) if timestamp is None else timestamp
            trusted_comment = f"timestamp:{stamp}\tfile:{file_name}" + (
                "\thashed" if prehashed else ""
            )
        comment = trusted_comment.encode("utf-8")
        global_signature = self.signing_key.sign(signature + comment).signature
        algorithm = b"ED" if prehashed else b"Ed"
        line = base64.b64encode(algorithm + (key_id or self.key_id) + signature)
        return (
            b"untrusted comment: signature from the vpnd lab\n"
            + line
            + b"\ntrusted comment: "
            + comment
            + b"\n"
            + base64.b64encode(global_signature)
            + b"\n"
        )

    def sign_legacy(self, body: bytes) -> bytes:
        """A legacy `.sig`: base64 of the detached Ed25519 signature."""
        return base64.b64encode(self.signing_key.sign(body).signature) + b"\n"


# --- documents --------------------------------------------------------------------


def server_list(version: int, servers: Iterable[Mapping[str, Any]]) -> bytes:
    """A server_list.json."""
    return json.dumps({"v": version, "server_list": list(servers)}, ensure_ascii=False).encode()


def organization_list(version: int, organizations: Iterable[Mapping[str, Any]]) -> bytes:
    """An organization_list.json."""
    return json.dumps(
        {"v": version, "organization_list": list(organizations)}, ensure_ascii=False
    ).encode()


def instance_list(
    seq: int, authorization_type: str, instances: Iterable[Mapping[str, Any]]
) -> bytes:
    """A legacy institute_access.json / secure_internet.json."""
    return json.dumps(
        {
            "authorization_type": authorization_type,
            "seq": seq,
            "signed_at": "2024-01-01 00:00:00",
            "instances": list(instances),
        },
        ensure_ascii=False,
    ).encode()


# Names in several languages and scripts, for lists of any size.
_PLACES = [
    "Amsterdam",
    "Utrecht",
    "Zürich",
    "Genève",
    "København",
    "Kraków",
    "Łódź",
    "Reykjavík",
    "Tromsø",
    "Málaga",
    "Coimbra",
    "São Paulo",
    "Brașov",
    "Plzeň",
    "Ελλάδα",
    "Αθήνα",
    "Москва",
    "Київ",
    "Београд",
    "東京",
    "京都",
    "서울",
    "تونس",
    "القاهرة",
    "ירושלים",
    "दिल्ली",
    "กรุงเทพ",
    "Hà Nội",
    "İstanbul",
    "Tbilisi",
]
_KINDS = {
    "en": [
        "University of {}",
        "{} University of Applied Sciences",
        "{} Medical Centre",
        "{} Institute of Technology",
        "Library of {}",
        "{} Research Council",
    ],
    "nl": ["Universiteit van {}", "Hogeschool {}", "Universitair Medisch Centrum {}"],
    "de": ["Universität {}", "Hochschule {}", "Technische Universität {}"],
    "fr": ["Université de {}", "École normale supérieure de {}"],
    "el": ["Πανεπιστήμιο {}"],
    "ru": ["Университет {}"],
    "ja": ["{}大学"],
}


def synthetic_organizations(count: int, seed: int = 12) -> list[dict[str, Any]]:
    """`count` organizations with names in several languages and scripts, keywords
    and a secure-internet home, unique org_ids; the same for the same seed."""
    rng = random.Random(seed)
    organizations = []
    for n in range(count):
        place = rng.choice(_PLACES)
        languages = rng.sample(sorted(_KINDS), k=rng.randint(1, 4))
        names = {
            language: rng.choice(_KINDS[language]).format(place) + (f" {n}" if n % 3 else "")
            for language in languages
        }
        acronym = "".join(word[0] for word in names[languages[0]].split() if word).upper()
        organizations.append(
            {
                "org_id": f"https://idp{n}.example.org/{place.lower().replace(' ', '-')}",
                "display_name": names if len(names) > 1 or n % 2 else names[languages[0]],
                "keyword_list": {
                    language: f"{acronym} {place} campus{n}" for language in languages[:2]
                },
                "secure_internet_home": f"https://{rng.choice(['nl', 'de', 'no', 'gr'])}.eduvpn.example/",
            }
        )
    return organizations


# --- the server -------------------------------------------------------------------


class DiscoveryServer(ServedPortal):
    """Serves signed discovery lists (any files) over TLS, with conditional replies."""

    __test__ = False
    _thread_name = "lab-discovery"

    files: dict[str, bytes]
    requests: list[tuple[str, str, dict[str, str]]]
    replies: list[tuple[str, int]]
    # Read by the shared handler (tests.lab.portal); this server serves no hostile replies.
    hostile: dict[str, Hostile]
    hostile_served: list[HostileServed]

    def __init__(self, pki: LabPKI) -> None:
        """Prepare a server; it listens once `start` is called."""
        super().__init__(pki, None)
        self._modified: dict[str, float] = {}
        self.reset()

    def reset(self) -> None:
        """No files, no records."""
        with self._state_lock:
            self.files = {}
            self._modified = {}
            self.requests = []
            self.replies = []
            self.hostile = {}
            self.hostile_served = []
            self._generation += 1

    def put(self, path: str, body: bytes) -> None:
        """Serve `body` at `path` ("/server_list.json") from now on."""
        with self._state_lock:
            self.files[path] = body
            # Last-Modified has one-second resolution: a change within the
            # same second must still look newer.
            self._modified[path] = max(time.time(), self._modified.get(path, 0.0) + 1.0)

    def remove(self, path: str) -> None:
        """Stop serving `path` (404)."""
        with self._state_lock:
            self.files.pop(path, None)

    def publish(
        self, file_name: str, body: bytes, signer: LabSigner, *, prehashed: bool = True
    ) -> None:
        """Serve a list and its minisign signature."""
        self.put("/" + file_name, body)
        self.put(
            "/" + file_name + MINISIG_SUFFIX, signer.sign(body, file_name, prehashed=prehashed)
        )

    def publish_legacy(self, file_name: str, body: bytes, signer: LabSigner) -> None:
        """Serve a legacy instance list and its `.sig`."""
        self.put("/" + file_name, body)
        self.put("/" + file_name + LEGACY_SIG_SUFFIX, signer.sign_legacy(body))

    def count(self, path: str, status: int | None = None) -> int:
        """How many requests for `path` were answered (with `status`, if given)."""
        with self._state_lock:
            return sum(1 for p, s in self.replies if p == path and (status is None or s == status))

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Reply:
        """Answer one request: the file, 304 when the client has it, else 404."""
        path = target.split("?", 1)[0]
        with self._state_lock:
            content = self.files.get(path) if method == "GET" else None
            modified = self._modified.get(path, 0.0)
        if content is None:
            reply = _Reply(404, b"not found", "text/plain")
        else:
            etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
            last_modified = email.utils.formatdate(modified, usegmt=True)
            validators = {"ETag": etag, "Last-Modified": last_modified}
            if _not_modified(headers, etag, modified):
                reply = _Reply(304, b"", "application/octet-stream", validators)
            else:
                reply = _Reply(200, content, _content_type(path), validators)
        with self._state_lock:
            self.replies.append((path, reply.status))
        return reply


def _content_type(path: str) -> str:
    return "application/json" if path.endswith(".json") else "text/plain"


def _not_modified(headers: Mapping[str, str], etag: str, modified: float) -> bool:
    """RFC 9110 13.1: If-None-Match wins; If-Modified-Since counts only without it."""
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return etag in [tag.strip() for tag in if_none_match.split(",")] or if_none_match == "*"
    since = headers.get("if-modified-since")
    if since is None:
        return False
    try:
        when = email.utils.parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):
        return False
    return int(modified) <= when


class DiscoveryDaemon(VpndProcess):
    """vpnd with its discovery pointed at the lab (discovery_keys is a TOML list)."""

    def __init__(self, *args: Any, keys: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys = keys

    def write_config(self) -> None:
        super().write_config()
        with self.config_file.open("a") as config:
            config.write(f"discovery_keys = {json.dumps(self.keys)}\n")

    @property
    def kept_list(self) -> Path:
        return self.state_dir / "discovery" / "organization_list.json.cache"
