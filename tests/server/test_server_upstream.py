"""Where stratum and leap come from: the upstream poller against a fake upstream on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gnomon.certs import DemoPki
from gnomon.proto.nts.ntp import (
    HEADER_LEN,
    MODE_SERVER,
    NtpHeader,
    seconds_to_short,
    unix_ns_to_ntp,
)
from gnomon.proto.nts.ntp_server import TimeSource
from gnomon.server.upstream import UpstreamPoller

from .helpers import LOOPBACK, ManualClock, base_config, plain_request, running_server, udp_ask


@dataclass
class Upstream:
    """What the fake upstream answers with."""

    leap: int = 0
    stratum: int = 2
    root_delay: float = 0.010
    root_dispersion: float = 0.002
    wrong_origin: bool = False
    answered: int = 0


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, state: Upstream) -> None:
        self.state = state
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < HEADER_LEN or self.transport is None:
            return
        request = NtpHeader.decode(data)
        now = unix_ns_to_ntp(time.time_ns())
        state = self.state
        reply = NtpHeader(
            leap=state.leap,
            version=4,
            mode=MODE_SERVER,
            stratum=state.stratum,
            precision=-24,
            root_delay=seconds_to_short(state.root_delay),
            root_dispersion=seconds_to_short(state.root_dispersion),
            reference_id=b"GPS\x00" if state.stratum == 1 else b"\x0a\x00\x00\x01",
            reference_ts=now,
            origin_ts=request.transmit_ts ^ (1 if state.wrong_origin else 0),
            receive_ts=now,
            transmit_ts=now,
        )
        state.answered += 1
        self.transport.sendto(reply.encode(), addr)


@contextlib.asynccontextmanager
async def fake_upstream(state: Upstream) -> AsyncIterator[tuple[int, asyncio.DatagramTransport]]:
    """A plain NTP server on loopback; yields (port, transport): close the transport to stop it."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(state), local_addr=(LOOPBACK, 0)
    )
    try:
        yield transport.get_extra_info("sockname")[1], transport
    finally:
        transport.close()


def poller(
    port: int, published: list[TimeSource], hold: float = 60.0, clock: ManualClock | None = None
) -> UpstreamPoller:
    return UpstreamPoller(
        LOOPBACK, port, published.append, hold=hold, timeout=0.3, clock=clock or ManualClock()
    )


@pytest.mark.parametrize("upstream_stratum", [1, 2, 14])
async def test_stratum_is_upstream_plus_one(upstream_stratum: int) -> None:
    published: list[TimeSource] = []
    async with fake_upstream(Upstream(stratum=upstream_stratum)) as (port, _):
        poll = poller(port, published)
        await poll.poll_once()
    assert poll.synchronized
    (source,) = published
    assert source.stratum == upstream_stratum + 1
    assert source.leap == 0
    assert source.reference_id == bytes([127, 0, 0, 1])  # the upstream's IPv4 address
    assert source.root_delay >= seconds_to_short(0.010)
    assert source.root_dispersion >= seconds_to_short(0.002)


async def test_leap_warning_passed_on() -> None:
    published: list[TimeSource] = []
    async with fake_upstream(Upstream(leap=1)) as (port, _):
        await poller(port, published).poll_once()
    assert published[-1].leap == 1


@pytest.mark.parametrize(
    "state",
    [
        Upstream(leap=3, stratum=2),  # upstream itself unsynchronised
        Upstream(leap=0, stratum=16),
        Upstream(leap=0, stratum=15),  # we would be 16
        Upstream(leap=3, stratum=0),  # kiss-o'-death
        Upstream(wrong_origin=True),  # not an answer to our request
    ],
    ids=["leap3", "stratum16", "stratum15", "kiss", "wrong-origin"],
)
async def test_unusable_upstream_answer_does_not_synchronise(state: Upstream) -> None:
    published: list[TimeSource] = []
    async with fake_upstream(state) as (port, _):
        poll = poller(port, published)
        await poll.poll_once()
    assert state.answered == 1
    assert not poll.synchronized
    assert published == []  # still the initial, unsynchronised, source


async def test_upstream_lost_turns_unsynchronised_after_hold() -> None:
    published: list[TimeSource] = []
    hold = 60.0
    clock = ManualClock()
    async with fake_upstream(Upstream(stratum=2)) as (port, transport):
        poll = poller(port, published, hold=hold, clock=clock)
        await poll.poll_once()
        assert poll.synchronized and published[-1].stratum == 3
        transport.close()  # the upstream goes away
        clock.advance(hold)
        await poll.poll_once()  # a miss within the hold: nothing changes
        assert poll.synchronized and len(published) == 1
        clock.advance(0.5)
        await poll.poll_once()  # a miss past the hold: unsynchronised
    assert not poll.synchronized
    assert len(published) == 2
    assert published[-1] == TimeSource()
    assert (published[-1].leap, published[-1].stratum) == (3, 16)


async def test_upstream_back_resynchronises() -> None:
    published: list[TimeSource] = []
    clock = ManualClock()
    async with fake_upstream(Upstream(stratum=2)) as (port, transport):
        poll = poller(port, published, hold=30.0, clock=clock)
        await poll.poll_once()
        transport.close()
        clock.advance(31.0)
        await poll.poll_once()
        assert not poll.synchronized
    async with fake_upstream(Upstream(stratum=4)) as (port2, _):
        poll.port = port2
        await poll.poll_once()
    assert poll.synchronized
    assert [s.stratum for s in published] == [3, 16, 5]


async def test_server_announces_upstream_stratum_plus_one(pki: DemoPki) -> None:
    async with fake_upstream(Upstream(stratum=2)) as (port, _):
        config = base_config(pki, upstream=f"{LOOPBACK}:{port}", hold=30.0)
        async with running_server(config) as server:
            async with asyncio.timeout(5):
                while server.ntp.time_source.stratum == 16:
                    await asyncio.sleep(0.02)
            reply = await asyncio.to_thread(udp_ask, server.bound_ntp_port, plain_request())
    assert reply is not None
    header = NtpHeader.decode(reply)
    assert (header.leap, header.stratum) == (0, 3)
    assert header.reference_id == bytes([127, 0, 0, 1])


async def test_server_without_upstream_is_unsynchronised(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        reply = await asyncio.to_thread(udp_ask, server.bound_ntp_port, plain_request())
    assert reply is not None
    header = NtpHeader.decode(reply)
    assert (header.leap, header.stratum) == (3, 16)


@pytest.mark.parametrize(("host", "port"), [(LOOPBACK, 70000), ("no such host.invalid", 123)])
async def test_poller_survives_an_unusable_upstream_address(host: str, port: int) -> None:
    published: list[TimeSource] = []
    poll = UpstreamPoller(host, port, published.append, hold=0.01, timeout=0.2)
    await poll.poll_once()  # must not raise: a dead poller would never resynchronise
    assert not poll.synchronized and published == []
