"""Local accounts a test needs for itself, and nothing else's.

Tests never create or change the product's own accounts (make deps does,
from data/systemd/vpnd-sysusers.conf). An account a test needs for itself,
such as a second local user, gets a name of its own and a GECOS mark with
the pid of the test process that made it. It is removed when the test is
done, also when it fails; one left by a run that was killed outright is
removed by the next run, which finds its mark with a pid that is gone.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SYSUSERS = Path(__file__).resolve().parents[2] / "data" / "systemd" / "vpnd-sysusers.conf"

_MARK = "vpnd test account, pid "
_MARK_RE = re.compile(re.escape(_MARK) + r"(\d+)$")


def sysusers_entries() -> list[list[str]]:
    """The lines of the product's sysusers file, split into their fields."""
    return [
        shlex.split(line)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def declared_home(name: str) -> str:
    """The home directory the sysusers file gives the product's account `name`."""
    [home] = [entry[4] for entry in sysusers_entries() if entry[:2] == ["u", name]]
    return home


class AccountError(Exception):
    """An account could not be made or is not a test account."""


def _owner_pid(entry: pwd.struct_passwd) -> int | None:
    match = _MARK_RE.fullmatch(entry.pw_gecos)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(name: str) -> None:
    subprocess.run(["userdel", name], check=False, capture_output=True)


def remove_stale(names: Sequence[str]) -> None:
    """Remove test accounts among `names` whose creating process has gone."""
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        pid = _owner_pid(entry)
        if pid is not None and not _alive(pid):
            _remove(name)


@contextmanager
def temporary_accounts(names: Sequence[str]) -> Iterator[list[int]]:
    """Create the accounts `names` for the duration of the block; yield their UIDs."""
    remove_stale(names)
    created: list[str] = []
    try:
        for name in names:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                pass
            else:
                raise AccountError(
                    f"the account {name} exists and is not this run's test account "
                    f"({entry.pw_gecos!r}); remove it or pick another name"
                )
            added = subprocess.run(
                ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 "--comment", f"{_MARK}{os.getpid()}", name],
                check=False, capture_output=True, text=True,
            )  # fmt: skip
            if added.returncode != 0:
                raise AccountError(f"useradd {name} failed: {added.stderr.strip()}")
            created.append(name)
        yield [pwd.getpwnam(name).pw_uid for name in names]
    finally:
        for name in created:
            _remove(name)
