"""Fixtures for the server conformance tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.proto.nts.cookie import CookieCodec, CookieKey

from .udp_clients import Clients


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    """One CA and server certificate (localhost, 127.0.0.1, ::1) for the whole run."""
    return make_demo_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def codec() -> CookieCodec:
    return CookieCodec(CookieKey(7, bytes(range(16))))


@pytest.fixture(params=["127.0.0.1", "::1"])
def host(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clients(host: str) -> Iterator[Clients]:
    """``clients(n)``: n bound client sockets on the server's address family, closed after."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    made: list[socket.socket] = []

    def make(count: int) -> list[socket.socket]:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.settimeout(2)
            made.append(sock)
        return made[-count:]

    yield make
    for sock in made:
        sock.close()
