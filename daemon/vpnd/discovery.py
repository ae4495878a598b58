"""Signed discovery lists: fetch, verify, keep and search them.

The shell around `protocols.discovery` (signatures, list documents) and
`protocols.search` (the index). What is fetched and when:

* current discovery (`discovery_url`): `server_list.json` when the daemon
  starts and then at most hourly; `organization_list.json` only when someone
  searches for organizations, at most hourly;
* legacy instance discovery (`instance_discovery_url`, used when
  `discovery_url` is ""): `institute_access.json` only when someone searches
  (at most hourly), `secure_internet.json` when someone searches for secure
  internet, at most weekly (spec 002);
* neither: discovery is off, and a search says so (DiscoveryDisabled).

Every fetch is conditional (If-None-Match / If-Modified-Since), so an
unchanged list costs one small round trip; a changed one is fetched with its
signature, verified, checked against the rollback rule and parsed in a worker
thread, then kept under `{state_dir}/discovery/` (one file per list, written
atomically) so that a restart, or a list server that is down, still finds it.
A fetch that fails never blocks a search that has a verified copy to answer
from: the copy is used, and the failure is logged and reported with the
results. A copy on disk is verified again when it is read back, with the
keys configured now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vpnd.config import Settings
from vpnd.errors import NotFound, ServerError, VpndError
from vpnd.http import Response
from vpnd.protocols import discovery as disco
from vpnd.protocols import lang
from vpnd.protocols import search as lookup
from vpnd.protocols.discovery import (
    DiscoveredServer,
    InstanceList,
    ListRejected,
    Organization,
    OrganizationList,
    ServerList,
    UnsignedList,
)
from vpnd.protocols.search import Hit, SearchIndex
from vpnd.store.atomic import ensure_private_dir, write_atomic

log = logging.getLogger("vpnd.discovery")

HOUR = 3600.0
WEEK = 7 * 24 * HOUR

RETRY_AFTER = 300.0
"""Seconds before a list whose fetch failed is tried again while a copy serves."""

REFRESH_WAIT = 3.0
"""Seconds a search waits for a refresh when a verified copy could answer at once."""

FIRST_FETCH_WAIT = 20.0
"""Seconds a search waits for a list there is no copy of (below the 25 s bus timeout)."""

MAX_DOWNLOAD = disco.MAX_LIST_BYTES
"""What the HTTP client for discovery must accept in one reply."""

CACHE_FORMAT = 1
_EVERYTHING = 1_000_000
_MAX_META = 4096


class DiscoveryDisabled(VpndError):
    """Discovery is off: the settings name no list to search."""


class Fetcher(Protocol):
    """What discovery needs of the HTTP client (`vpnd.http.HttpClient`)."""

    async def get(
        self, url: str, *, headers: dict[str, str] | None = None, follow_redirects: bool = False
    ) -> Response: ...


Parsed = ServerList | OrganizationList | InstanceList


@dataclass(frozen=True)
class ListSource:
    """One signed list: its file, its signature's suffix, the kinds of results it
    holds, how long a checked copy counts as fresh, and whether it is fetched
    when the daemon starts (and then again whenever that time is up)."""

    file_name: str
    signature_suffix: str
    kinds: frozenset[str]
    refresh_after: float
    at_start: bool = False


CURRENT_SOURCES = (
    ListSource(
        disco.SERVER_LIST,
        disco.MINISIG_SUFFIX,
        frozenset({lookup.INSTITUTE_ACCESS_KIND, lookup.SECURE_INTERNET_KIND}),
        HOUR,
        at_start=True,
    ),
    ListSource(
        disco.ORGANIZATION_LIST,
        disco.MINISIG_SUFFIX,
        frozenset({lookup.ORGANIZATION_KIND}),
        HOUR,
    ),
)
LEGACY_SOURCES = (
    ListSource(
        disco.INSTITUTE_ACCESS_LIST,
        disco.LEGACY_SIG_SUFFIX,
        frozenset({lookup.INSTITUTE_ACCESS_KIND}),
        HOUR,
    ),
    ListSource(
        disco.SECURE_INTERNET_LIST,
        disco.LEGACY_SIG_SUFFIX,
        frozenset({lookup.SECURE_INTERNET_KIND}),
        WEEK,
    ),
)


@dataclass
class _Copy:
    """A verified list as kept: parsed, indexed, and what conditional requests need."""

    parsed: Parsed
    index: SearchIndex
    body: bytes
    signature: bytes
    etag: str
    last_modified: str
    verified_at: float  # wall clock of the last time the server confirmed it (or sent it)

    @property
    def version(self) -> int:
        return self.parsed.version

    @functools.cached_property
    def by_ident(self) -> dict[str, DiscoveredServer | Organization]:
        """Each entry by what names it: a server's base URL, an organization's org_id."""
        if isinstance(self.parsed, OrganizationList):
            return {org.org_id: org for org in self.parsed.organizations}
        return {server.base_url: server for server in self.parsed.servers}


@dataclass
class _List:
    source: ListSource
    url: str
    copy: _Copy | None = None
    checked_at: float | None = None  # monotonic time of the last attempt
    error: VpndError | None = None  # why the last attempt failed
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class ListStatus:
    """How a list searched stands: its version (None: no copy), when the server last
    confirmed it (Unix time, 0: never), and why the last refresh failed ("" if not)."""

    file_name: str
    version: int | None
    verified_at: float
    error: str
    error_name: str = ""


@dataclass(frozen=True)
class DiscoveryResult:
    """Hits, best first, and the state of each list they were searched in."""

    hits: list[Hit]
    lists: dict[str, ListStatus] = field(default_factory=dict)

    def list_error(self, hit: Hit) -> str:
        """Why the list `hit` comes from could not be refreshed ("" if it was)."""
        for status in self.lists.values():
            if status.error and hit.entry.kind in _KINDS_OF.get(status.file_name, ()):
                return status.error
        return ""


_KINDS_OF = {source.file_name: source.kinds for source in CURRENT_SOURCES + LEGACY_SOURCES}


class Discovery:
    """The discovery lists of this machine: one per daemon, shared by every user."""

    def __init__(
        self,
        settings: Settings,
        http: Fetcher,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._clock = clock
        self._monotonic = monotonic
        self._cache_dir = settings.state_dir / "discovery"
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._read_back_done = asyncio.Event()
        # Called when a list in use changes (read back at start, or a newer one verified).
        self.on_change: Callable[[], None] | None = None
        sources: Sequence[ListSource] = ()
        base = ""
        if settings.discovery_url:
            self.mode = "current"
            base = settings.discovery_url
            sources = CURRENT_SOURCES
            keys = tuple(disco.parse_public_key(key) for key in settings.discovery_keys)
            self._read = self._reader_current(keys)
        elif settings.instance_discovery_url:
            self.mode = "legacy"
            base = settings.instance_discovery_url
            sources = LEGACY_SOURCES
            legacy_key = disco.parse_legacy_key(settings.instance_discovery_key)
            self._read = self._reader_legacy(legacy_key)
        else:
            self.mode = "off"
            self._read = self._reader_off
        self._lists = {s.file_name: _List(s, base + s.file_name) for s in sources}

    @property
    def enabled(self) -> bool:
        """Whether the settings name lists to search."""
        return bool(self._lists)

    @property
    def kinds(self) -> frozenset[str]:
        """The kinds of results the lists in use can give."""
        return frozenset(kind for state in self._lists.values() for kind in state.source.kinds)

    # -- reading a list -----------------------------------------------------

    @staticmethod
    def _reader_current(
        keys: tuple[disco.TrustedKey, ...],
    ) -> Callable[[str, bytes, bytes], Parsed]:
        def read(file_name: str, body: bytes, signature: bytes) -> Parsed:
            disco.verify_minisig(body, signature, keys, file_name)
            if file_name == disco.ORGANIZATION_LIST:
                return disco.parse_organization_list(body)
            return disco.parse_server_list(body)

        return read

    @staticmethod
    def _reader_legacy(key: bytes) -> Callable[[str, bytes, bytes], Parsed]:
        def read(file_name: str, body: bytes, signature: bytes) -> Parsed:
            disco.verify_legacy(body, signature, key, file_name)
            return disco.parse_instance_list(body, file_name)

        return read

    @staticmethod
    def _reader_off(file_name: str, body: bytes, signature: bytes) -> Parsed:
        raise DiscoveryDisabled("discovery is off")

    def _index(self, file_name: str, body: bytes, signature: bytes) -> tuple[Parsed, SearchIndex]:
        """Verify, parse and index a list (in a worker thread: it takes a while)."""
        parsed = self._read(file_name, body, signature)
        if isinstance(parsed, OrganizationList):
            entries = lookup.organization_entries(parsed.organizations)
        else:
            entries = lookup.server_entries(parsed.servers)
        return parsed, SearchIndex(entries)

    # -- the copies on disk --------------------------------------------------

    def _cache_path(self, file_name: str) -> Path:
        return self._cache_dir / (file_name + ".cache")

    def _load(self, state: _List) -> _Copy | None:
        """The kept copy of a list, read back and verified anew; None if there is
        none or it does not pass (runs in a worker thread)."""
        path = self._cache_path(state.source.file_name)
        try:
            with path.open("rb") as kept:
                data = kept.read(_MAX_META + disco.MAX_SIGNATURE_BYTES + disco.MAX_LIST_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the kept copy of %s: %s", state.source.file_name, exc)
            return None
        try:
            head, _sep, rest = data.partition(b"\n")
            meta = json.loads(head)
            if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
                raise ValueError("unknown format")
            if meta.get("url") != state.url:
                log.info(
                    "the kept copy of %s came from another address; it is not used",
                    state.source.file_name,
                )
                return None
            length = int(meta["signature_length"])
            signature, body = rest[:length], rest[length:]
            etag, last_modified = str(meta.get("etag", "")), str(meta.get("last_modified", ""))
            verified_at = float(meta.get("verified_at", 0.0))
        except (ValueError, KeyError, TypeError):
            log.warning("the kept copy of %s is damaged; it is not used", state.source.file_name)
            return None
        try:
            parsed, index = self._index(state.source.file_name, body, signature)
        except VpndError as exc:
            log.warning(
                "the kept copy of %s does not pass verification (%s); it is not used",
                state.source.file_name,
                exc.message,
            )
            return None
        log.info("using the kept copy of %s (version %d)", state.source.file_name, parsed.version)
        return _Copy(parsed, index, body, signature, etag, last_modified, verified_at)

    def _keep(self, state: _List, copy: _Copy) -> None:
        meta = {
            "format": CACHE_FORMAT,
            "url": state.url,
            "etag": copy.etag,
            "last_modified": copy.last_modified,
            "verified_at": copy.verified_at,
            "signature_length": len(copy.signature),
        }
        data = json.dumps(meta).encode() + b"\n" + copy.signature + copy.body
        try:
            ensure_private_dir(self._cache_dir)
            write_atomic(self._cache_path(state.source.file_name), data)
        except OSError as exc:
            # The verified list is in use all the same; only a restart would miss it.
            log.warning("cannot keep a copy of %s: %s", state.source.file_name, exc)

    # -- fetching ------------------------------------------------------------

    async def _fetch(self, state: _List) -> None:
        """One conditional fetch of a list; the copy in use changes only for a
        verified, newer list. Raises what went wrong."""
        source, copy = state.source, state.copy
        headers: dict[str, str] = {}
        if copy is not None:
            if copy.etag:
                headers["If-None-Match"] = copy.etag
            if copy.last_modified:
                headers["If-Modified-Since"] = copy.last_modified
        reply = await self._http.get(state.url, headers=headers, follow_redirects=True)
        if reply.status == 304 and copy is not None:
            copy.verified_at = self._clock()
            log.debug("%s is unchanged (version %d)", source.file_name, copy.version)
            return
        if reply.status != 200:
            raise ServerError(
                f"the discovery server answered {source.file_name} with HTTP status {reply.status}"
            )
        signature_reply = await self._http.get(
            state.url + source.signature_suffix, follow_redirects=True
        )
        if signature_reply.status == 404:
            raise UnsignedList(f"{source.file_name} is published without a signature")
        if signature_reply.status != 200:
            raise ServerError(
                f"the discovery server answered {source.file_name}{source.signature_suffix}"
                f" with HTTP status {signature_reply.status}"
            )
        body, signature = reply.body, signature_reply.body
        parsed, index = await asyncio.to_thread(self._index, source.file_name, body, signature)
        copy = state.copy  # it may have been read back from disk meanwhile
        if copy is not None and not disco.is_newer(parsed.version, copy.version, source.file_name):
            copy.verified_at = self._clock()
            log.debug("%s has the version already in use (%d)", source.file_name, copy.version)
            return
        new = _Copy(
            parsed,
            index,
            body,
            signature,
            reply.headers.get("etag", ""),
            reply.headers.get("last-modified", ""),
            self._clock(),
        )
        await asyncio.to_thread(self._keep, state, new)
        state.copy = new
        self._changed()
        skipped = getattr(parsed, "skipped", 0)
        log.info(
            "verified %s version %d: %d entries%s",
            source.file_name,
            parsed.version,
            len(index),
            f" ({skipped} of unknown server types left out)" if skipped else "",
        )

    async def _refresh(self, state: _List) -> None:
        state.checked_at = self._monotonic()
        try:
            await self._fetch(state)
        except VpndError as exc:
            state.error = exc
            kept = (
                f"the copy of version {state.copy.version} stays in use"
                if state.copy is not None
                else "there is no earlier copy to fall back on"
            )
            (log.warning if isinstance(exc, ListRejected) else log.info)(
                "cannot refresh %s: %s; %s", state.source.file_name, exc.message, kept
            )
        except Exception:
            state.error = ServerError(f"{state.source.file_name} could not be read")
            log.exception("refreshing %s failed", state.source.file_name)
        else:
            state.error = None

    def _wait(self, state: _List) -> float:
        """Seconds between attempts: the list's own interval, shorter after a failure."""
        if state.error is None:
            return state.source.refresh_after
        return min(RETRY_AFTER, state.source.refresh_after)

    def _due(self, state: _List) -> bool:
        if state.checked_at is None:
            return True
        if state.copy is None and state.error is not None:
            # Nothing to show: someone asking is reason enough to try again.
            return True
        return self._monotonic() - state.checked_at >= self._wait(state)

    def _until_due(self, state: _List) -> float:
        """Seconds until the list is due for another attempt."""
        if state.checked_at is None:
            return 0.0
        return max(0.0, state.checked_at + self._wait(state) - self._monotonic())

    def _start_refresh(self, state: _List) -> asyncio.Task[None]:
        if state.task is None or state.task.done():
            state.task = self._spawn(self._refresh(state))
        return state.task

    def _spawn(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Read back the kept copies, then fetch the lists fetched at start and keep
        them fresh; returns at once."""
        if self._lists and self._runner is None:
            self._runner = self._spawn(self._run())

    async def _run(self) -> None:
        try:
            for state in self._lists.values():
                kept = await asyncio.to_thread(self._load, state)
                if kept is not None and state.copy is None:
                    state.copy = kept
                    self._changed()
        finally:
            self._read_back_done.set()
        periodic = [state for state in self._lists.values() if state.source.at_start]
        while periodic:
            for state in periodic:
                if self._due(state):
                    await self._start_refresh(state)
            await asyncio.sleep(min(self._until_due(state) for state in periodic))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def aclose(self) -> None:
        """Stop fetching."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- searching -------------------------------------------------------------

    async def _ready(self, state: _List) -> None:
        """Refresh a list if it is due; wait for the refresh only as long as it is
        worth it: a short while when a copy could answer, longer when none can."""
        if self._due(state):
            self._start_refresh(state)
        task = state.task
        if task is None or task.done():
            return
        await asyncio.wait({task}, timeout=REFRESH_WAIT if state.copy else FIRST_FETCH_WAIT)

    async def search(
        self,
        query: str,
        *,
        kinds: Iterable[str] | None = None,
        limit: int = lookup.DEFAULT_LIMIT,
    ) -> DiscoveryResult:
        """Search the lists holding `kinds` (None: every kind the lists in use hold).

        Raises DiscoveryDisabled when discovery is off; when a list to search
        has no verified copy, the error of the last attempt to fetch one.
        """
        if not self._lists:
            raise DiscoveryDisabled(
                "server discovery is off on this machine: the administrator has set"
                " neither discovery_url nor instance_discovery_url in /etc/vpnd/vpnd.toml"
            )
        wanted = self.kinds if kinds is None else frozenset(kinds) & self.kinds
        states = [state for state in self._lists.values() if state.source.kinds & wanted]
        self.start()
        await self._read_back_done.wait()
        await asyncio.gather(*(self._ready(state) for state in states))
        for state in states:
            # An answer without one of the lists asked for would look complete.
            if state.copy is None:
                if state.error is not None:
                    raise state.error
                raise ServerError(
                    f"{state.source.file_name} is still being fetched; try again in a moment"
                )
        hits = lookup.search(
            [state.copy.index for state in states if state.copy is not None],
            query,
            kinds=wanted,
            limit=limit,
        )
        lists = {
            state.source.file_name: ListStatus(
                file_name=state.source.file_name,
                version=state.copy.version if state.copy is not None else None,
                verified_at=state.copy.verified_at if state.copy is not None else 0.0,
                error=state.error.message if state.error is not None else "",
                error_name=state.error.dbus_name if state.error is not None else "",
            )
            for state in states
        }
        return DiscoveryResult(hits=hits, lists=lists)

    def listed(self, base_url: str, org_id: str = "") -> DiscoveredServer | Organization | None:
        """What the kept lists say of a server (or, with `org_id`, of the
        organization it was added for), without fetching or waiting: None
        when no kept list names it."""
        # Read on every ListServers: a look-up, not a walk through the lists.
        for state in self._lists.values():
            entry = state.copy.by_ident.get(org_id or base_url) if state.copy else None
            if entry is not None and isinstance(entry, Organization) == bool(org_id):
                return entry
        return None

    async def _all(self, kind: str) -> list[DiscoveredServer | Organization]:
        """Every entry of one kind, as the lists hold them."""
        result = await self.search("", kinds=[kind], limit=_EVERYTHING)
        return [hit.entry.source for hit in result.hits if hit.entry.source is not None]

    async def organization(self, org_id: str) -> Organization:
        """The organization `org_id` of the organization list; NotFound if it has none."""
        for entry in await self._all(lookup.ORGANIZATION_KIND):
            if isinstance(entry, Organization) and entry.org_id == org_id:
                return entry
        raise NotFound(f"the organization list has no organization {org_id!r}")

    async def locations(self) -> list[DiscoveredServer]:
        """The secure-internet servers of the server list, in its order."""
        return [
            entry
            for entry in await self._all(lookup.SECURE_INTERNET_KIND)
            if isinstance(entry, DiscoveredServer)
        ]

    async def authentication_template(self, base_url: str) -> str:
        """The `authentication_url_template` the server list gives the server at
        `base_url` ("" when it gives none, or discovery cannot tell)."""
        try:
            servers = await self.locations()
        except VpndError as exc:
            log.info("no login shortcut for %s: %s", base_url, exc.message)
            return ""
        for server in servers:
            if server.base_url == base_url:
                return server.authentication_url_template
        return ""


# -- results as the bus gives them -----------------------------------------------

DISCOVERY_FIELDS = {
    "kind": "s",
    "display_name": "s",
    "base_url": "s",
    "org_id": "s",
    "secure_internet_home": "s",
    "country_code": "s",
    "support_contact": "as",
    "score": "d",
    "match": "s",
    "list_error": "s",
}
"""Each result's fields and their D-Bus signatures (Manager1.Discover)."""


def discovery_records(result: DiscoveryResult, locale: str) -> list[dict[str, object]]:
    """The hits of a search as records with DISCOVERY_FIELDS, display names in the
    language of `locale` (a POSIX locale; "" for English or the list's first)."""
    preferred = lang.locale_to_tags(locale)
    records: list[dict[str, object]] = []
    for hit in result.hits:
        entry, source = hit.entry, hit.entry.source
        organization = source if isinstance(source, Organization) else None
        server = source if isinstance(source, DiscoveredServer) else None
        records.append(
            {
                "kind": entry.kind,
                "display_name": entry.name(preferred),
                "base_url": server.base_url if server is not None else "",
                "org_id": organization.org_id if organization is not None else "",
                "secure_internet_home": (
                    organization.secure_internet_home if organization is not None else ""
                ),
                "country_code": entry.country_code,
                "support_contact": list(server.support_contact) if server is not None else [],
                "score": hit.score,
                "match": hit.match,
                "list_error": result.list_error(hit),
            }
        )
    return records
