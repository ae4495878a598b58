"""What a test needs from the machine: skipped where it is missing, a failure under CI.

`make deps` installs every package, tool and account the suite uses, and CI
runs it before the tests. A skip there would hide a missing install step, so
with `CI=true` a missing prerequisite fails the test instead. Elsewhere (a
developer running pytest on a machine of their own) it skips, saying what
to install.
"""

from __future__ import annotations

import os
import pwd
import shutil
from typing import NoReturn

import pytest

MAKE_DEPS = "make deps installs it"


def under_ci() -> bool:
    """True when the suite runs as CI runs it (`CI=true`)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str, remedy: str = MAKE_DEPS) -> NoReturn:
    """End the test for a missing prerequisite: fail under CI, skip elsewhere."""
    if under_ci():
        pytest.fail(f"{reason} ({remedy}; under CI nothing may be skipped)", pytrace=False)
    pytest.skip(f"{reason} ({remedy})")


def require_root(what: str) -> None:
    """`what` (a sentence subject: "a system-type bus") needs root."""
    if os.geteuid() != 0:
        missing(f"{what} needs root", "run the tests as root, as make test does")


def require_tool(name: str, package: str) -> str:
    """The path of the command `name`, from the Debian package `package`."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian package {package})")
    return path


def require_account(name: str) -> pwd.struct_passwd:
    """The product's own account `name`, which only make deps creates."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        missing(f"the system user {name} is missing")
