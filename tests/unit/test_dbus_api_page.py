"""docs/dbus-api.md's reference part is what the introspection XML makes now."""

from __future__ import annotations

from pathlib import Path

from vpnd.bus.reference import embed

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "dbus-api.md"
XML = REPO / "data" / "dbus" / "org.vpnd.Daemon.xml"


def test_the_reference_part_is_what_the_xml_makes_now() -> None:
    page = PAGE.read_text()
    assert page == embed(page, XML.read_text()), (
        "docs/dbus-api.md is out of date: PYTHONPATH=daemon python3 -m vpnd.bus.reference"
        " data/dbus/org.vpnd.Daemon.xml > data/dbus/REFERENCE.md (makes both pages)"
    )


def test_the_page_has_every_interface_and_error_of_the_reference() -> None:
    page = PAGE.read_text()
    reference = (REPO / "data" / "dbus" / "REFERENCE.md").read_text()
    for line in reference.splitlines():
        if line.startswith("## "):
            assert "#" + line in page, line
        elif line.startswith("- `"):
            assert line in page, line
