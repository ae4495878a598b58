"""What each command's --help shows below its options: examples, kept as written.

The man page (`vpnctl.manpage`) shows the same text, and a unit test parses
every example with vpnctl's own parser, so an example cannot name an option
that no longer exists.
"""

from __future__ import annotations

import argparse

# Per command: (what it does, the command line). Host names are examples.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "add": (
        ("add a server, then log in to it", "vpnctl add https://vpn.example.org/"),
        (
            "add the secure-internet server of an organization found with discover",
            "vpnctl add --org https://idp.example.org",
        ),
        (
            "add an OpenVPN Access Server; the password is asked for",
            "vpnctl add --access-server https://as.example.com/ --user alice --remember",
        ),
    ),
    "list": (
        ("your servers, and whether vpnd may use them", "vpnctl list"),
        ("the system-wide servers, as JSON", "vpnctl --system list --json"),
    ),
    "login": (
        ("log in in your browser", "vpnctl login vpn.example.org"),
        (
            "on a machine without a browser: open the printed address on another device, log"
            " in, and paste back the address that device could not load",
            "vpnctl login --no-browser vpn",
        ),
    ),
    "renew": (
        (
            "before the session ends: log in again, reconnect with a fresh session",
            "vpnctl renew vpn.example.org",
        ),
    ),
    "profiles": (
        ("the profiles to connect with", "vpnctl profiles vpn.example.org"),
        ("their ids only", "vpnctl profiles vpn --json | jq -r '.[].profile_id'"),
    ),
    "messages": (
        ("the notices of all your servers", "vpnctl messages"),
        ("of one server, as JSON", "vpnctl messages vpn.example.org --json"),
    ),
    "connect": (
        ("connect with the server's only profile", "vpnctl connect vpn.example.org"),
        ("with a profile, over TCP", "vpnctl connect vpn --profile employees --tcp"),
        ("start and return at once", "vpnctl connect vpn --profile employees --no-wait"),
    ),
    "answer": (("answer from another terminal what the connection asks", "vpnctl answer"),),
    "status": (
        ("the connection now", "vpnctl status"),
        ("follow it, a line per change, until Ctrl-C", "vpnctl status --watch"),
        ("the same as JSON, one record per line", "vpnctl status --watch --json"),
    ),
    "monitor": (
        ("a line for each thing that needs you, until Ctrl-C", "vpnctl monitor"),
        (
            "as desktop notifications too (the autostart file and the user unit run this)",
            "vpnctl monitor --notify",
        ),
    ),
    "disconnect": (
        ("end the connection and wait until the tunnel is down", "vpnctl disconnect"),
        ("return at once", "vpnctl disconnect --no-wait"),
    ),
    "location": (
        ("the secure-internet locations, the current one marked", "vpnctl location"),
        ("connect in the Netherlands from now on", "vpnctl location NL"),
    ),
    "remove": (("forget a server with its tokens and keys", "vpnctl remove vpn.example.org"),),
    "autoconnect": (
        (
            "connect a system-wide server at every start of vpnd",
            "vpnctl --system autoconnect vpn.example.org --profile employees",
        ),
        ("no longer", "vpnctl --system autoconnect vpn.example.org --off"),
    ),
    "discover": (
        ("search by name, in any language", "vpnctl discover 'universite de geneve'"),
        ("the organizations only", "vpnctl discover amsterdam --kind organization"),
        ("every server", "vpnctl discover"),
    ),
}


def epilog(command: str) -> str | None:
    """The examples block of a command's --help; None for a command without examples."""
    examples = EXAMPLES.get(command)
    if not examples:
        return None
    lines = ["examples:"]
    for what, line in examples:
        lines += [f"  # {what}", f"  {line}"]
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills a text of one line (a description) to the terminal's width, and keeps a
    text of several lines (examples, exit codes) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return argparse.HelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)
