"""vpnd's D-Bus reference page, made from the introspection XML and the error classes.

    PYTHONPATH=daemon python3 -m vpnd.bus.reference data/dbus/org.vpnd.Daemon.xml \\
        > data/dbus/REFERENCE.md

The XML (data/dbus/org.vpnd.Daemon.xml) is the one written account of the
API: a bus test checks it against what the running daemon introspects, and
a unit test checks that this page is what the XML makes now. So the page
cannot drift from the daemon: change the XML, then make the page again.

The same command makes the reference part of docs/dbus-api.md again (the
part between `BEGIN` and `END`; the rest of that page, its guide and
examples, is written by hand), so both pages come from the one XML.
Not imported by the daemon.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from vpnd import errors

#: Where each interface's objects live.
OBJECTS = {
    "org.vpnd.Manager1": "/org/vpnd/Daemon",
    "org.freedesktop.DBus.ObjectManager": "/org/vpnd/Daemon",
    "org.vpnd.Server1": "/org/vpnd/Daemon/servers/{id}",
    "org.vpnd.Connection1": "/org/vpnd/Daemon/connections/{n}",
}


def error_names() -> dict[str, str]:
    """Every org.vpnd.Error.* name the daemon uses, with what it means (the
    docstring of the first class that bears it)."""
    found: dict[str, str] = {}
    classes = [c for _n, c in inspect.getmembers(errors, inspect.isclass)]
    for cls in sorted(classes, key=lambda c: len(c.__mro__)):
        if issubclass(cls, errors.VpndError) and cls.dbus_name not in found:
            doc = (cls.__doc__ or "").strip().split("\n\n")[0]
            found[cls.dbus_name] = " ".join(doc.split())
    return dict(sorted(found.items()))


def _comment(text: str) -> str:
    """An XML comment before an element as one paragraph."""
    return " ".join(text.split())


def _args(element: ET.Element, direction: str | None) -> str:
    args = [
        f"{arg.get('name')}: {arg.get('type')}"
        for arg in element.findall("arg")
        if direction is None or arg.get("direction", "in") == direction
    ]
    return ", ".join(args)


def render(xml_text: str) -> str:
    """The reference page for the introspection XML `xml_text`."""
    # The project's own file, not input from elsewhere.
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))  # noqa: S314
    root = ET.fromstring(xml_text, parser=parser)  # noqa: S314
    lines = [
        "# vpnd's D-Bus API",
        "",
        "<!-- Made by `python -m vpnd.bus.reference` from org.vpnd.Daemon.xml;"
        " do not edit. -->",
        "",
        "Bus name `org.vpnd.Daemon` on the system bus.",
        "",
    ]
    head = xml_text.split("<node>", 1)[0]
    if "<!--" in head:
        preamble = head.split("<!--", 1)[1].rsplit("-->", 1)[0]
        lines += ["```", textwrap.dedent(preamble.strip("\n")).strip(), "```", ""]
    for interface in root.findall("interface"):
        name = interface.get("name", "")
        lines += [f"## {name}", "", f"On `{OBJECTS.get(name, '?')}`.", ""]
        sections: dict[str, list[str]] = {"Methods": [], "Properties": [], "Signals": []}
        note = ""
        for child in interface:
            if not isinstance(child.tag, str):  # a comment: it describes what follows
                note = _comment(child.text or "")
                continue
            title = child.get("name", "")
            if child.tag == "method":
                ins, outs = _args(child, "in"), _args(child, "out")
                entry = f"- `{title}({ins})`" + (f" → `({outs})`" if outs else "")
                section = "Methods"
            elif child.tag == "property":
                entry = f"- `{title}`: `{child.get('type')}` ({child.get('access')})"
                section = "Properties"
            elif child.tag == "signal":
                entry = f"- `{title}({_args(child, None)})`"
                section = "Signals"
            else:
                continue
            if note:
                entry += "\n\n" + textwrap.indent(note, "  ") + "\n"
            sections[section].append(entry)
            note = ""
        for section, entries in sections.items():
            if entries:
                lines += [f"### {section}", "", *entries, ""]
    lines += ["## Errors", ""]
    lines += [f"- `{name}`: {meaning}" for name, meaning in error_names().items()]
    return "\n".join(lines).rstrip() + "\n"


#: Where docs/dbus-api.md's made part begins and ends.
BEGIN = (
    "<!-- BEGIN REFERENCE: made by `python -m vpnd.bus.reference` from"
    " data/dbus/org.vpnd.Daemon.xml; do not edit by hand -->"
)
END = "<!-- END REFERENCE -->"


def embed(page: str, xml_text: str) -> str:
    """`page` with its part between BEGIN and END made anew from `xml_text`:
    the reference without its title, each heading one level down."""
    head, found, rest = page.partition(BEGIN)
    _old, ended, tail = rest.partition(END)
    if not found or not ended:
        raise ValueError(f"the page lacks the lines {BEGIN!r} and {END!r}")
    lines: list[str] = []
    fenced = False
    for line in render(xml_text).splitlines()[1:]:
        if line.startswith("<!-- Made by"):
            continue
        if line.startswith("```"):
            fenced = not fenced
        lines.append("#" + line if line.startswith("#") and not fenced else line)
    return head + BEGIN + "\n" + "\n".join(lines).strip("\n") + "\n\n" + END + tail


def main(argv: list[str]) -> int:
    """Print the page for the XML file named in argv; make docs/dbus-api.md's part again."""
    xml_text = Path(argv[1]).read_text()
    sys.stdout.write(render(xml_text))
    guide = Path(argv[1]).resolve().parents[2] / "docs" / "dbus-api.md"
    if guide.exists():
        guide.write_text(embed(guide.read_text(), xml_text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
