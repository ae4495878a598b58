"""Who may do what: ownership first, then polkit.

Every server, its tokens, its connections and its pending login belong to
one UID. The rules (`needed_actions`):

* root may do anything, without asking polkit;
* a user may read their own objects, and change them with the polkit action
  for the change (`org.vpnd.connect`, `org.vpnd.manage-own-servers`);
* objects owned by root are the system-wide servers: a user who is not root
  needs `org.vpnd.manage-system-servers` for anything on them, to read them too
  (plus `org.vpnd.connect` to connect or disconnect);
* another user's objects: never (org.vpnd.Error.NotAuthorized).

polkit is asked about the calling bus connection; when it cannot be asked,
the answer is no.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from vpnd.bus import polkit
from vpnd.bus.caller import RENEWED, ROOT_UID, SYSTEM_OWNER, Call, Callers
from vpnd.errors import NotAuthorized

NOT_YOURS = "that belongs to another user"

# How long polkit's answer about a read is kept for a bus connection. A
# reader polling the active connection (an applet, or a flood of them)
# then costs polkit one question a second instead of one per call; a
# changed authorization shows in reads a second late at most.
READ_MEMORY = 1.0
_READ_MEMORY_SIZE = 4096


class Authority(Protocol):
    """What the gate needs of polkit (`polkit.Authority`)."""

    async def check(self, sender: str, action: str, *, interactive: bool) -> polkit.Decision: ...


def needed_actions(uid: int, owner: int, action: str | None) -> tuple[str, ...]:
    """The polkit actions `uid` needs to do `action` (None: read) on an object of `owner`.

    Raises NotAuthorized when no polkit answer could allow it.
    """
    if uid == ROOT_UID:
        return ()
    if owner == uid:
        return (action,) if action is not None else ()
    if owner == SYSTEM_OWNER:
        extra = (polkit.CONNECT,) if action == polkit.CONNECT else ()
        return (polkit.MANAGE_SYSTEM_SERVERS, *extra)
    raise NotAuthorized(NOT_YOURS)


def may_see(uid: int, owner: int) -> bool:
    """Whether `uid` may learn that an object of `owner` exists without asking polkit."""
    return uid in (ROOT_UID, owner)


class Gate:
    """Decides each call: ownership, then polkit for what the rules ask."""

    def __init__(
        self,
        callers: Callers,
        authority: Authority,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._callers = callers
        self._authority = authority
        self._clock = clock
        # (sender, bus generation, actions) -> (until, allowed)
        self._reads: OrderedDict[tuple[str, int, tuple[str, ...]], tuple[float, bool]] = (
            OrderedDict()
        )

    async def require(self, call: Call, owner: int, action: str | None = None) -> None:
        """Return if `call` may do `action` (None: read) on an object of `owner`; else raise."""
        for needed in needed_actions(call.uid, owner, action):
            await self._ask(call, needed, interactive=call.interactive)
        call.checked = True

    async def may_read(self, call: Call, owner: int) -> bool:
        """Whether `call` may read an object of `owner`, never prompting anyone.

        For what a caller did not ask about by name (the active connection), so
        polkit must not pop up a password dialog for it.
        """
        try:
            needed = needed_actions(call.uid, owner, None)
        except NotAuthorized:
            return False
        if not needed:
            return True
        key = (call.sender, call.generation, needed)
        now = self._clock()
        kept = self._reads.get(key)
        if kept is not None and now < kept[0]:
            return kept[1]
        try:
            for action in needed:
                await self._ask(call, action, interactive=False)
        except NotAuthorized:
            allowed = False
        else:
            allowed = True
        self._reads[key] = (now + READ_MEMORY, allowed)
        self._reads.move_to_end(key)
        while len(self._reads) > _READ_MEMORY_SIZE:
            self._reads.popitem(last=False)
        return allowed

    async def _ask(self, call: Call, action: str, *, interactive: bool) -> None:
        if not self._callers.current(call):
            # polkit would be asked about the name on the new connection,
            # which may belong to another process.
            raise NotAuthorized(RENEWED)
        try:
            decision = await self._authority.check(call.sender, action, interactive=interactive)
        except polkit.PolkitUnavailable as exc:
            raise polkit.unavailable(action, str(exc)) from None
        if not decision.authorized:
            raise polkit.refusal(action, decision, interactive=interactive)
        if action == polkit.MANAGE_SYSTEM_SERVERS:
            self._callers.mark_admin(call.sender)
