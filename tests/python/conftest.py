"""Shared fixtures for the Python tests: where the thaw under test listens, and its token.

The suite that runs these starts a ``thaw serve`` and sets ``THAW_URL`` (and
``THAW_TOKEN`` when it configured one). Without ``THAW_URL`` the tests that need a
server are skipped; the others still run.
"""

import os
from typing import Optional

import pytest


@pytest.fixture(scope="session")
def thaw_url() -> str:
    url = os.environ.get("THAW_URL")
    if not url:
        # Under `make test` (tests/e2e/python_clients.rs) a missing server is a failure.
        if os.environ.get("THAW_REQUIRE_LIVE"):
            pytest.fail("THAW_REQUIRE_LIVE is set but THAW_URL is not")
        pytest.skip("THAW_URL is not set: no thaw serve to test against")
    return url


@pytest.fixture(scope="session")
def thaw_token() -> Optional[str]:
    return os.environ.get("THAW_TOKEN") or None
