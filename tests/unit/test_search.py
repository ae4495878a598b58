"""Searching the discovery lists: folding, ranking, typos, kinds, languages."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vpnd.protocols import discovery as d
from vpnd.protocols import search as s
from vpnd.protocols.search import Entry, SearchIndex


def org(org_id: str, name: Any, keywords: Any = "") -> Entry:
    return Entry(kind=s.ORGANIZATION_KIND, ident=org_id, display_name=name, keyword_list=keywords)


def institute(url: str, name: Any, keywords: Any = "") -> Entry:
    return Entry(kind=s.INSTITUTE_ACCESS_KIND, ident=url, display_name=name, keyword_list=keywords)


ENTRIES = [
    org("uva", {"nl": "Universiteit van Amsterdam", "en": "University of Amsterdam"}, "UvA"),
    org("vu", "Vrije Universiteit Amsterdam", {"en": "VU amsterdam free"}),
    org("unige", {"fr": "Université de Genève", "en": "University of Geneva"}, "UNIGE"),
    org("ams", "Amsterdam", ""),
    org("amc", "Amsterdam UMC", "academic medical centre"),
    org("tud", "Technische Universität Dresden", "TU Dresden"),
    org("auth", {"el": "Αριστοτέλειο Πανεπιστήμιο Θεσσαλονίκης", "en": "Aristotle University"}),
    org("tokyo", {"ja": "東京大学", "en": "The University of Tokyo"}),
    institute("https://vpn.surf.example/", "SURF", {"en": "surfnet powered by"}),
    institute("https://amsterdam.example/", "City of Amsterdam Institute"),
    Entry(
        kind=s.SECURE_INTERNET_KIND,
        ident="https://nl.eduvpn.example/",
        display_name="",
        country_code="NL",
    ),
]
INDEX = SearchIndex(ENTRIES)


def idents(query: str, **options: Any) -> list[str]:
    return [hit.entry.ident for hit in INDEX.search(query, **options)]


def first(query: str) -> tuple[str, str, bool]:
    hit = INDEX.search(query)[0]
    return hit.entry.ident, hit.match, hit.in_keywords


# --- folding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Université de Genève", "universite de geneve"),
        ("TECHNISCHE UNIVERSITÄT", "technische universitat"),
        ("Straße", "strasse"),
        ("ﬁnance", "finance"),
        ("Paris-Saclay (Orsay)", "paris saclay orsay"),
        ("  many   spaces\tand\ttabs ", "many spaces and tabs"),
        ("Αριστοτέλειο", "αριστοτελειο"),
        ("東京大学", "東京大学"),
        ("Ｕｎｉｖｅｒｓｉｔｙ", "university"),
    ],
)
def test_names_are_folded_for_matching(text: str, folded: str) -> None:
    assert s.normalize(text) == folded


@given(st.text(max_size=40))
def test_folding_is_stable_and_leaves_no_combining_mark(text: str) -> None:
    once = s.normalize(text)
    assert s.normalize(once) == once
    assert not any(unicodedata.combining(ch) for ch in once)
    assert once == once.strip() and "  " not in once


@given(st.lists(st.text(max_size=20), max_size=20))
def test_folding_many_at_once_is_folding_each(texts: list[str]) -> None:
    texts = [t.replace("\x00", "") for t in texts]
    assert s._normalize_all(texts) == [s.normalize(t) for t in texts]


# --- ranking --------------------------------------------------------------------------


def test_the_ranking_goes_exact_prefix_word_prefix_substring() -> None:
    hits = INDEX.search("amsterdam", kinds={s.ORGANIZATION_KIND})
    assert [(h.entry.ident, h.match, h.in_keywords) for h in hits] == [
        ("ams", "exact", False),
        ("vu", "exact", True),  # "amsterdam" is one of its keywords
        ("amc", "prefix", False),
        ("uva", "word-prefix", False),
    ]
    assert [h.score for h in hits] == [1.0, 0.9, 0.8, 0.6]
    assert first("sterdam") == ("ams", "substring", False)


def test_a_keyword_counts_after_a_name_of_the_same_rank() -> None:
    assert first("uva") == ("uva", "exact", True)
    assert first("unige") == ("unige", "exact", True)
    hits = INDEX.search("surf")
    assert [(h.entry.ident, h.match, h.in_keywords) for h in hits] == [
        ("https://vpn.surf.example/", "exact", False)
    ]
    assert first("surfn") == ("https://vpn.surf.example/", "prefix", True)


def test_every_word_must_start_a_word_in_any_order() -> None:
    assert idents("amst univ", kinds={s.ORGANIZATION_KIND}) == ["uva", "vu"]
    assert idents("dresden tech") == ["tud"]
    assert idents("amsterdam free") == ["vu"]  # one word in the name, one in keywords


def test_names_in_every_language_and_script_are_searched() -> None:
    assert idents("geneve") == ["unige"]
    assert idents("genève") == ["unige"]
    assert idents("GENEVA") == ["unige"]
    assert idents("Πανεπιστήμιο") == ["auth"]
    assert idents("πανεπιστημιο θεσσαλονικης") == ["auth"]
    assert idents("東京") == ["tokyo"]
    assert idents("universitat dresden") == ["tud"]


def test_a_secure_internet_server_is_found_by_its_country_code() -> None:
    assert [(h.entry.ident, h.entry.kind) for h in INDEX.search("nl")] == [
        ("https://nl.eduvpn.example/", s.SECURE_INTERNET_KIND)
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("amstredam", "ams"),  # two letters swapped
        ("amsterdm", "ams"),  # one left out
        ("amssterdam", "ams"),  # one added
        ("amsterdan", "ams"),  # one changed
        ("univrsity tokyo", "tokyo"),
        ("Genèvx univ", "unige"),
    ],
)
def test_one_typo_is_forgiven(query: str, expected: str) -> None:
    hits = INDEX.search(query)
    assert hits and hits[0].entry.ident == expected
    assert hits[0].match == "fuzzy"


@pytest.mark.parametrize("query", ["amtsredam", "amstrdm", "suf", "uvz"])
def test_two_typos_or_a_typo_in_a_short_word_are_not(query: str) -> None:
    assert INDEX.search(query) == []


def test_institute_access_and_organizations_both_come_and_say_their_kind() -> None:
    hits = INDEX.search("amsterdam")
    kinds = {h.entry.kind for h in hits}
    assert kinds == {s.ORGANIZATION_KIND, s.INSTITUTE_ACCESS_KIND}
    assert idents("amsterdam", kinds={s.INSTITUTE_ACCESS_KIND}) == ["https://amsterdam.example/"]


def test_limit_and_an_empty_query() -> None:
    assert len(INDEX.search("amsterdam", limit=2)) == 2
    assert idents("amsterdam", limit=2) == ["ams", "vu"]
    listed = INDEX.search("", kinds={s.INSTITUTE_ACCESS_KIND}, limit=0)
    assert [h.entry.ident for h in listed] == [
        "https://amsterdam.example/",
        "https://vpn.surf.example/",
    ]
    assert {h.match for h in listed} == {""} and {h.score for h in listed} == {0.0}
    assert len(INDEX.search("  ", limit=0)) == len(ENTRIES)


def test_several_indexes_rank_together() -> None:
    servers = SearchIndex([e for e in ENTRIES if e.kind != s.ORGANIZATION_KIND])
    orgs = SearchIndex([e for e in ENTRIES if e.kind == s.ORGANIZATION_KIND])
    merged = s.search([servers, orgs], "amsterdam", limit=0)
    assert [h.entry.ident for h in merged] == idents("amsterdam", limit=0)


def test_entries_come_from_the_parsed_lists() -> None:
    servers = d.parse_server_list(
        b'{"v": 1, "server_list": [{"server_type": "secure_internet",'
        b' "base_url": "https://nl.example/", "country_code": "NL"}]}'
    )
    orgs = d.parse_organization_list(
        b'{"v": 1, "organization_list": [{"org_id": "x", "display_name": "X Org",'
        b' "secure_internet_home": "https://nl.example/"}]}'
    )
    entries = s.server_entries(servers.servers) + s.organization_entries(orgs.organizations)
    assert [(e.kind, e.ident, e.name(["en"])) for e in entries] == [
        (s.SECURE_INTERNET_KIND, "https://nl.example/", "NL"),
        (s.ORGANIZATION_KIND, "x", "X Org"),
    ]


# --- properties -------------------------------------------------------------------------

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéèçñåøł", min_size=4, max_size=10)


def osa_distance(a: str, b: str) -> int:
    """Reference: optimal string alignment distance (edits and adjacent swaps)."""
    rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        rows[i][0] = i
    for j in range(len(b) + 1):
        rows[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            rows[i][j] = min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                rows[i][j] = min(rows[i][j], rows[i - 2][j - 2] + 1)
    return rows[len(a)][len(b)]


@given(st.text("abc", max_size=6), st.text("abc", max_size=6))
def test_within_one_edit_agrees_with_the_reference(a: str, b: str) -> None:
    assert s.within_one_edit(a, b) == (osa_distance(a, b) <= 1)


@settings(max_examples=200, deadline=None)
@given(st.text("abc", min_size=4, max_size=7), st.sets(st.text("abc", max_size=8), max_size=60))
def test_the_words_one_typo_away_are_all_found_and_only_they(
    word: str, vocabulary: set[str]
) -> None:
    vocabulary |= {w for w in ("".join(t) for t in _strings("abc", 3, 5)) if hash(w) % 3 == 0}
    expected = sorted(v for v in vocabulary if v != word and osa_distance(word, v) == 1)
    postings = s._Postings([(sorted(vocabulary), [0] * len(vocabulary))])
    assert postings.near(word) == expected
    few, s._NEAR_CANDIDATES = s._NEAR_CANDIDATES, 0  # every look-up narrowed down to the end
    try:
        narrowed = s._Postings([(sorted(vocabulary), [0] * len(vocabulary))]).near(word)
    finally:
        s._NEAR_CANDIDATES = few
    assert narrowed == expected


def _strings(alphabet: str, shortest: int, longest: int) -> list[tuple[str, ...]]:
    from itertools import product

    return [t for n in range(max(0, shortest), longest + 1) for t in product(alphabet, repeat=n)]


@settings(max_examples=60)
@given(st.lists(words, min_size=1, max_size=3), st.data())
def test_a_name_is_found_by_itself_in_any_case_without_accents(
    name_words: list[str], data: st.DataObject
) -> None:
    name = " ".join(name_words)
    index = SearchIndex([*ENTRIES, org("target", name.title())])
    query = data.draw(st.sampled_from([name, name.upper(), _strip_accents(name)]))
    hits = index.search(query, limit=0)
    assert "target" in [h.entry.ident for h in hits]
    assert hits[0].entry.ident == "target" or hits[0].match == "exact"


@settings(max_examples=60)
@given(words, st.data())
def test_one_typo_in_a_long_enough_word_still_finds_it(word: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(word) - 1))
    typo = data.draw(
        st.sampled_from(
            [
                word[:position] + word[position + 1 :],  # left out
                word[:position] + "x" + word[position:],  # added
                word[:position] + "q" + word[position + 1 :],  # changed
            ]
        )
    )
    assume(len(s.normalize(typo)) >= s.FUZZY_MIN_LENGTH)
    index = SearchIndex([org("target", f"Institute {word}")])
    assert [h.entry.ident for h in index.search(typo)] == ["target"]


@settings(max_examples=60)
@given(st.text(max_size=30), st.sets(st.sampled_from(s.KINDS)), st.integers(0, 20))
def test_any_query_gives_ranked_hits_of_the_asked_kinds(
    query: str, kinds: set[str], limit: int
) -> None:
    hits = INDEX.search(query, kinds=kinds, limit=limit)
    assert all(h.entry.kind in kinds for h in hits)
    assert len(hits) <= (limit or len(ENTRIES))
    assert [h.rank for h in hits] == sorted(h.rank for h in hits)
    assert len({h.entry.ident for h in hits}) == len(hits)


def _strip_accents(text: str) -> str:
    return "".join(
        ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)
    )


# --- the index agrees with a plain scan ------------------------------------------------


def _reference_search(entries: list[Entry], query: str) -> list[tuple[str, str, bool]]:
    """Every hit, ranked, found by looking at each entry in turn: what the index
    must give, however it finds it."""
    query_words = s.words(query)[: s.MAX_QUERY_WORDS]
    text = " ".join(query_words)

    def texts(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value.values())

    def sort_name(entry: Entry) -> str:
        value, fallback = entry.display_name, entry.country_code or entry.ident
        if isinstance(value, dict) and value:
            english = [tag for tag in value if tag.lower().startswith("en")]
            value = value["en"] if "en" in value else value[min(english or value)]
        return s.normalize(value or fallback) if isinstance(value, str) else s.normalize(fallback)

    ordered = sorted(entries, key=lambda e: (sort_name(e), s.KINDS.index(e.kind), e.ident))
    if not query_words:
        return [(entry.ident, "", False) for entry in ordered]
    hits: list[tuple[int, str, str, bool]] = []
    for entry in ordered:
        fallback = entry.country_code or entry.ident
        names = [s.normalize(t) for t in texts(entry.display_name) or [fallback]]
        names = names if entry.display_name else [s.normalize(fallback)]
        name_words = [w for name in names for w in name.split()]
        keyword_words = [w for t in texts(entry.keyword_list) for w in s.normalize(t).split()]
        keyword_words += [entry.country_code.lower()] if entry.country_code else []

        def starts(pool: list[str]) -> bool:
            return all(any(w.startswith(q) for w in pool) for q in query_words)

        def near(pool: list[str]) -> bool:
            return all(
                any(
                    w.startswith(q) or (len(q) >= s.FUZZY_MIN_LENGTH and s.within_one_edit(q, w))
                    for w in pool
                )
                for q in query_words
            )

        single = len(query_words) == 1
        tiers = [
            ("exact", False, text in names),
            ("exact", True, single and text in keyword_words),
            ("prefix", False, any(n.startswith(text) for n in names)),
            ("prefix", True, single and any(w.startswith(text) for w in keyword_words)),
            ("word-prefix", False, starts(name_words)),
            ("word-prefix", True, starts(name_words + keyword_words)),
            ("substring", False, any(text in n for n in names)),
            ("substring", True, any(text in w for w in keyword_words)),
            ("fuzzy", False, near(name_words)),
            ("fuzzy", True, near(name_words + keyword_words)),
        ]
        for tier, (match, in_keywords, matched) in enumerate(tiers):
            if query_words and matched:
                hits.append((tier, entry.ident, match, in_keywords))
                break
    hits.sort(key=lambda hit: hit[0])  # stable: name order within a tier
    return [(ident, match, in_keywords) for _, ident, match, in_keywords in hits]


_letters = st.sampled_from([*"abcdeéèäøsßtuvαβγάκκ東京学", " ", "-", "É", "A"])
_texts = st.text(_letters, min_size=1, max_size=14)
_names = _texts | st.dictionaries(
    st.sampled_from(["en", "nl", "fr", "el", "en-GB"]), _texts, min_size=1, max_size=3
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(_names, _texts | st.just(""), st.sampled_from(s.KINDS)), max_size=12),
    st.data(),
)
def test_the_index_finds_what_a_plain_scan_finds(
    raw: list[tuple[Any, str, str]], data: st.DataObject
) -> None:
    entries = [
        Entry(
            kind=kind,
            ident=f"id{n}",
            display_name=name,
            keyword_list=keywords,
            country_code="NL" if kind == s.SECURE_INTERNET_KIND else "",
        )
        for n, (name, keywords, kind) in enumerate(raw)
    ]
    index = SearchIndex(entries)
    known = [
        w
        for e in entries
        for t in (
            [e.display_name] if isinstance(e.display_name, str) else list(e.display_name.values())
        )
        for w in s.words(t)
    ]
    query = data.draw(
        _texts
        | (st.sampled_from(known) if known else _texts)
        | (st.sampled_from(known).map(lambda w: w[1:] + "x") if known else _texts)
        | (
            st.lists(st.sampled_from(known), min_size=2, max_size=3).map(" ".join)
            if known
            else _texts
        )
    )
    expected = _reference_search(entries, query)
    found = [(h.entry.ident, h.match, h.in_keywords) for h in index.search(query, limit=0)]
    assert found == expected
    # The same when the index never looks in the entries' texts (as it does
    # when few are left) but always in its postings, as for a large list.
    thresholds = s._FEW, s._CANDIDATES, s._NEAR_CANDIDATES
    s._FEW, s._CANDIDATES, s._NEAR_CANDIDATES = 0, 0, 0
    try:
        index._near.clear()
        found = [(h.entry.ident, h.match, h.in_keywords) for h in index.search(query, limit=0)]
    finally:
        s._FEW, s._CANDIDATES, s._NEAR_CANDIDATES = thresholds
    assert found == expected
