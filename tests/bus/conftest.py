"""Bus tests use a portal with no tunnel behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.pki import LabPKI
from tests.lab.portal import TestPortal


@pytest.fixture(scope="session")
def session_portal(lab_pki: LabPKI) -> Iterator[TestPortal]:
    with TestPortal(lab_pki) as portal:
        yield portal


@pytest.fixture
def portal(session_portal: TestPortal) -> Iterator[TestPortal]:
    session_portal.reset()
    yield session_portal
    session_portal.reset()
