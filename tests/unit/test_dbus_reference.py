"""data/dbus/REFERENCE.md is what the introspection XML makes, and covers the whole API."""

from __future__ import annotations

import re
from pathlib import Path

from vpnd.bus import spec
from vpnd.bus.reference import error_names, render

DATA = Path(__file__).resolve().parents[2] / "data" / "dbus"
XML = (DATA / "org.vpnd.Daemon.xml").read_text()


def test_the_page_is_what_the_xml_makes_now() -> None:
    page = (DATA / "REFERENCE.md").read_text()
    assert page == render(XML), (
        "data/dbus/REFERENCE.md is out of date: PYTHONPATH=daemon python3 -m"
        " vpnd.bus.reference data/dbus/org.vpnd.Daemon.xml > data/dbus/REFERENCE.md"
    )


def test_every_method_property_and_signal_is_on_the_page() -> None:
    page = render(XML)
    for interface in (spec.MANAGER, spec.SERVER, spec.CONNECTION):
        part = page.split(f"## {interface.name}\n", 1)[1].split("\n## ", 1)[0]
        for method in interface.methods:
            assert f"- `{method.name}(" in part, (interface.name, method.name)
        for name in interface.properties:
            assert f"- `{name}`:" in part, (interface.name, name)
        for signal in interface.signals:
            assert f"- `{signal.name}(" in part, (interface.name, signal.name)


def test_every_error_name_is_listed_in_the_xml_and_explained_on_the_page() -> None:
    listed = re.search(r"Errors \(org\.vpnd\.Error\.\*\):(.*?)\(", XML, re.DOTALL)
    assert listed is not None
    written = {"org.vpnd.Error." + word.strip(" .\n") for word in listed.group(1).split(",")}
    assert written == set(error_names())
    page = render(XML)
    for name, meaning in error_names().items():
        assert meaning and f"- `{name}`: {meaning}" in page
