"""Turning vpnd's property dictionaries into records, text for people and JSON.

Each kind of answer goes through one record (a dict with stable snake_case
keys, plain values, Unix times and ISO strings); the JSON output is that
record, and the text for people is drawn from it. Nothing here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vpnctl.contract import DISCONNECTED, FAILED

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: int) -> str:
    """A byte count for people: "512 B", "1.5 KiB", "3.2 GiB"."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        # Compare what will be printed: 1023.97 would show as "1024.0".
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def format_duration(seconds: float) -> str:
    """A span of time in the two largest units that matter: "89 days", "3 hours, 5 minutes"."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days >= 7:
        return _plural(days, "day")
    if days:
        return _plural(days, "day") + (f", {_plural(hours, 'hour')}" if hours else "")
    if hours:
        return _plural(hours, "hour") + (f", {_plural(minutes, 'minute')}" if minutes else "")
    if minutes:
        return _plural(minutes, "minute")
    return "less than a minute"


def format_relative(timestamp: int, now: float) -> str:
    """When a Unix time is, seen from now: "in 89 days", "2 hours ago"."""
    delta = timestamp - now
    if delta >= 0:
        return "in " + format_duration(delta)
    return format_duration(delta) + " ago"


def format_local_time(timestamp: int) -> str:
    """A Unix time in the local time zone, to the minute."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(timestamp))


def iso_utc(timestamp: int | None) -> str | None:
    """A Unix time as an ISO 8601 UTC string, None for None."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _time_or_none(value: Any) -> int | None:
    """vpnd's Unix time properties use 0 for "unknown"; records say None."""
    return int(value) if value else None


def _text_or_none(value: Any) -> str | None:
    return str(value) if value else None


def to_json(value: Any) -> str:
    """A record (or a list of them) as indented JSON."""
    import json  # only the --json outputs need it

    return json.dumps(value, indent=2, ensure_ascii=False)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart, no trailing blanks."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# --- status ---------------------------------------------------------------


def status_record(connection: str | None, properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status record of a connection object ("/" or None: no connection)."""
    if not connection or connection == "/" or properties is None:
        connection, properties = None, {}
    connected_since = _time_or_none(properties.get("ConnectedSince"))
    session_expiry = _time_or_none(properties.get("SessionExpiry"))
    return {
        "state": str(properties.get("State") or DISCONNECTED),
        "detail": _text_or_none(properties.get("Detail")),
        "connection": connection,
        "server": _text_or_none(properties.get("Server")),
        "server_url": _text_or_none(properties.get("ServerUrl")),
        "profile": _text_or_none(properties.get("Profile")),
        "tunnel_ip": _text_or_none(properties.get("TunnelIP")),
        "tunnel_ipv6": _text_or_none(properties.get("TunnelIPv6")),
        "remote": _text_or_none(properties.get("Remote")),
        "bytes_in": int(properties.get("BytesIn", 0)),
        "bytes_out": int(properties.get("BytesOut", 0)),
        "connected_since": connected_since,
        "connected_since_iso": iso_utc(connected_since),
        "session_expiry": session_expiry,
        "session_expiry_iso": iso_utc(session_expiry),
        "error": _text_or_none(properties.get("Error")),
        "error_message": _text_or_none(properties.get("ErrorMessage")),
        "prompt": prompt_record(properties.get("Prompt")),
        "dns_servers": [str(s) for s in properties.get("DnsServers", ())],
        "dns_domains": [str(d) for d in properties.get("DnsDomains", ())],
    }


def prompt_record(prompt: Any) -> dict[str, Any] | None:
    """Connection1.Prompt as a record: None when nothing is asked."""
    if not isinstance(prompt, Mapping) or not prompt.get("id"):
        return None
    return {
        "id": int(prompt["id"]),
        "kind": str(prompt.get("kind", "")),
        "message": str(prompt.get("message", "")),
        "url": _text_or_none(prompt.get("url")),
        "fields": [
            {"name": str(name), "label": str(label), "echo": bool(echo), "required": bool(req)}
            for name, label, echo, req in prompt.get("fields", ())
        ],
    }


def describe_state(state: str, detail: str | None) -> str:
    """A state with openvpn's detail, if any: "connecting (AUTH)"."""
    return f"{state} ({detail})" if detail else state


def render_status(record: Mapping[str, Any], now: float) -> str:
    """A status record for people, one "Label: value" line per known fact."""
    state = record["state"]
    lines: list[tuple[str, str]] = [("State", describe_state(state, record["detail"]))]
    if record["server_url"]:
        lines.append(("Server", record["server_url"]))
    if record["profile"]:
        lines.append(("Profile", record["profile"]))
    addresses = [a for a in (record["tunnel_ip"], record["tunnel_ipv6"]) if a]
    if addresses and state not in (DISCONNECTED, FAILED):
        lines.append(("Tunnel IP", ", ".join(addresses)))
    if record["remote"] and state not in (DISCONNECTED, FAILED):
        lines.append(("Remote", record["remote"]))
    if record.get("dns_servers") or record.get("dns_domains"):
        lines.append(("DNS", " ".join([*record["dns_servers"], *record["dns_domains"]])))
    if record["bytes_in"] or record["bytes_out"]:
        lines.append(
            (
                "Traffic",
                f"{format_bytes(record['bytes_in'])} received, "
                f"{format_bytes(record['bytes_out'])} sent",
            )
        )
    since = record["connected_since"]
    if since and state not in (DISCONNECTED, FAILED):
        lines.append(
            ("Connected", f"since {format_local_time(since)} ({format_duration(now - since)})")
        )
    expiry = record["session_expiry"]
    if expiry and record["connection"]:
        label = "Session ends" if expiry > now else "Session ended"
        lines.append((label, f"{format_local_time(expiry)} ({format_relative(expiry, now)})"))
    prompt = record.get("prompt")
    if prompt:
        lines.append(("Asks", prompt["message"] + (f" {prompt['url']}" if prompt["url"] else "")))
    if state == FAILED or record["error_message"]:
        lines.append(("Error", record["error_message"] or record["error"] or "unknown error"))
    width = max(len(label) for label, _ in lines) + 1
    return "\n".join(f"{label + ':':<{width}} {value}" for label, value in lines)


# --- servers --------------------------------------------------------------


def server_records(servers: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of ListServers' answer (object path → Server1 properties), sorted by URL."""
    records = []
    for path, properties in servers.items():
        expiry = _time_or_none(properties.get("SessionExpiry"))
        records.append(
            {
                "url": str(properties.get("Url", "")),
                "host": str(properties.get("Host", "")),
                "kind": str(properties.get("Kind", "")),
                "object_path": path,
                "authorized": bool(properties.get("Authorized", False)),
                "authorization_pending": bool(properties.get("AuthorizationPending", False)),
                "session_expiry": expiry,
                "session_expiry_iso": iso_utc(expiry),
                "autoconnect": _text_or_none(properties.get("Autoconnect")),
                "display_name": _text_or_none(properties.get("DisplayName")),
                "support_contact": [str(c) for c in properties.get("SupportContact", ())],
            }
        )
    records.sort(key=lambda record: (record["url"], record["object_path"]))
    return records


def _authorization_word(record: Mapping[str, Any]) -> str:
    if record["authorization_pending"]:
        return "pending"
    return "yes" if record["authorized"] else "no"


def render_servers(records: Sequence[Mapping[str, Any]], now: float) -> str:
    """Server records as a table for people."""
    if not records:
        return "No servers. Add one with `vpnctl add URL`."
    rows = []
    for record in records:
        expiry = record["session_expiry"]
        ends = f"{format_local_time(expiry)} ({format_relative(expiry, now)})" if expiry else "-"
        url = record["url"]
        if record.get("autoconnect"):
            url += f" (connects at start: {record['autoconnect']})"
        rows.append((url, _authorization_word(record), ends))
    return _table(("URL", "AUTHORIZED", "SESSION ENDS"), rows)


# --- messages -------------------------------------------------------------


def message_records(url: str, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of one server's GetMessages answer, newest first."""
    records = []
    for message in messages:
        date_time, begin, end = (
            _time_or_none(message.get(key)) for key in ("date_time", "begin", "end")
        )
        records.append(
            {
                "server_url": url,
                "type": str(message.get("type", "")),
                "text": str(message.get("text", "")),
                "date_time": date_time,
                "date_time_iso": iso_utc(date_time),
                "begin": begin,
                "begin_iso": iso_utc(begin),
                "end": end,
                "end_iso": iso_utc(end),
            }
        )
    records.sort(key=lambda record: int(record["date_time"] or 0), reverse=True)
    return records


def render_messages(records: Sequence[Mapping[str, Any]]) -> str:
    """Message records for people: one paragraph each."""
    if not records:
        return "No messages."
    paragraphs = []
    for record in records:
        when = format_local_time(record["date_time"]) if record["date_time"] else "undated"
        head = f"{record['server_url']} — {record['type']}, {when}"
        if record["begin"] and record["end"]:
            head += (
                f" (maintenance from {format_local_time(record['begin'])}"
                f" to {format_local_time(record['end'])})"
            )
        paragraphs.append(f"{head}\n  {record['text']}")
    return "\n\n".join(paragraphs)


# --- profiles -------------------------------------------------------------


def profile_records(profiles: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of GetProfiles' answer, in the server's order."""
    return [
        {
            "profile_id": str(profile.get("profile_id", "")),
            "display_name": str(profile.get("display_name", "")),
            "default_gateway": bool(profile.get("default_gateway", False)),
            "vpn_proto_list": [str(proto) for proto in profile.get("vpn_proto_list", [])],
        }
        for profile in profiles
    ]


def render_profiles(records: Sequence[Mapping[str, Any]]) -> str:
    """Profile records as a table for people."""
    if not records:
        return "The server offers no profiles."
    rows = [
        (
            record["profile_id"],
            record["display_name"],
            "yes" if record["default_gateway"] else "no",
            ", ".join(record["vpn_proto_list"]),
        )
        for record in records
    ]
    return _table(("PROFILE", "NAME", "DEFAULT GATEWAY", "PROTOCOLS"), rows)


# --- discovery ------------------------------------------------------------

_DISCOVERY_SECTIONS = (
    ("institute-access", "Institute access"),
    ("organization", "Organizations"),
    ("secure-internet", "Secure internet"),
)


def discovery_records(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records of Discover's answer, best first."""
    return [
        {
            "kind": str(result.get("kind", "")),
            "display_name": str(result.get("display_name", "")),
            "base_url": str(result.get("base_url", "")),
            "org_id": str(result.get("org_id", "")),
            "secure_internet_home": str(result.get("secure_internet_home", "")),
            "country_code": str(result.get("country_code", "")),
            "support_contact": [str(item) for item in result.get("support_contact", [])],
            "score": float(result.get("score", 0.0)),
            "match": str(result.get("match", "")),
            "list_error": str(result.get("list_error", "")),
        }
        for result in results
    ]


def render_discovery(records: Sequence[Mapping[str, Any]]) -> str:
    """Discovery records for people: institute access, organizations and secure
    internet apart, each best first."""
    if not records:
        return "No matches."
    parts = []
    for kind, title in _DISCOVERY_SECTIONS:
        chosen = [record for record in records if record["kind"] == kind]
        if not chosen:
            continue
        if kind == "organization":
            table = _table(
                ("NAME", "ORGANIZATION ID"),
                [(record["display_name"], record["org_id"]) for record in chosen],
            )
        elif kind == "secure-internet":
            table = _table(
                ("COUNTRY", "NAME", "URL"),
                [
                    (record["country_code"] or "-", record["display_name"], record["base_url"])
                    for record in chosen
                ],
            )
        else:
            table = _table(
                ("NAME", "URL"), [(record["display_name"], record["base_url"]) for record in chosen]
            )
        parts.append(f"{title}:\n" + "\n".join("  " + line for line in table.splitlines()))
    return "\n\n".join(parts)


def discovery_notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per list that answered from its kept copy, saying why."""
    errors = dict.fromkeys(record["list_error"] for record in records if record["list_error"])
    return [f"showing a kept copy of a discovery list: {error}" for error in errors]
