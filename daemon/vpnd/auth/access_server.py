"""Signing in to an OpenVPN Access Server: a user name and password, and the profile they buy.

The REST API hands out a profile in return for HTTP Basic credentials
(`GetUserlogin` or `GetAutologin`). Signing in is that download: the profile
is kept sealed in the server's vault, which is what "authorized" means for
such a server, and the provider connects from it. The password is kept only
when the user asks. A CRV1 challenge during the download is kept here, per
server, until the user's answer comes; its state id never leaves the daemon.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from vpnd.errors import AuthorizationRequired, InvalidArgument, ServerError
from vpnd.http import HttpClient
from vpnd.protocols import access_server as rest
from vpnd.protocols.eduvpn import Endpoints
from vpnd.providers.base import PendingAuthorization, Vault
from vpnd.store.store import SecretStore, ServerRecord, ServerSecrets, host_of

log = logging.getLogger("vpnd.auth")

T = TypeVar("T")

PROFILE = "profile"  # the vault record: {"kind": "autologin"|"userlogin", "text": profile}
# {"username", "password"}: the password is kept only on request, else "".
CREDENTIALS = "credentials"

_MACHINE_ID = Path("/etc/machine-id")
# Questions waiting for an answer, at most: the oldest is dropped (its login
# starts over), so abandoned sign-ins cannot grow the daemon.
_MAX_WAITING = 256
# A userlogin profile asks openvpn for the user name and password.
_ASKS_PASSWORD = re.compile(r"^[ \t]*auth-user-pass\b", re.M)


def device_id(machine_id_file: Path = _MACHINE_ID) -> str:
    """A stable id for this machine that does not give its machine-id away."""
    try:
        machine = machine_id_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine = ""
    digest = hashlib.sha256(b"vpnd access server device\0" + machine.encode()).hexdigest()
    return f"vpnd-{digest[:32]}"


class AccessServerLogin:
    """Basic credentials, used once to download the profile, and a challenge if the server asks."""

    def __init__(self, http: HttpClient, secrets: SecretStore, device: str | None = None) -> None:
        self._http = http
        self._secrets = secrets
        self._device = device if device is not None else device_id()
        # server id -> (profile kind, the challenge waiting for its answer,
        # the credentials to keep once it is answered: the password only if
        # the user asked)
        self._challenges: dict[
            str, tuple[rest.ProfileKind, rest.DynamicChallenge, rest.Credentials]
        ] = {}

    def _vault(self, record: ServerRecord) -> Vault:
        return ServerSecrets(self._secrets, record.owner, record.server_id)

    def authorized(self, record: ServerRecord) -> bool:
        """Whether a profile was downloaded for the server."""
        return self._secrets.has(record.owner, record.server_id, PROFILE)

    def forget(self, record: ServerRecord) -> None:
        """Drop the downloaded profile and what was kept to sign in."""
        self._challenges.pop(record.server_id, None)
        vault = self._vault(record)
        vault.delete(PROFILE)
        vault.delete(CREDENTIALS)

    async def begin(
        self, record: ServerRecord, endpoints: Endpoints, caller: int
    ) -> PendingAuthorization:
        """Access Server logins take a user name and password, not a browser."""
        raise InvalidArgument(
            f"{host_of(record)} is an OpenVPN Access Server: sign in to it with a user name"
            " and password"
        )

    async def sign_in(
        self, record: ServerRecord, endpoints: Endpoints, fields: Mapping[str, str]
    ) -> dict[str, Any]:
        """Download the profile with the credentials in `fields`, or answer the pending challenge.

        Fields: username, password, profile ("userlogin", the default, or
        "autologin"), remember ("yes" keeps the password); or response, the
        answer to the challenge the previous call returned. Returns {} once the
        profile is kept, or the server's question: {"challenge": text,
        "echo": bool, "response_required": bool}.
        """
        if "token_url" in fields:
            return await self._import_by_token(record, fields["token_url"])
        if "response" in fields:
            pending = self._challenges.pop(record.server_id, None)
            if pending is None:
                raise InvalidArgument("there is no question from the server to answer; sign in")
            kind, challenge, keep = pending
            credentials = challenge.answer(fields["response"])
        else:
            kind = _profile_kind(fields.get("profile", "userlogin"))
            credentials = rest.Credentials(fields.get("username", ""), fields.get("password", ""))
            remember = fields.get("remember", "no") == "yes"
            # The user name is kept in any case: a userlogin profile's
            # tunnel then asks for the password alone.
            keep = credentials if remember else rest.Credentials(credentials.username, "")
        request = rest.profile_request(
            record.url, kind, device_id=self._device, credentials=credentials
        )
        reply = await self._http.get(request.url, headers=request.headers)
        try:
            text = rest.parse_profile_reply(
                reply.status, reply.headers.get("content-type"), reply.body
            )
        except rest.ChallengeRequired as exc:
            self._challenges.pop(record.server_id, None)
            self._challenges[record.server_id] = (kind, exc.challenge, keep)
            while len(self._challenges) > _MAX_WAITING:
                del self._challenges[next(iter(self._challenges))]
            log.info("%s asks a question before it hands out the profile", host_of(record))
            return {
                "challenge": exc.challenge.text,
                "echo": exc.challenge.echo,
                "response_required": exc.challenge.response_required,
            }
        vault = self._vault(record)
        vault.set(PROFILE, {"kind": kind, "text": text})
        vault.set(CREDENTIALS, {"username": keep.username, "password": keep.password})
        log.info("downloaded the %s profile of %s", kind, host_of(record))
        return {}

    async def _import_by_token(self, record: ServerRecord, link: str) -> dict[str, Any]:
        """Download the profile a token link of the server's web login names.

        Such a profile comes without a user name: a userlogin one asks for
        both when connecting."""
        url = rest.token_profile_url(record.url, link)
        reply = await self._http.get(url)
        try:
            text = rest.parse_profile_reply(
                reply.status, reply.headers.get("content-type"), reply.body
            )
        except rest.ChallengeRequired:
            raise ServerError("the server asked a question for a profile link") from None
        kind: rest.ProfileKind = "userlogin" if _ASKS_PASSWORD.search(text) else "autologin"
        vault = self._vault(record)
        vault.set(PROFILE, {"kind": kind, "text": text})
        vault.delete(CREDENTIALS)
        log.info("imported the %s profile of %s from a profile link", kind, host_of(record))
        return {}

    async def call(
        self,
        record: ServerRecord,
        endpoints: Endpoints,
        api_call: Callable[[str], Awaitable[T]],
    ) -> T:
        """The profile is the credential: without one, the user must sign in."""
        if not self.authorized(record):
            raise AuthorizationRequired(
                f"vpnd has no profile of {host_of(record)}; sign in to it first"
            )
        return await api_call("")


def _profile_kind(value: str) -> rest.ProfileKind:
    if value == "autologin":
        return "autologin"
    if value == "userlogin":
        return "userlogin"
    raise InvalidArgument('a profile kind is "userlogin" or "autologin"')
