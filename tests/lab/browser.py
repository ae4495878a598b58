"""Play the user's browser against the lab portal: open the page, approve, follow the redirect.

As a command (usable as $BROWSER): ``python -m tests.lab.browser URL``. It reads
the CA to trust from ``VPND_LAB_CA``; ``VPND_LAB_DENY=1`` denies instead of
approving; ``VPND_LAB_BROWSER_LOG=FILE`` appends the callback page's text to
FILE. It runs the whole flow, prints nothing on success, and exits: 0 when the
loopback callback answered, 1 otherwise (the reason on stderr).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import ssl
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

_MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


class BrowserError(RuntimeError):
    """The portal did not lead to the loopback callback the way a browser expects."""


class _FormParser(HTMLParser):
    """Collects the first form's action and its named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._seen_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form" and not self._seen_form:
            self._in_form = self._seen_form = True
            self.action = attributes.get("action", "")
        elif (
            tag == "input"
            and self._in_form
            and attributes.get("name")
            and attributes.get("type", "text") not in ("submit", "button")
        ):
            self.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        return False
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def final_address(url: str, *, ca_file: str, approve: bool = True, timeout: float = 10) -> str:
    """The browser's part up to the loopback: the address it is finally sent to,
    without loading it (as a browser on another device, where it fails to load)."""
    context = ssl.create_default_context(cafile=ca_file)
    with httpx.Client(verify=context, timeout=timeout, trust_env=False) as portal:
        response = portal.get(url)
        # A login shortcut first sends the browser on to the authorization page.
        for _ in range(_MAX_REDIRECTS):
            location = urljoin(str(response.url), response.headers.get("location", ""))
            if response.status_code not in _REDIRECTS or not location.startswith("https://"):
                break
            response = portal.get(location)
        if response.status_code == 200:
            parser = _FormParser()
            parser.feed(response.text)
            if parser.action is None:
                raise BrowserError(f"no form on the authorization page {url}")
            fields = dict(parser.fields)
            fields["approve"] = "yes" if approve else "no"
            response = portal.post(urljoin(str(response.url), parser.action), data=fields)
        for _ in range(_MAX_REDIRECTS):
            if response.status_code not in _REDIRECTS:
                raise BrowserError(
                    f"the portal answered {response.status_code} at {response.url}: "
                    f"{response.text[:200]}"
                )
            location = urljoin(str(response.url), response.headers.get("location", ""))
            if _is_loopback_http(location):
                break
            if urlsplit(location).scheme != "https":
                raise BrowserError(f"refusing to follow a redirect to {location}")
            response = portal.get(location)
        else:
            raise BrowserError("too many redirects")
    return str(location)


def approve(url: str, *, ca_file: str, approve: bool = True, timeout: float = 10) -> str:
    """Play the user's browser: GET the authorization URL (trusting ca_file), submit the Approve form, follow the 302 to the loopback callback, return the callback page's text.

    A redirect with a fragment (the implicit grant of API v1) is handed on as
    the callback page's script does: posted back to the page's path.
    """
    location = final_address(url, ca_file=ca_file, approve=approve, timeout=timeout)
    # The callback is served by the application on the loopback, in plain HTTP.
    # A browser never sends the fragment (the implicit grant's token is there).
    address, _, fragment = location.partition("#")
    with httpx.Client(timeout=timeout, trust_env=False) as loopback:
        page = loopback.get(address)
        if not fragment:
            return page.text
        # What the page's script does, played here without a JavaScript
        # engine: post the fragment back to the page's own path.
        if "window.location.hash" not in page.text:
            raise BrowserError(f"the page at {address} does not read the fragment: {page.text[:200]}")
        return loopback.post(
            address.partition("?")[0],
            content=fragment.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ).text


def write_browser_script(
    directory: Path, *, ca_file: str | None = None, deny: bool = False
) -> Path:
    """Write an executable that runs this module, for use as $BROWSER; returns its path.

    `ca_file` and `deny` become defaults that the environment variables still override.
    """
    root = Path(__file__).resolve().parents[2]
    lines = ["#!/bin/sh"]
    if ca_file is not None:
        lines.append(f'VPND_LAB_CA="${{VPND_LAB_CA:-{shlex.quote(ca_file)}}}"; export VPND_LAB_CA')
    if deny:
        lines.append('VPND_LAB_DENY="${VPND_LAB_DENY:-1}"; export VPND_LAB_DENY')
    lines.append(f"PYTHONPATH={shlex.quote(str(root))}; export PYTHONPATH")
    lines.append(f'exec {shlex.quote(sys.executable)} -m tests.lab.browser "$@"')
    path = directory / "lab-browser"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: approve (or deny) one authorization URL and exit."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.lab.browser URL", file=sys.stderr)
        return 2
    ca_file = os.environ.get("VPND_LAB_CA")
    if not ca_file:
        print("lab browser: set VPND_LAB_CA to the lab CA certificate", file=sys.stderr)
        return 2
    try:
        text = approve(args[0], ca_file=ca_file, approve=os.environ.get("VPND_LAB_DENY") != "1")
    except (BrowserError, httpx.HTTPError, OSError) as exc:
        print(f"lab browser: {exc}", file=sys.stderr)
        return 1
    log = os.environ.get("VPND_LAB_BROWSER_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
