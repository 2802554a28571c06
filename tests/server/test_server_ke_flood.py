"""NTS-KE under a flood of idle connections from many source addresses (issue 11 item 6).

The flood opens TCP connections from fresh 127.x.y.z addresses at about 270 a
second and never sends a byte; meanwhile a client runs 20 NTS-KE exchanges.
Everything is bounded: the flood in count and time, each exchange by its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

from gnomon.certs import DemoPki
from gnomon.client.ke import ke_exchange
from gnomon.errors import GnomonError
from gnomon.tls import TrustStore

from .helpers import LOOPBACK, RawKeClient, base_config, running_server

FLOOD_RATE = 270.0  # new source addresses per second
FLOOD_MAX = 4000  # connections, at most
FLOOD_SECONDS = 20.0  # at most
HEAD_START = 1.5  # seconds of flood before the first exchange: the cap is full by then
EXCHANGES = 20


def _flood_address(index: int) -> str:
    """A fresh loopback address per connection (never 127.0.0.1, the client's)."""
    return f"127.{1 + (index >> 16) % 254}.{(index >> 8) & 255}.{index & 255}"


def _flood(port: int, stop: threading.Event, opened: list[socket.socket]) -> None:
    start = time.monotonic()
    for index in range(FLOOD_MAX):
        if stop.is_set() or time.monotonic() - start > FLOOD_SECONDS:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        opened.append(sock)
        sock.setblocking(False)  # a full backlog must not slow the flood down
        sock.bind((_flood_address(index), 0))
        sock.connect_ex((LOOPBACK, port))
        delay = start + (index + 1) / FLOOD_RATE - time.monotonic()
        if delay > 0:
            stop.wait(delay)


def _exchanges(port: int, trust: TrustStore) -> list[str]:
    time.sleep(HEAD_START)  # the flood fills the cap meanwhile
    outcomes = []
    for _ in range(EXCHANGES):
        try:
            result = ke_exchange(LOOPBACK, port, trust=trust, timeout=3.0)
        except GnomonError as exc:
            outcomes.append(f"failed: {exc}")
        else:
            outcomes.append("ok" if result.response.cookies else "no cookies")
    return outcomes


async def test_legitimate_clients_are_served_through_a_flood_of_idle_connections(
    pki: DemoPki,
) -> None:
    trust = TrustStore.from_file(pki.ca_cert)
    stop = threading.Event()
    opened: list[socket.socket] = []
    async with running_server(base_config(pki)) as server:  # 256 connections, 5 s each
        port = server.bound_ke_port
        flood = asyncio.create_task(asyncio.to_thread(_flood, port, stop, opened))
        try:
            outcomes = await asyncio.to_thread(_exchanges, port, trust)
        finally:
            stop.set()
            await flood
            service = server.ke_service
            assert service is not None
            at_cap = service.active
            for sock in opened:
                with contextlib.suppress(OSError):
                    sock.close()
    flooded = len(opened)
    assert flooded >= 300  # the flood did run
    assert at_cap >= 200  # and kept the server near its cap of 256
    ok = outcomes.count("ok")
    assert ok >= 18, outcomes


async def test_a_connection_refused_when_full_is_not_charged_to_its_address(
    pki: DemoPki,
) -> None:
    """Two busy connections fill a cap of 2; the third, from an address allowed one
    connection per hour, is refused for capacity and must keep its allowance."""
    config = base_config(pki, ke_max_connections=2, ke_rate_burst=1, ke_rate_interval=3600.0)
    async with running_server(config) as server:
        port = server.bound_ke_port
        busy = [RawKeClient(port, source=f"127.0.9.{i}") for i in (1, 2)]
        try:
            for client in busy:
                await asyncio.to_thread(client.handshake)  # TLS up: not idle, not evictable
            with socket.create_connection((LOOPBACK, port), timeout=5) as refused:
                assert await asyncio.to_thread(refused.recv, 1) == b""
            service = server.ke_service
            assert service is not None and service.rejected == 1
        finally:
            for client in busy:
                client.close()
        trust = TrustStore.from_file(pki.ca_cert)
        async with asyncio.timeout(5):
            while service.active:
                await asyncio.sleep(0.01)
        result = await asyncio.to_thread(ke_exchange, LOOPBACK, port, trust=trust, timeout=3.0)
    assert result.response.cookies
    assert service.rate_limited == 0
