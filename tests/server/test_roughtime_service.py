"""The Roughtime service (RoughtimeService.drain and flush) on loopback sockets.

The real sans-I/O core answers and gnomon's client verifier checks every response;
what is checked here is the service: batches share one signature per version, each
drop reason is counted and costs no signature, nothing is answered while the time
source is unsynchronised, no response is larger than its request, and admission
(ACL, rate limit) refuses before parsing. Both loops run: batched (recvmmsg and
sendmmsg) and the fallback (recvmsg and sendto).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.proto.acl import Acl
from gnomon.proto.nts.ntp_server import TimeSource
from gnomon.proto.ratelimit import RateLimiter
from gnomon.proto.roughtime.client import ClientRequest, build_request, verify_response
from gnomon.proto.roughtime.message import FRAME_HEADER, NONC, VER, ZZZZ, encode, frame, u32
from gnomon.proto.roughtime.server import RoughtimeServer
from gnomon.proto.roughtime.versions import DRAFT_11, DRAFT_12, VERSION_1
from gnomon.server import udp
from gnomon.server.roughtime import RadiusPolicy, RoughtimeClock, RoughtimeService
from gnomon.server.roughtime_keys import make_online_keys, public_key_of
from gnomon.server.udp import Admission, open_udp_socket

from .udp_clients import Clients, assert_no_reply, send

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux loop")

LONG_TERM = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = public_key_of(LONG_TERM)
SYNCED = TimeSource(leap=0, stratum=2)


class CountingKey:
    """An online key that counts its signatures."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.signatures = 0

    def sign(self, data: bytes) -> bytes:
        self.signatures += 1
        return self.key.sign(data)

    def public_key(self) -> Any:
        return self.key.public_key()


@pytest.fixture(scope="module")
def online() -> Any:
    (key,) = make_online_keys(LONG_TERM, int(time.time()) - 60, 1, 86400, 0)
    return key


@pytest.fixture
def core(online: Any) -> RoughtimeServer:
    server = RoughtimeServer(PUBLIC, online.private, online.delegation)
    server.online_key = CountingKey(online.private)  # type: ignore[assignment]
    return server


def signatures(core: RoughtimeServer) -> int:
    key = core.online_key
    assert isinstance(key, CountingKey)
    return key.signatures


@pytest.fixture
def server_socket(host: str) -> Iterator[socket.socket]:
    sock = open_udp_socket(host, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    yield sock
    sock.close()


MakeService = Callable[..., RoughtimeService]


@pytest.fixture(params=["batched", "fallback"])
def make_service(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, server_socket: socket.socket
) -> MakeService:
    if request.param == "fallback":
        monkeypatch.setattr(udp, "libc_mmsg", lambda: None)

    def make(
        core: RoughtimeServer | None,
        source: TimeSource = SYNCED,
        policy: RadiusPolicy | None = None,
        **kwargs: Any,
    ) -> RoughtimeService:
        clock = RoughtimeClock(policy or RadiusPolicy(), source)
        service = RoughtimeService(core, server_socket, clock, **kwargs)
        assert (service._batch is None) == (request.param == "fallback")
        return service

    return make


def request(versions: tuple[int, ...] = (VERSION_1,), **kwargs: Any) -> ClientRequest:
    return build_request(os.urandom(32), versions=versions, server_key=PUBLIC, **kwargs)


def drain_all(service: RoughtimeService, expected: int) -> None:
    """Drain until ``expected`` datagrams were read (loopback delivers at once; bounded)."""
    deadline = time.monotonic() + 5
    while service.received < expected and time.monotonic() < deadline:
        service.drain()
    service.flush()


def test_a_batch_of_64_mixed_versions_all_verify_with_one_signature_per_version(
    core: RoughtimeServer,
    make_service: MakeService,
    clients: Clients,
    server_socket: socket.socket,
) -> None:
    service = make_service(core, max_batch=64)
    offers = [(VERSION_1,), (DRAFT_12,), (VERSION_1, DRAFT_12), (DRAFT_11, DRAFT_12)]
    requests = [request(offers[i % len(offers)]) for i in range(64)]
    socks = clients(64)
    send(socks, [r.packet for r in requests], server_socket)
    drain_all(service, 64)
    versions = set()
    midpoint = int(time.time())
    for sock, sent in zip(socks, requests, strict=True):
        packet = sock.recv(4096)
        assert len(packet) <= len(sent.packet)
        reply = verify_response(sent, packet, PUBLIC)
        assert abs(reply.midpoint - midpoint) <= 2 and reply.radius >= 1
        versions.add(reply.version)
    assert versions == {VERSION_1, DRAFT_12}
    assert service.counters.outcomes == {"answered": 64}
    # One receive, one batch: one signature per version group (two here).
    if service._batch is not None:
        assert service.counters.batches == 1 and signatures(core) == 2
    else:
        assert signatures(core) == 2 * service.counters.batches


def test_every_drop_reason_is_counted_and_costs_no_signature(
    core: RoughtimeServer,
    make_service: MakeService,
    clients: Clients,
    server_socket: socket.socket,
) -> None:
    service = make_service(core)
    other = public_key_of(Ed25519PrivateKey.generate())
    short = request()
    packets = {
        "too_short": short.packet[:1000],
        "malformed": b"ROUGHTIM" + bytes(1016),
        "unknown_server": build_request(os.urandom(32), (VERSION_1,), server_key=other).packet,
        "no_common_version": request((DRAFT_11,)).packet,
    }
    socks = clients(len(packets))
    send(socks, list(packets.values()), server_socket)
    drain_all(service, len(packets))
    assert service.counters.outcomes == dict.fromkeys(packets, 1)
    assert signatures(core) == 0 and service.counters.batches == 0
    for sock in socks:
        assert_no_reply(sock)


def test_a_message_of_1024_bytes_in_a_longer_datagram_is_answered(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    """The padding trap: pyroughtime and the draft-19 examples send 1036-byte datagrams."""
    service = make_service(core)
    values = {VER: u32(VERSION_1), NONC: os.urandom(32)}
    bare = len(encode({**values, ZZZZ: b""}))
    packet = frame(encode({**values, ZZZZ: bytes(1024 - bare)}))
    assert len(packet) == 1024 + FRAME_HEADER
    (sock,) = clients(1)
    send([sock], [packet], server_socket)
    drain_all(service, 1)
    sent = ClientRequest(packet, values[NONC], (VERSION_1,))
    assert verify_response(sent, sock.recv(4096), PUBLIC).version == VERSION_1


def test_unsynchronised_time_is_never_signed(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    service = make_service(core, source=TimeSource())  # leap 3, stratum 16
    socks = clients(3)
    send(socks, [request().packet for _ in socks], server_socket)
    drain_all(service, 3)
    assert service.counters.outcomes == {"unsynchronized": 3}
    assert signatures(core) == 0
    for sock in socks:
        assert_no_reply(sock)


def test_local_clock_radius_answers_unsynchronised_with_that_radius(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    """The demo's setting: the local clock, vouched for by nobody, with a wide radius."""
    policy = RadiusPolicy(leap_information=False, local_clock_radius=10)
    service = make_service(core, source=TimeSource(), policy=policy)
    (sock,) = clients(1)
    sent = request()
    send([sock], [sent.packet], server_socket)
    drain_all(service, 1)
    assert verify_response(sent, sock.recv(4096), PUBLIC).radius == 10


def test_without_a_core_nothing_is_answered(
    make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    """No online key covers now (offline delegations ran out): counted, not answered."""
    service = make_service(None)
    socks = clients(2)
    send(socks, [request().packet for _ in socks], server_socket)
    drain_all(service, 2)
    assert service.counters.outcomes == {"no_key": 2}
    for sock in socks:
        assert_no_reply(sock)


@pytest.mark.parametrize("size", [1024, 1100, 1500, 2000])
def test_no_response_is_larger_than_its_request(
    size: int,
    core: RoughtimeServer,
    make_service: MakeService,
    clients: Clients,
    server_socket: socket.socket,
) -> None:
    service = make_service(core)
    socks = clients(5)
    requests = [request(size=size) for _ in socks]
    send(socks, [r.packet for r in requests], server_socket)
    drain_all(service, len(socks))
    for sock, sent in zip(socks, requests, strict=True):
        packet = sock.recv(4096)
        assert len(packet) <= len(sent.packet)
        verify_response(sent, packet, PUBLIC)


def test_a_denied_address_is_counted_and_never_parsed(
    core: RoughtimeServer,
    make_service: MakeService,
    clients: Clients,
    server_socket: socket.socket,
    host: str,
) -> None:
    admission = Admission(Acl(deny=["127.0.0.0/8", "::1/128"]))
    service = make_service(core, admission=admission)
    socks = clients(2)
    send(socks, [b"junk" * 300, request().packet], server_socket)
    deadline = time.monotonic() + 5
    while admission.denied < 2 and time.monotonic() < deadline:
        service.drain()
    assert admission.denied == 2
    assert service.counters.outcomes == {}  # neither parsed (the junk is not "malformed")
    for sock in socks:
        assert_no_reply(sock)


def test_rate_limit_drops_past_the_burst(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    limiter = RateLimiter(3600.0, 2, leak=0, kod=False)
    admission = Admission(limiter=limiter)
    service = make_service(core, admission=admission)
    (sock,) = clients(1)
    requests = [request() for _ in range(5)]
    send([sock] * 5, [r.packet for r in requests], server_socket)
    deadline = time.monotonic() + 5
    while admission.rate_limited + service.counters.outcomes.get("answered", 0) < 5:
        assert time.monotonic() < deadline
        service.drain()
    assert admission.rate_limited == 3
    assert service.counters.outcomes == {"answered": 2}
    answers = [sock.recv(4096) for _ in range(2)]
    assert_no_reply(sock)
    for packet, sent in zip(answers, requests[:2], strict=True):
        verify_response(sent, packet, PUBLIC)


def test_requests_wait_for_their_batch_at_most_max_wait(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    """Requests of two receives share one signature when the second comes within
    max_wait; a full batch is answered at once, without waiting."""

    async def scenario() -> None:
        service = make_service(core, max_batch=4, max_wait=30.0)
        socks = clients(6)
        requests = [request() for _ in socks]
        send(socks[:2], [r.packet for r in requests[:2]], server_socket)
        while service.pending < 2:
            service.drain()
        assert service.counters.batches == 0 and service.timer_armed
        send(socks[2:], [r.packet for r in requests[2:]], server_socket)
        while service.pending + 4 * service.counters.batches < 6:
            service.drain()
        assert service.counters.batches == 1  # the first four: the batch was full
        assert service.pending == 2 and service.timer_armed
        service.flush()  # as the timer would, max_wait after the fifth arrived
        assert service.counters.batches == 2 and signatures(core) == 2
        for sock, sent in zip(socks, requests, strict=True):
            verify_response(sent, sock.recv(4096), PUBLIC)

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_the_timer_flushes_a_waiting_batch(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        service = make_service(core, max_batch=64, max_wait=0.01)
        service.attach(loop)
        try:
            (sock,) = clients(1)
            sent = request()
            send([sock], [sent.packet], server_socket)
            reader = loop.sock_recv
            sock.setblocking(False)
            packet = await reader(sock, 4096)
            verify_response(sent, packet, PUBLIC)
        finally:
            service.detach(loop)

    asyncio.run(asyncio.wait_for(scenario(), 10))


class Oversized:
    """A core whose responses are one byte longer than the request, or empty."""

    def __init__(self, real: RoughtimeServer) -> None:
        self.real = real

    def parse_request(self, datagram: bytes) -> Any:
        return self.real.parse_request(datagram)

    def covers(self, unix_seconds: int) -> bool:
        return True

    def respond(self, requests: Any, midpoint: int, radius: int) -> list[bytes]:
        return [b"" if i % 2 else bytes(r.size + 1) for i, r in enumerate(requests)]


def test_a_response_larger_than_its_request_is_never_sent(
    core: RoughtimeServer, make_service: MakeService, clients: Clients, server_socket: socket.socket
) -> None:
    service = make_service(Oversized(core))
    socks = clients(4)
    send(socks, [request().packet for _ in socks], server_socket)
    drain_all(service, 4)
    assert service.counters.outcomes == {"oversized": 4}
    for sock in socks:
        assert_no_reply(sock)
