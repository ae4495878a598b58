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


@settings(deadline=None)
@given(st.text("abc", min_size=1, max_size=4))
def test_every_variant_is_one_edit_away_and_every_neighbour_is_a_variant(word: str) -> None:
    variants = s.one_edit_variants(word, "abc")
    assert all(osa_distance(word, v) == 1 for v in variants)
    for other in ("".join(t) for t in _strings("abc", len(word) - 1, len(word) + 1)):
        if osa_distance(word, other) == 1:
            assert other in variants


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
