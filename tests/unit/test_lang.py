"""Language tags from the locale and choosing a string from a language map."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.protocols.lang import choose, locale_to_tags


@pytest.mark.parametrize(
    ("locale", "tags"),
    [
        ("nl_NL.UTF-8", ["nl-NL", "nl"]),
        ("de_DE:fr", ["de-DE", "de", "fr"]),
        ("", []),
        ("C", []),
        ("POSIX", []),
        ("C.UTF-8", []),
        ("en_US.UTF-8@euro", ["en-US", "en"]),
        ("sr_RS@latin", ["sr-RS", "sr"]),
        ("de_DE:de_AT:de", ["de-DE", "de", "de-AT"]),
        ("pt_br", ["pt-BR", "pt"]),
        ("es_419.UTF-8", ["es-419", "es"]),
        ("fr", ["fr"]),
        ("nl_NL:C:en", ["nl-NL", "nl", "en"]),
        ("::", []),
        ("1234", []),
        ("x_Y_Z", []),
    ],
)
def test_locale_to_tags(locale: str, tags: list[str]) -> None:
    assert locale_to_tags(locale) == tags


NAMES = {"nl": "Internettoegang", "en-US": "Internet Access", "de-AT": "Internetzugang"}


@pytest.mark.parametrize(
    ("value", "preferred", "chosen"),
    [
        ("plain", ["nl"], "plain"),
        ("plain", [], "plain"),
        (NAMES, ["nl-NL", "nl"], "Internettoegang"),
        (NAMES, ["NL"], "Internettoegang"),
        (NAMES, ["en-us"], "Internet Access"),
        (NAMES, ["en_US"], "Internet Access"),
        (NAMES, ["de-DE", "de"], "Internetzugang"),
        (NAMES, ["nl-BE"], "Internettoegang"),
        (NAMES, ["fr-FR", "fr"], "Internet Access"),
        (NAMES, [], "Internet Access"),
        ({"en": "E", "en-US": "U", "fr": "F"}, ["ja"], "E"),
        ({"en-GB": "G", "fr": "F"}, ["ja"], "G"),
        ({"fr": "F", "de": "D"}, ["ja"], "D"),
        ({"fr": "F", "de": "D"}, [], "D"),
        # An exact match anywhere in the list beats a primary-language match earlier on.
        ({"de-AT": "A", "fr": "F"}, ["de-DE", "fr"], "F"),
        ({}, ["en"], ""),
    ],
)
def test_choose(value: str | dict[str, str], preferred: list[str], chosen: str) -> None:
    assert choose(value, preferred) == chosen


def test_choose_does_not_depend_on_key_order() -> None:
    one = {"de-AT": "A", "de-CH": "C"}
    other = {"de-CH": "C", "de-AT": "A"}
    assert choose(one, ["de-DE"]) == choose(other, ["de-DE"]) == "A"


TAGS = st.sampled_from(["en", "en-US", "en-GB", "nl", "nl-NL", "de", "de-AT", "fr", "EN", "x"])


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.one_of(TAGS, st.text(max_size=8)), st.text(max_size=8), min_size=1),
    st.lists(st.one_of(TAGS, st.text(max_size=8)), max_size=4),
)
def test_choose_returns_one_of_the_values(value: dict[str, str], preferred: list[str]) -> None:
    assert choose(value, preferred) in value.values()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_locale_to_tags_never_fails(locale: str) -> None:
    tags = locale_to_tags(locale)
    assert len(tags) == len(set(tags))
    assert all(tag and tag.replace("-", "").isalnum() for tag in tags)
