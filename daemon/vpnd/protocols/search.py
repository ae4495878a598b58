"""Searching the discovery lists by name and keyword. Pure: no I/O.

Every display name and keyword, in every language, is folded for matching:
NFKD, combining marks stripped, case folded, punctuation made a word break
("Université Paris-Saclay" becomes "universite paris saclay"). A query is
folded the same way, so "universite" finds "Université" and "PARIS saclay"
finds it too.

A hit is ranked by the best way it matches, in this order (through a name
before through a keyword, at each step):

    exact        the whole name is the query (for keywords: one keyword is)
    prefix       the name starts with the query (a keyword does)
    word-prefix  every query word starts a word of the entry, in any order
    substring    the query occurs anywhere in a name or keyword
    fuzzy        every query word starts a word of the entry or, if it has at
                 least FUZZY_MIN_LENGTH characters, is one typo (a letter
                 added, left out or changed, or two neighbours swapped) away
                 from one of its words

and then by name, so equal hits come in a stable, readable order. A step
runs only while the steps before it have found fewer than `limit` hits, so
the costly ones (substring, fuzzy) mostly do not run at all.
benchmarks/discovery_search.py measures building an index and searching it.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from vpnd.protocols import lang
from vpnd.protocols.discovery import (
    SECURE_INTERNET,
    DiscoveredServer,
    Organization,
    Translated,
)

INSTITUTE_ACCESS_KIND = "institute-access"
ORGANIZATION_KIND = "organization"
SECURE_INTERNET_KIND = "secure-internet"
KINDS = (INSTITUTE_ACCESS_KIND, ORGANIZATION_KIND, SECURE_INTERNET_KIND)
"""Every kind of result, in the order results of equal rank are shown."""

MATCHES = ("exact", "prefix", "word-prefix", "substring", "fuzzy")
"""How a hit matched, best first."""

DEFAULT_LIMIT = 50

FUZZY_MIN_LENGTH = 4
"""Query words this long or longer may carry one typo."""

MAX_QUERY_WORDS = 16
"""Words of a query that count; the rest are ignored."""

_NEAR_MEMORY = 256

# ASCII and Latin-1 punctuation and symbols, general and CJK punctuation and
# their full-width forms break words, as whitespace does. Everything else
# (letters and digits of any script, spacing marks) belongs to a word.
_BREAKS = re.compile(
    r"[!-/:-@\[-`{-~\u00a0-\u00bf\u2000-\u206f\u2e00-\u2e7f"
    r"\u3000-\u303f\ufe30-\ufe4f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65]+"
)
_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")
# Separates texts folded together; never part of a (cleaned) text, and not a break.
_SEPARATOR = "\x00"
_LAST_CHAR = "\U0010ffff"


@functools.cache
def _combining_marks() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Patterns of the combining characters (unicodedata.combining) in and
    beyond the Basic Multilingual Plane, made at first use."""
    found: list[list[tuple[int, int]]] = [[], []]
    # Combining classes are assigned in planes 0 and 1 only.
    for code in range(0x20000):
        if unicodedata.combining(chr(code)):
            ranges = found[code > 0xFFFF]
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))

    def pattern(ranges: list[tuple[int, int]]) -> re.Pattern[str]:
        # Literal characters: a class of them is matched much faster than one of \U escapes.
        return re.compile(
            "["
            + "".join(
                re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
                for first, last in ranges
            )
            + "]+"
        )

    return pattern(found[0]), pattern(found[1])


def fold(text: str) -> str:
    """`text` for matching: NFKD, case folded, combining marks stripped."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", text).casefold()
    basic, beyond = _combining_marks()
    text = basic.sub("", text)
    if _BEYOND_BMP.search(text):
        text = beyond.sub("", text)
    return text


def words(text: str) -> list[str]:
    """The words of a text, folded."""
    return _BREAKS.sub(" ", fold(text)).split()


def normalize(text: str) -> str:
    """`text` folded, its words joined by single spaces."""
    return " ".join(words(text))


def _normalize_all(texts: Sequence[str]) -> list[str]:
    """normalize() of each text, done on many at once (much faster)."""
    result = [""] * len(texts)
    ascii_texts: list[int] = []
    other_texts: list[int] = []
    for n, text in enumerate(texts):
        (ascii_texts if text.isascii() else other_texts).append(n)
    for group in (ascii_texts, other_texts):
        if group:
            joined = _SEPARATOR.join([texts[n] for n in group])
            folded = _BREAKS.sub(" ", fold(joined)).split(_SEPARATOR)
            for n, text in zip(group, folded, strict=True):
                result[n] = " ".join(text.split())
    return result


def _texts(value: Translated) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return list(value.values())


def _primary(value: Translated) -> str:
    """The text names are sorted by: the English one, else the first language's."""
    if isinstance(value, str):
        return value
    if not value:
        return ""
    english = value.get("en")
    if english is not None:
        return english
    return value[min(value, key=lambda tag: (not tag.lower().startswith("en"), tag))]


@functools.lru_cache(maxsize=4096)
def _script(letter: str) -> str:
    """The script a letter belongs to, as the first word of its Unicode name
    ("LATIN", "GREEK", "CJK", …; "DIGIT" for digits)."""
    if letter.isdigit():
        return "DIGIT"
    return unicodedata.name(letter, "").split(" ", 1)[0]


def within_one_edit(a: str, b: str) -> bool:
    """Whether a and b differ by at most one letter added, left out or changed, or
    one swap of neighbours."""
    if a == b:
        return True
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]


def one_edit_variants(word: str, alphabet: Iterable[str]) -> set[str]:
    """Every string one edit away from `word` with letters from `alphabet`."""
    letters = list(set(alphabet))
    variants = {word[:i] + word[i + 1 :] for i in range(len(word))}
    variants.update(
        [word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(len(word) - 1)]
    )
    for i in range(len(word) + 1):
        head, tail = word[:i], word[i:]
        # Lists, not generators: these run for every letter at every position.
        variants.update([head + letter + tail for letter in letters])
        if tail:
            rest = tail[1:]
            variants.update([head + letter + rest for letter in letters])
    variants.discard(word)
    return variants


# --- entries and hits ------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One searchable thing: a server of the server list or an organization.

    `ident` is what a client adds it by: the base URL of a server, the org_id
    of an organization."""

    kind: str
    ident: str
    display_name: Translated
    keyword_list: Translated = ""
    country_code: str = ""
    source: DiscoveredServer | Organization | None = field(default=None, compare=False)

    def name(self, preferred: Sequence[str]) -> str:
        """The display name in the best of the preferred languages (the country
        code for a secure-internet server without a name)."""
        return lang.choose(self.display_name, preferred) or self.country_code or self.ident


def server_entries(servers: Iterable[DiscoveredServer]) -> list[Entry]:
    """The entries of a server list (or of a legacy instance list)."""
    return [
        Entry(
            kind=SECURE_INTERNET_KIND
            if server.server_type == SECURE_INTERNET
            else INSTITUTE_ACCESS_KIND,
            ident=server.base_url,
            display_name=server.display_name,
            keyword_list=server.keyword_list,
            country_code=server.country_code,
            source=server,
        )
        for server in servers
    ]


def organization_entries(organizations: Iterable[Organization]) -> list[Entry]:
    """The entries of an organization list."""
    return [
        Entry(
            kind=ORGANIZATION_KIND,
            ident=org.org_id,
            display_name=org.display_name,
            keyword_list=org.keyword_list,
            source=org,
        )
        for org in organizations
    ]


class Hit(NamedTuple):
    """A search result: the entry, how it matched (one of MATCHES; "" when an
    empty query lists everything), whether through a keyword, a score (1.0 for
    an exact name down to 0.1 for a fuzzy keyword; 0.0 when listed), and the
    rank hits of several indexes are sorted by. (A tuple: searches make many.)"""

    entry: Entry
    match: str
    in_keywords: bool
    score: float
    rank: tuple[int, str, int, str]


_TIERS = tuple((match, in_keywords) for match in MATCHES for in_keywords in (False, True))
_KIND_ORDER = {kind: n for n, kind in enumerate(KINDS)}


class _Words:
    """Words (or texts), each with the entries holding it, sorted for look-ups.

    The distinct words are sorted once; the entries are kept as one list
    ordered by word, so the entries of a word, or of every word with a
    prefix, are one slice. Built by C-level sorting and mapping (of word
    numbers, not strings), so that thousands of entries index fast.
    """

    def __init__(self, words: list[str], ids: list[int]) -> None:
        self.sorted = sorted(set(words))
        number = {word: n for n, word in enumerate(self.sorted)}
        codes = list(map(number.__getitem__, words))
        order = sorted(range(len(codes)), key=codes.__getitem__)
        # The word number of each place, and the entry there.
        self._codes = list(map(codes.__getitem__, order))
        self._ids = list(map(ids.__getitem__, order))

    def _entries(self, first: int, last: int) -> set[int]:
        """Entries holding a word numbered first to last - 1."""
        start = bisect.bisect_left(self._codes, first)
        return set(self._ids[start : bisect.bisect_left(self._codes, last, start)])

    def holding(self, word: str) -> set[int]:
        """Entries holding `word`."""
        n = bisect.bisect_left(self.sorted, word)
        if n == len(self.sorted) or self.sorted[n] != word:
            return set()
        return self._entries(n, n + 1)

    def _range(self, prefix: str) -> tuple[int, int]:
        first = bisect.bisect_left(self.sorted, prefix)
        return first, bisect.bisect_left(self.sorted, prefix + _LAST_CHAR, first)

    def starting_with(self, prefix: str) -> set[int]:
        """Entries holding a word that starts with `prefix`."""
        return self._entries(*self._range(prefix))

    def count_starting_with(self, prefix: str) -> int:
        """How many distinct words start with `prefix`."""
        first, last = self._range(prefix)
        return last - first

    @functools.cached_property
    def vocabulary(self) -> frozenset[str]:
        """Every distinct word."""
        return frozenset(self.sorted)

    @functools.cached_property
    def _joined(self) -> tuple[list[int], str]:
        """Every distinct word one after the other, for substring search (made at first use)."""
        return _blob(self.sorted)

    def containing(self, text: str) -> set[int]:
        """Entries holding a word that contains `text`."""
        found: set[int] = set()
        starts, blob = self._joined
        pos = blob.find(text)
        while pos != -1:
            k = bisect.bisect_right(starts, pos) - 1
            found |= self._entries(k, k + 1)
            # On to the next word: this one has given its entries.
            pos = blob.find(text, starts[k + 1]) if k + 1 < len(starts) else -1
        return found


def _blob(parts: Sequence[str]) -> tuple[list[int], str]:
    """The parts joined by "\t" (in no folded text), and where each starts."""
    starts = list(itertools.accumulate((len(part) + 1 for part in parts), initial=0))
    return starts[:-1], "\t".join(parts)


def _owners(places: list[list[int]]) -> list[int]:
    """Entry n once for each of its text positions."""
    return list(
        itertools.chain.from_iterable(map(itertools.repeat, itertools.count(), map(len, places)))
    )


def _text_pairs(places: list[list[int]], normalized: list[str]) -> tuple[list[str], list[int]]:
    """Each entry's texts, flat, and the entry each belongs to."""
    flat = list(itertools.chain.from_iterable(places))
    return list(map(normalized.__getitem__, flat)), _owners(places)


def _word_pairs(
    places: list[list[int]], split: list[list[str]], extra: Sequence[str] = ()
) -> tuple[list[str], list[int]]:
    """The words of each entry's texts, flat, and the entry each belongs to; `extra[n]`,
    when not "", is one more word of entry n."""
    pieces = list(map(split.__getitem__, itertools.chain.from_iterable(places)))
    words = list(itertools.chain.from_iterable(pieces))
    ids = list(
        itertools.chain.from_iterable(map(itertools.repeat, _owners(places), map(len, pieces)))
    )
    for n, word in enumerate(extra):
        if word:
            words.append(word)
            ids.append(n)
    return words, ids


class SearchIndex:
    """The folded names and keywords of one list's entries, ready to search."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        given = list(entries)
        # Every distinct text once (languages repeat one another), normalized at once.
        positions: dict[str, int] = {}
        primaries: list[int] = []
        given_names: list[list[int]] = []
        given_keywords: list[list[int]] = []
        for entry in given:
            fallback = entry.country_code or entry.ident
            primary = _primary(entry.display_name) or fallback
            primaries.append(positions.setdefault(primary, len(positions)))
            names = _texts(entry.display_name) or [fallback]
            given_names.append([positions.setdefault(t, len(positions)) for t in names])
            given_keywords.append(
                [positions.setdefault(t, len(positions)) for t in _texts(entry.keyword_list)]
            )
        normalized = _normalize_all(list(positions))
        # Entries are numbered in the order equal hits are shown.
        order = sorted(
            range(len(given)),
            key=lambda i: (
                normalized[primaries[i]],
                _KIND_ORDER.get(given[i].kind, 9),
                given[i].ident,
            ),
        )
        self._entries = [given[i] for i in order]
        self._kinds = [entry.kind for entry in self._entries]
        self._all_kinds = frozenset(self._kinds)
        self._sort_names = [normalized[primaries[i]] for i in order]
        self._name_places = [given_names[i] for i in order]
        self._keyword_places = [given_keywords[i] for i in order]
        self._normalized = normalized
        self._split = [text.split() for text in normalized]
        self._countries = [entry.country_code.lower() for entry in self._entries]
        self._texts = _Words(*_text_pairs(self._name_places, normalized))
        self._names = _Words(*_word_pairs(self._name_places, self._split))
        self._keywords = _Words(*_word_pairs(self._keyword_places, self._split, self._countries))
        # The words one typo away from recent query words, and the letters of
        # the index by the scripts they were asked for.
        self._near: dict[str, frozenset[str]] = {}
        self._letters: dict[frozenset[str], list[str]] = {}

    @functools.cached_property
    def _name_blob(self) -> tuple[list[int], str]:
        """Each entry's names one after the other, for substring search (made at first use)."""
        normalized = self._normalized
        return _blob(["\n".join(map(normalized.__getitem__, p)) for p in self._name_places])

    @functools.cached_property
    def _vocabulary(self) -> frozenset[str]:
        """Every word of the names and keywords (made at first use)."""
        return self._names.vocabulary | self._keywords.vocabulary

    @functools.cached_property
    def _alphabet(self) -> frozenset[str]:
        """The letters of the index's words, for the variants of a typo (made at first use)."""
        return frozenset("".join(self._vocabulary))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries, in name order."""
        return self._entries

    # -- the steps --------------------------------------------------------------

    def _word_pools(self, in_keywords: bool) -> list[_Words]:
        return [self._names, self._keywords] if in_keywords else [self._names]

    def _every_word(self, query_words: list[str], in_keywords: bool) -> set[int]:
        """Entries where each query word starts one of their words."""
        pools = self._word_pools(in_keywords)
        ordered = self._rarest_first(query_words, pools)
        found: set[int] = set()
        for pool in pools:
            found |= pool.starting_with(ordered[0])
        for word in ordered[1:]:
            if not found:
                break
            if len(found) <= 64:
                # Few left: look at their words rather than at the vocabulary.
                found = {n for n in found if self._holds_word_starting(n, word, in_keywords)}
                continue
            matched: set[int] = set()
            for pool in pools:
                matched |= pool.starting_with(word)
            found &= matched
        return found

    @staticmethod
    def _rarest_first(query_words: list[str], pools: list[_Words]) -> list[str]:
        """The query words, those that start the fewest words first (so that the
        entries left to look at shrink fast); words that start none (a typo, for
        the fuzzy step) last."""
        counts = {
            word: sum(pool.count_starting_with(word) for pool in pools) for word in query_words
        }
        return sorted(query_words, key=lambda word: (counts[word] == 0, counts[word]))

    def _holds_word_starting(self, n: int, prefix: str, in_keywords: bool) -> bool:
        places = self._name_places[n] + (self._keyword_places[n] if in_keywords else [])
        if any(word.startswith(prefix) for p in places for word in self._split[p]):
            return True
        country = self._countries[n]
        return in_keywords and bool(country) and country.startswith(prefix)

    def _name_substring(self, query: str) -> set[int]:
        found: set[int] = set()
        starts, blob = self._name_blob
        pos = blob.find(query)
        while pos != -1:
            n = bisect.bisect_right(starts, pos) - 1
            found.add(n)
            # On to the next entry: this one is found.
            pos = blob.find(query, starts[n + 1]) if n + 1 < len(starts) else -1
        return found

    def _near_words(self, word: str) -> frozenset[str]:
        """Words of the index one typo away from `word`."""
        near = self._near.get(word)
        if near is None:
            # Letters of the scripts the word is written in (and digits): a
            # typo stays in its script, and the variants stay few.
            scripts = frozenset({_script(letter) for letter in word} | {"DIGIT"})
            alphabet = self._letters.get(scripts)
            if alphabet is None:
                alphabet = [letter for letter in self._alphabet if _script(letter) in scripts]
                self._letters[scripts] = alphabet
            near = frozenset(one_edit_variants(word, alphabet) & self._vocabulary)
            if len(self._near) >= _NEAR_MEMORY:
                self._near.clear()
            self._near[word] = near
        return near

    def _fuzzy(self, query_words: list[str], in_keywords: bool) -> set[int]:
        pools = self._word_pools(in_keywords)
        found: set[int] | None = None
        for word in self._rarest_first(query_words, pools):
            if found is not None and len(found) <= 64:
                # Few left: look at their words rather than at the vocabulary.
                found = {n for n in found if self._holds_near_word(n, word, in_keywords)}
            else:
                matched: set[int] = set()
                for pool in pools:
                    matched |= pool.starting_with(word)
                if len(word) >= FUZZY_MIN_LENGTH:
                    for near in self._near_words(word):
                        for pool in pools:
                            matched |= pool.holding(near)
                found = matched if found is None else found & matched
            if not found:
                return set()
        return found or set()

    def _holds_near_word(self, n: int, word: str, in_keywords: bool) -> bool:
        """Whether entry n has a word starting with `word`, or one typo away from it."""
        places = self._name_places[n] + (self._keyword_places[n] if in_keywords else [])
        candidates = [known for p in places for known in self._split[p]]
        if in_keywords and self._countries[n]:
            candidates.append(self._countries[n])
        fuzzy = len(word) >= FUZZY_MIN_LENGTH
        return any(
            known.startswith(word) or (fuzzy and within_one_edit(word, known))
            for known in candidates
        )

    def _step(self, match: str, in_keywords: bool, query_words: list[str]) -> set[int]:
        query = " ".join(query_words)
        single = len(query_words) == 1
        if match == "exact":
            if in_keywords:
                return self._keywords.holding(query) if single else set()
            return self._texts.holding(query)
        if match == "prefix":
            if in_keywords:
                return self._keywords.starting_with(query) if single else set()
            return self._texts.starting_with(query)
        if match == "word-prefix":
            return self._every_word(query_words, in_keywords)
        if match == "substring":
            return self._keywords.containing(query) if in_keywords else self._name_substring(query)
        return self._fuzzy(query_words, in_keywords)

    # -- searching --------------------------------------------------------------

    def search(
        self, query: str, *, kinds: Iterable[str] | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[Hit]:
        """The best `limit` hits for `query` (0: all), among entries of `kinds`
        (None: every kind). An empty query lists every entry, in name order."""
        wanted = self._all_kinds if kinds is None else frozenset(kinds)
        every_kind = self._all_kinds <= wanted
        query_words = words(query)[:MAX_QUERY_WORDS]
        limit = limit if limit > 0 else len(self._entries)
        hits: list[Hit] = []
        if not query_words:
            for n, kind in enumerate(self._kinds):
                if len(hits) >= limit:
                    break
                if every_kind or kind in wanted:
                    hits.append(self._hit(n, "", False, 0.0, len(_TIERS)))
            return hits
        seen: set[int] = set()
        for tier, (match, in_keywords) in enumerate(_TIERS):
            found = self._step(match, in_keywords, query_words)
            found -= seen
            if not found:
                continue
            seen |= found
            chosen = found if every_kind else {n for n in found if self._kinds[n] in wanted}
            room = limit - len(hits)
            best = sorted(chosen)[:room]
            score = round(1.0 - tier / 10, 1)
            hits.extend(self._hit(n, match, in_keywords, score, tier) for n in best)
            if len(hits) >= limit:
                break
        return hits

    def _hit(self, n: int, match: str, in_keywords: bool, score: float, tier: int) -> Hit:
        entry = self._entries[n]
        return Hit(
            entry=entry,
            match=match,
            in_keywords=in_keywords,
            score=score,
            rank=(tier, self._sort_names[n], _KIND_ORDER.get(entry.kind, 9), entry.ident),
        )


def search(
    indexes: Iterable[SearchIndex],
    query: str,
    *,
    kinds: Iterable[str] | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[Hit]:
    """The best `limit` hits (0: all) of several indexes, ranked together."""
    wanted = None if kinds is None else frozenset(kinds)
    hits = [hit for index in indexes for hit in index.search(query, kinds=wanted, limit=limit)]
    hits.sort(key=lambda hit: hit.rank)
    return hits[:limit] if limit > 0 else hits
