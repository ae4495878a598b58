"""Choosing a display string for the user's language. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# language[_TERRITORY][.codeset][@modifier]; codeset and modifier are ignored.
_LOCALE_RE = re.compile(r"([A-Za-z]{2,8})(?:[_-]([A-Za-z0-9]{2,8}))?(?:\.[^@]*)?(?:@.*)?")


def locale_to_tags(locale: str) -> list[str]:
    """Language tags to try for a POSIX locale or a list like LANGUAGE.

    "nl_NL.UTF-8" -> ["nl-NL", "nl"]; "de_DE:fr" -> ["de-DE", "de", "fr"];
    "" / "C" / "POSIX" -> [].
    """
    tags: list[str] = []
    for entry in locale.split(":"):
        match = _LOCALE_RE.fullmatch(entry.strip())
        if match is None:
            continue
        language, territory = match.group(1).lower(), match.group(2)
        # "C" is a single letter and never matches; "POSIX" would.
        if language == "posix":
            continue
        candidates = [f"{language}-{territory.upper()}", language] if territory else [language]
        for tag in candidates:
            if tag not in tags:
                tags.append(tag)
    return tags


def _primary(tag: str) -> str:
    return tag.split("-", 1)[0].split("_", 1)[0].lower()


def choose(value: str | Mapping[str, str], preferred: Sequence[str]) -> str:
    """The best string for the preferred tags: exact tag (case-insensitive),
    then same primary language, then en / en-US, then the first entry in sorted
    key order. A plain string is returned as is (and an empty map gives "")."""
    if isinstance(value, str):
        return value
    if not value:
        return ""
    # Sorted so that the choice among equally good keys does not depend on
    # the order the server happened to send them in.
    keys = sorted(value)
    by_lower: dict[str, str] = {}
    for key in keys:
        by_lower.setdefault(key.lower().replace("_", "-"), key)
    for tag in preferred:
        exact = by_lower.get(tag.lower().replace("_", "-"))
        if exact is not None:
            return value[exact]
    for tag in preferred:
        primary = _primary(tag)
        for key in keys:
            if _primary(key) == primary:
                return value[key]
    for fallback in ("en", "en-us"):
        english = by_lower.get(fallback)
        if english is not None:
            return value[english]
    for key in keys:
        if _primary(key) == "en":
            return value[key]
    return value[keys[0]]
