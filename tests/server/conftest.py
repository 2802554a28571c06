"""Fixtures for the server conformance tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.proto.nts.cookie import CookieCodec, CookieKey


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """One CA and server certificate (localhost, 127.0.0.1, ::1) for the whole run."""
    return make_demo_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def codec() -> CookieCodec:
    return CookieCodec(CookieKey(7, bytes(range(16))))
