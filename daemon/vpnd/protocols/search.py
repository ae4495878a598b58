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
import operator
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from vpnd.protocols import lang
from vpnd.protocols.discovery import (
    SECURE_INTERNET,
    DiscoveredServer,
    Organization,
    Translated,
)

_ORG_ID = operator.attrgetter("org_id")
_DISPLAY_NAME = operator.attrgetter("display_name")
_KEYWORD_LIST = operator.attrgetter("keyword_list")

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
# their full-width forms break words, as whitespace does; so does "\x01", which
# separates an entry's texts where the index joins them. Everything else
# (letters and digits of any script, spacing marks) belongs to a word.
_BREAK_CLASS = (
    r"\x01!-/:-@\[-`{-~\u00a0-\u00bf\u2000-\u206f\u2e00-\u2e7f"
    r"\u3000-\u303f\ufe30-\ufe4f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
)


def _run_of(character_class: str) -> re.Pattern[str]:
    """A pattern of one or more characters of a class, written "[…][…]*" rather
    than "[…]+": a pattern that starts with the class lets the regex engine skip
    to the next such character instead of trying a match at every one (two to
    three times faster over text where they are few)."""
    return re.compile(f"{character_class}{character_class}*")


_BREAKS = _run_of(f"[{_BREAK_CLASS}]")
_BREAKS_AND_SPACES = _run_of(rf"[{_BREAK_CLASS}\s]")
# The same for ASCII text, bytewise: breaks and whitespace become spaces.
_ASCII_SPACED = bytes(c for c in range(128) if _BREAKS_AND_SPACES.fullmatch(chr(c)))
_ASCII_BREAKS = bytes.maketrans(_ASCII_SPACED, b" " * len(_ASCII_SPACED))
# Separates texts folded together; never part of a (cleaned) text, and not a break.
_SEPARATOR = "\x00"
# Separates an entry's texts in the one text the index keeps of them; a break.
_MARK = "\x01"
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
        return _run_of(
            "["
            + "".join(
                re.escape(chr(first)) + ("" if first == last else "-" + re.escape(chr(last)))
                for first, last in ranges
            )
            + "]"
        )

    return pattern(found[0]), pattern(found[1])


def fold(text: str) -> str:
    """`text` for matching: NFKD, case folded, combining marks stripped."""
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize("NFKD", text).casefold()
    basic, beyond = _combining_marks()
    text = basic.sub("", text)
    # Only a text with characters beyond the Basic Multilingual Plane takes
    # more than two bytes a character in UTF-16.
    if len(text.encode("utf-16-le", "surrogatepass")) > 2 * len(text):
        text = beyond.sub("", text)
    return text


def words(text: str) -> list[str]:
    """The words of a text, folded."""
    return _BREAKS.sub(" ", fold(text)).split()


def normalize(text: str) -> str:
    """`text` folded, its words joined by single spaces."""
    return " ".join(words(text))


def _normalize_all(texts: Sequence[str]) -> list[str]:
    """normalize() of each text, done on many at once (much faster): the texts are
    joined, folded and broken into words in a few passes over the whole, with no
    step taken per text in Python."""
    result = [""] * len(texts)
    flags = list(map(str.isascii, texts))
    for ascii_group in (True, False):
        group = list(itertools.compress(itertools.count(), map(ascii_group.__eq__, flags)))
        if not group:
            continue
        joined = _SEPARATOR.join(map(texts.__getitem__, group))
        if joined.count(_SEPARATOR) != len(group) - 1:
            # A text holds the separator (never one of a list): one at a time.
            for n in group:
                result[n] = normalize(texts[n])
            continue
        if ascii_group:
            # ASCII stays ASCII when folded: lower case, and breaks made spaces bytewise.
            spaced = joined.lower().encode("ascii").translate(_ASCII_BREAKS).decode("ascii")
            while "  " in spaced:
                spaced = spaced.replace("  ", " ")
        else:
            spaced = _BREAKS.sub(" ", fold(joined))
            # What whitespace other than the space is left is not printable; the
            # common case, none, is seen in one quick pass rather than a regex.
            if spaced.replace(_SEPARATOR, "").isprintable():
                while "  " in spaced:
                    spaced = spaced.replace("  ", " ")
            else:
                spaced = _BREAKS_AND_SPACES.sub(" ", spaced)
        for n, text in zip(group, map(str.strip, spaced.split(_SEPARATOR)), strict=True):
            result[n] = text
    return result


def _texts(value: Translated) -> list[str]:
    if isinstance(value, str):
        return [value] if value else []
    return list(value.values())


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


# --- entries and hits ------------------------------------------------------------


class Entry(NamedTuple):
    """One searchable thing: a server of the server list or an organization.

    `ident` is what a client adds it by: the base URL of a server, the org_id
    of an organization. (A tuple: a list makes thousands in one go; `source`
    plays no part in comparisons.)"""

    kind: str
    ident: str
    display_name: Translated
    keyword_list: Translated = ""
    country_code: str = ""
    source: DiscoveredServer | Organization | None = None

    def name(self, preferred: Sequence[str]) -> str:
        """The display name in the best of the preferred languages (the country
        code for a secure-internet server without a name)."""
        return lang.choose(self.display_name, preferred) or self.country_code or self.ident

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self[:5] == other[:5]

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self[:5] != other[:5]

    def __hash__(self) -> int:
        return hash(self[:5])


def server_entries(servers: Iterable[DiscoveredServer]) -> list[Entry]:
    """The entries of a server list (or of a legacy instance list)."""
    return [
        Entry(
            SECURE_INTERNET_KIND
            if server.server_type == SECURE_INTERNET
            else INSTITUTE_ACCESS_KIND,
            server.base_url,
            server.display_name,
            server.keyword_list,
            server.country_code,
            server,
        )
        for server in servers
    ]


def organization_entries(organizations: Iterable[Organization]) -> list[Entry]:
    """The entries of an organization list."""
    given = list(organizations)
    # Made as tuples in one C-level pass: lists hold thousands.
    return list(
        map(
            tuple.__new__,
            itertools.repeat(Entry),
            zip(
                itertools.repeat(ORGANIZATION_KIND),
                map(_ORG_ID, given),
                map(_DISPLAY_NAME, given),
                map(_KEYWORD_LIST, given),
                itertools.repeat(""),
                given,
            ),
        )
    )


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


_NAMES, _KEYWORDS, _FIRST, _WHOLE = range(4)
"""The pools of word postings: the words of names; the words of keywords (and the
country code); the first word of each name; names of one word."""

_BACKWARDS = operator.itemgetter(slice(None, None, -1))
_SPACES_IN = operator.methodcaller("count", " ")
_KIND = operator.attrgetter("kind")
_IDENT = operator.attrgetter("ident")
_COUNTRY = operator.attrgetter("country_code")
_PARTITION = operator.methodcaller("partition", " ")
_FIRST_OF = operator.itemgetter(0)

_NEAR_CANDIDATES = 16
"""At most this many words of a look-up, each is compared with a query word letter
by letter rather than the look-up narrowed down."""

_FEW = 8
"""At most this many entries left, a query word is compared with each of their
words rather than the words one typo away from it looked up."""

_CANDIDATES = 64
"""At most this many entries left, a query word is checked in each entry's text
rather than looked up."""


class _Postings:
    """The words of several pools (the words of names, of keywords, …), each with
    the entries holding it, sorted for look-ups.

    Every distinct word gets a number in sorted order, and each pool its own
    run of numbers; the entries are kept as one list ordered by number, so
    the entries of a word, or of every word with a prefix, are one slice.
    Built by C-level sorting and mapping (of numbers, not strings), so that
    thousands of entries index fast.
    """

    def __init__(self, pools: Sequence[tuple[Iterable[str], Iterable[int]]]) -> None:
        materialized = [(list(words), owners) for words, owners in pools]
        self.sorted = sorted(set(itertools.chain.from_iterable(w for w, _ in materialized)))
        self._numbers = number = dict(zip(self.sorted, itertools.count()))
        self._span = len(self.sorted)
        codes: list[int] = []
        ids: list[int] = []
        for pool, (pool_words, owners) in enumerate(materialized):
            pool_codes: Iterable[int] = map(number.__getitem__, pool_words)
            if pool:
                pool_codes = map(operator.add, pool_codes, itertools.repeat(pool * self._span))
            codes.extend(pool_codes)
            ids.extend(owners)
        order = sorted(range(len(codes)), key=codes.__getitem__)
        # The word number of each place, and the entry there.
        self._codes = list(map(codes.__getitem__, order))
        self._ids = list(map(ids.__getitem__, order))

    def _slice(self, pool: int, first: int, last: int) -> tuple[int, int]:
        """Where the entries of words numbered first to last - 1 of `pool` lie."""
        base = pool * self._span
        start = bisect.bisect_left(self._codes, base + first)
        return start, bisect.bisect_left(self._codes, base + last, start)

    def _range(self, prefix: str) -> tuple[int, int]:
        first = bisect.bisect_left(self.sorted, prefix)
        return first, bisect.bisect_left(self.sorted, prefix + _LAST_CHAR, first)

    def _number(self, word: str) -> int | None:
        return self._numbers.get(word)

    def holding(self, pool: int, word: str) -> set[int]:
        """Entries holding `word` in `pool`."""
        n = self._number(word)
        return set() if n is None else set(self._ids[slice(*self._slice(pool, n, n + 1))])

    def starting_with(self, pool: int, prefix: str) -> set[int]:
        """Entries holding a word that starts with `prefix` in `pool`."""
        return set(self._ids[slice(*self._slice(pool, *self._range(prefix)))])

    def count_holding(self, pool: int, word: str) -> int:
        """How many entries hold `word` in `pool`."""
        n = self._number(word)
        if n is None:
            return 0
        start, end = self._slice(pool, n, n + 1)
        return end - start

    def count_starting_with(self, pool: int, prefix: str) -> int:
        """How many (word, entry) pairs of `pool` have a word starting with `prefix`."""
        start, end = self._slice(pool, *self._range(prefix))
        return end - start

    @functools.cached_property
    def _joined(self) -> tuple[list[int], str]:
        """Every distinct word one after the other, for substring search (made at first use)."""
        return _blob(self.sorted)

    def containing(self, pool: int, text: str) -> set[int]:
        """Entries holding a word that contains `text` in `pool`."""
        found: set[int] = set()
        starts, blob = self._joined
        pos = blob.find(text)
        while pos != -1:
            k = bisect.bisect_right(starts, pos) - 1
            found.update(self._ids[slice(*self._slice(pool, k, k + 1))])
            # On to the next word: this one has given its entries.
            pos = blob.find(text, starts[k + 1]) if k + 1 < len(starts) else -1
        return found

    @functools.cached_property
    def _by_length(self) -> dict[int, tuple[list[str], list[str]]]:
        """The words of each length, sorted, and sorted written backwards (made at
        first use, for the words one typo away from a query word)."""
        lengths: dict[int, list[str]] = {}
        for word in self.sorted:
            lengths.setdefault(len(word), []).append(word)
        return {
            length: (group, sorted(map(_BACKWARDS, group))) for length, group in lengths.items()
        }

    def near(self, word: str) -> list[str]:
        """Words one typo away from `word`.

        A letter left out, or two neighbours swapped, gives one word for each
        place: those are looked up. A letter changed at place i keeps the
        first i letters and all after the first i + 1; a letter added, the
        first i and all from i on. For a span of places, every such word of
        that length starts with the letters the first place keeps and ends
        with those the last keeps: two look-ups in sorted lists. Where the
        smaller is still large, the span is halved; only the few words found
        are compared letter by letter.
        """
        length = len(word)
        vocabulary = self._vocabulary
        found = {word[:i] + word[i + 1 :] for i in range(length)}
        found.update(word[:i] + word[i + 1] + word[i] + word[i + 2 :] for i in range(length - 1))
        found &= vocabulary
        for size, gap in ((length, 1), (length + 1, 0)):
            group = self._by_length.get(size)
            if group is None:
                continue
            forwards, backwards = group
            spans = [(0, length - gap)]
            while spans:
                low, high = spans.pop()
                head, tail = word[:low], word[high + gap :]
                backwards_tail = tail[::-1]
                f_start = bisect.bisect_left(forwards, head)
                f_end = bisect.bisect_left(forwards, head + _LAST_CHAR, f_start)
                b_start = bisect.bisect_left(backwards, backwards_tail)
                b_end = bisect.bisect_left(backwards, backwards_tail + _LAST_CHAR, b_start)
                if min(f_end - f_start, b_end - b_start) > _NEAR_CANDIDATES and low < high:
                    middle = (low + high) // 2
                    spans += [(low, middle), (middle + 1, high)]
                    continue
                if f_end - f_start <= b_end - b_start:
                    candidates = [k for k in forwards[f_start:f_end] if k.endswith(tail)]
                else:
                    candidates = [
                        k for k in map(_BACKWARDS, backwards[b_start:b_end]) if k.startswith(head)
                    ]
                found.update(k for k in candidates if within_one_edit(word, k))
        found.discard(word)
        return sorted(found)

    @functools.cached_property
    def _vocabulary(self) -> frozenset[str]:
        """Every distinct word (made at first use)."""
        return frozenset(self.sorted)

    @functools.cached_property
    def _backwards(self) -> tuple[list[str], list[int]]:
        """Every distinct word written backwards, sorted, and its number (made at first use)."""
        pairs = sorted(zip(map(_BACKWARDS, self.sorted), itertools.count()))
        return [backwards for backwards, _ in pairs], [number for _, number in pairs]

    def ending_with(self, pool: int, suffix: str, most: int) -> set[int] | None:
        """Entries holding a word that ends with `suffix` in `pool`; None when more
        than `most` distinct words do (too many to look up one by one)."""
        backwards, numbers = self._backwards
        start = bisect.bisect_left(backwards, suffix[::-1])
        end = bisect.bisect_left(backwards, suffix[::-1] + _LAST_CHAR, start)
        if end - start > most:
            return None
        found: set[int] = set()
        for number in numbers[start:end]:
            found.update(self._ids[slice(*self._slice(pool, number, number + 1))])
        return found


def _blob(parts: Sequence[str]) -> tuple[list[int], str]:
    """The parts joined by "\t" (in no folded text), and where each starts."""
    starts = list(itertools.accumulate((len(part) + 1 for part in parts), initial=0))
    return starts[:-1], "\t".join(parts)


def _flatten(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """The items of every group, flat, and the number of the group each came from."""
    items = list(itertools.chain.from_iterable(groups))
    owners = list(
        itertools.chain.from_iterable(map(itertools.repeat, itertools.count(), map(len, groups)))
    )
    return items, owners


def _split_flat(texts: list[str], owners: list[int]) -> tuple[list[str], list[int]]:
    """The words of normalized texts, flat, and the owner of the text each came from
    (a normalized text has one word more than spaces, or none if it is empty)."""
    counts = map(operator.add, map(_SPACES_IN, texts), map(bool, texts))
    words = " ".join(texts).split()
    word_owners = list(itertools.chain.from_iterable(map(itertools.repeat, owners, counts)))
    return words, word_owners


def _holds_near(doc: str, word: str, fuzzy: bool) -> bool:
    """Whether a word of `doc` starts with `word` or (if `fuzzy`) is one typo away."""
    return any(
        known.startswith(word) or (fuzzy and within_one_edit(word, known)) for known in doc.split()
    )


def _having(entries: Iterable[int], docs: list[str], needles: list[str]) -> set[int]:
    """The entries whose text (in `docs`) holds any of `needles`."""
    numbers = list(entries)
    texts = list(map(docs.__getitem__, numbers))
    kept: set[int] = set()
    for needle in needles:
        kept.update(
            itertools.compress(numbers, map(operator.contains, texts, itertools.repeat(needle)))
        )
    return kept


def _all_names(entries: Sequence[Entry]) -> tuple[list[list[str]], list[str]]:
    """_names() of each entry, most of them without a call per entry."""
    displays = list(map(_DISPLAY_NAME, entries))
    names = [[value] if value.__class__ is str else list(value.values()) for value in displays]
    primaries = [value if value.__class__ is str else value.get("en") for value in displays]
    # An empty name, a map without "en" (or with an empty one): the few left.
    missing = [n for n, primary in enumerate(primaries) if not primary]
    maps = [displays[n] for n in missing]
    tags = set(itertools.chain.from_iterable(value for value in maps if value.__class__ is dict))
    if all(value.__class__ is dict and value for value in maps) and not any(
        tag[:2].lower() == "en" for tag in tags
    ):
        # No English name among them: each one's first language (by tag).
        firsts = [value[min(value)] for value in maps]
        if all(firsts):
            for n, primary in zip(missing, firsts, strict=True):
                primaries[n] = primary
            return names, primaries
    for n in missing:
        names[n], primaries[n] = _names(entries[n])
    return names, primaries


def _names(entry: Entry) -> tuple[list[str], str]:
    """The texts of an entry's name (a fallback if none) and the one names are
    sorted by: the English one, else the first language's (by tag)."""
    value = entry.display_name
    if isinstance(value, str):
        text = value or entry.country_code or entry.ident
        return [text], text
    if not value:
        fallback = entry.country_code or entry.ident
        return [fallback], fallback
    primary = value.get("en")
    if primary is None:
        english = [tag for tag in value if tag[:2].lower() == "en"]
        primary = value[min(english or value)]
    return list(value.values()), primary or entry.country_code or entry.ident


class SearchIndex:
    """The folded names and keywords of one list's entries, ready to search.

    Kept for each entry (numbered in the order equal hits are shown): its
    folded names as one text of words between spaces, each name between
    marks (" \x01 word word \x01 word \x01 "), and that text with its
    keywords and country code after it. Whether an entry has a word, a word
    starting so, a name or a name starting so, is then one substring test.
    For the list as a whole: postings (_Postings) of the words of names, of
    keywords, of the first word of each name and of one-word names; the
    steps look a query's rarest word up there, then test the few entries
    left in their texts.
    """

    def __init__(self, entries: Iterable[Entry]) -> None:
        given = list(entries)
        size = len(given)
        raw_names, primaries = _all_names(given)
        # Keywords often repeat from language to language: each text once.
        raw_keywords = [
            ([value] if value else [])
            if value.__class__ is str
            else list(dict.fromkeys(value.values()))
            for value in map(_KEYWORD_LIST, given)
        ]
        names_flat, name_owner = _flatten(raw_names)
        keywords_flat = list(itertools.chain.from_iterable(raw_keywords))
        # Every distinct text once (languages repeat one another), normalized at once.
        distinct = list(dict.fromkeys(itertools.chain(names_flat, keywords_flat)))
        folded = dict(zip(distinct, _normalize_all(distinct), strict=True))
        get = folded.__getitem__
        sort_names = list(map(get, primaries))
        # Entries are numbered in the order equal hits are shown.
        sort_keys = list(
            zip(
                sort_names,
                map(_KIND_ORDER.get, map(_KIND, given), itertools.repeat(9)),
                map(_IDENT, given),
                strict=True,
            )
        )
        order = sorted(range(size), key=sort_keys.__getitem__)
        rank = sorted(range(size), key=order.__getitem__)
        self._entries = list(map(given.__getitem__, order))
        self._kinds = list(map(_KIND, self._entries))
        self._all_kinds = frozenset(self._kinds)
        self._sort_names = list(map(sort_names.__getitem__, order))
        self._countries = list(map(str.lower, map(_COUNTRY, self._entries)))
        # Each entry's names (each between marks, so that a whole name or its
        # start can be found too) as one text.
        mark = f" {_MARK} "
        self._name_docs = [
            f"{mark}{mark.join(map(get, texts))}{mark}"
            for texts in map(raw_names.__getitem__, order)
        ]
        self._folded = folded
        self._keyword_texts = list(map(raw_keywords.__getitem__, order))
        # The postings: from the texts (as the documents hold marks too).
        names = list(map(get, names_flat))
        name_owner = list(map(rank.__getitem__, name_owner))
        keyword_texts, keyword_owner = _flatten(raw_keywords)
        keyword_owner = list(map(rank.__getitem__, keyword_owner))
        name_words, name_word_owner = _split_flat(names, name_owner)
        keyword_words, keyword_word_owner = _split_flat(
            list(map(get, keyword_texts)), keyword_owner
        )
        with_country = list(itertools.compress(itertools.count(), self._countries))
        one_word = list(map(operator.not_, map(operator.contains, names, itertools.repeat(" "))))
        self._words = _Postings(
            [
                (name_words, name_word_owner),
                (
                    itertools.chain(keyword_words, map(self._countries.__getitem__, with_country)),
                    itertools.chain(keyword_word_owner, with_country),
                ),
                (map(_FIRST_OF, map(_PARTITION, names)), name_owner),
                (itertools.compress(names, one_word), itertools.compress(name_owner, one_word)),
            ]
        )
        # The words one typo away from recent query words.
        self._near: dict[str, list[str]] = {}

    @functools.cached_property
    def _all_docs(self) -> list[str]:
        """Each entry's names with its keywords and country after them, as one text
        (made at first use)."""
        get = self._folded.__getitem__
        return [
            f"{names}{' '.join(map(get, texts))} {country} "
            for names, texts, country in zip(
                self._name_docs, self._keyword_texts, self._countries, strict=True
            )
        ]

    @functools.cached_property
    def _name_blob(self) -> tuple[list[int], str]:
        """Each entry's names one after the other, for substring search (made at first use)."""
        return _blob(self._name_docs)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> Sequence[Entry]:
        """The entries, in name order."""
        return self._entries

    # -- the steps --------------------------------------------------------------

    def _pools(self, in_keywords: bool) -> tuple[int, ...]:
        return (_NAMES, _KEYWORDS) if in_keywords else (_NAMES,)

    def _docs(self, in_keywords: bool) -> list[str]:
        return self._all_docs if in_keywords else self._name_docs

    def _every_word(self, query_words: list[str], in_keywords: bool) -> set[int]:
        """Entries where each query word starts one of their words."""
        pools = self._pools(in_keywords)
        counts = {
            word: sum(self._words.count_starting_with(pool, word) for pool in pools)
            for word in query_words
        }
        ordered = sorted(query_words, key=counts.__getitem__)
        if counts[ordered[0]] == 0:
            return set()
        found: set[int] = set()
        for pool in pools:
            found |= self._words.starting_with(pool, ordered[0])
        rest = ordered[1:]
        # Narrow down by the postings while they are about as small as what is left…
        while rest and len(found) > _CANDIDATES and counts[rest[0]] <= 4 * len(found):
            word = rest.pop(0)
            matched: set[int] = set()
            for pool in pools:
                matched |= self._words.starting_with(pool, word)
            found &= matched
        if not rest or not found:
            return found
        # …then look in the texts of the few entries left.
        docs = self._docs(in_keywords)
        for word in rest:
            found = _having(found, docs, [" " + word])
        return found

    def _name_substring(self, query: str, query_words: list[str]) -> set[int]:
        if len(query_words) == 1:
            # Within one word: look among the distinct words, not every name.
            return self._words.containing(_NAMES, query)
        # The first query word ends a word of the name and every other starts
        # one: look at those entries only, unless that leaves too many.
        candidates = self._every_word(query_words[1:], in_keywords=False)
        if len(candidates) > 4 * _CANDIDATES:
            ending = self._words.ending_with(_NAMES, query_words[0], _CANDIDATES)
            if ending is not None:
                candidates &= ending
        if len(candidates) <= 4 * _CANDIDATES:
            docs = self._name_docs
            return _having(candidates, docs, [query])
        found: set[int] = set()
        starts, blob = self._name_blob
        pos = blob.find(query)
        while pos != -1:
            n = bisect.bisect_right(starts, pos) - 1
            found.add(n)
            # On to the next entry: this one is found.
            pos = blob.find(query, starts[n + 1]) if n + 1 < len(starts) else -1
        return found

    def _near_words(self, word: str) -> list[str]:
        """Words of the index one typo away from `word`."""
        near = self._near.get(word)
        if near is None:
            near = self._words.near(word)
            if len(self._near) >= _NEAR_MEMORY:
                self._near.clear()
            self._near[word] = near
        return near

    def _fuzzy(self, query_words: list[str], in_keywords: bool) -> set[int]:
        """Entries where each query word starts one of their words or (if long
        enough) is one typo away from one."""
        pools = self._pools(in_keywords)
        docs = self._docs(in_keywords)
        counts = {
            word: sum(self._words.count_starting_with(pool, word) for pool in pools)
            for word in query_words
        }
        found: set[int] | None = None
        # The word starting the fewest words first (those with a typo start none).
        for word in sorted(query_words, key=lambda word: (counts[word] == 0, counts[word])):
            fuzzy = len(word) >= FUZZY_MIN_LENGTH
            if found is not None and len(found) <= _FEW:
                # A handful left: compare their words with this one.
                found = {n for n in found if _holds_near(docs[n], word, fuzzy)}
            else:
                near = self._near_words(word) if fuzzy else []
                if found is not None and (
                    len(found) <= _CANDIDATES or counts[word] > 4 * len(found)
                ):
                    # Few left: look in their texts rather than up the postings.
                    found = _having(found, docs, [" " + word] + [f" {k} " for k in near])
                else:
                    matched: set[int] = set()
                    for pool in pools:
                        matched |= self._words.starting_with(pool, word)
                        for known in near:
                            matched |= self._words.holding(pool, known)
                    found = matched if found is None else found & matched
            if not found:
                return set()
        return found or set()

    def _whole_names(
        self, query_words: list[str], prefix: bool, memo: dict[str, set[int]]
    ) -> set[int]:
        """Entries with a name that is the query (or, with `prefix`, starts with it)."""
        query = " ".join(query_words)
        if len(query_words) == 1:
            if prefix:
                return self._words.starting_with(_FIRST, query)
            return self._words.holding(_WHOLE, query)
        # Such a name holds every query word: look at those entries only.
        candidates = memo.get("word-prefix")
        if candidates is None:
            candidates = memo["word-prefix"] = self._every_word(query_words, in_keywords=False)
        needle = f" {_MARK} {query}" + ("" if prefix else f" {_MARK} ")
        docs = self._name_docs
        return _having(candidates, docs, [needle])

    def _step(
        self, match: str, in_keywords: bool, query_words: list[str], memo: dict[str, set[int]]
    ) -> set[int]:
        query = " ".join(query_words)
        single = len(query_words) == 1
        if match == "exact":
            if in_keywords:
                return self._words.holding(_KEYWORDS, query) if single else set()
            return self._whole_names(query_words, False, memo)
        if match == "prefix":
            if in_keywords:
                return self._words.starting_with(_KEYWORDS, query) if single else set()
            return self._whole_names(query_words, True, memo)
        if match == "word-prefix":
            if not in_keywords and "word-prefix" in memo:
                return set(memo["word-prefix"])
            return self._every_word(query_words, in_keywords)
        if match == "substring":
            if in_keywords:
                # A keyword word holds no space: only a one-word query can be in one.
                return self._words.containing(_KEYWORDS, query) if single else set()
            return self._name_substring(query, query_words)
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
        memo: dict[str, set[int]] = {}
        for tier, (match, in_keywords) in enumerate(_TIERS):
            found = self._step(match, in_keywords, query_words, memo)
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
