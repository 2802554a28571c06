"""Fixtures for the sans-I/O tests."""

from __future__ import annotations

import pytest

from gnomon.proto.nts.cookie import CookieCodec, CookieKey


@pytest.fixture
def codec() -> CookieCodec:
    return CookieCodec(CookieKey(7, bytes(range(16))))
