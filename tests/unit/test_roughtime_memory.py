"""gnomon's Roughtime client and server objects against each other, in memory."""

from __future__ import annotations

import os

import pytest
from roughtime_helpers import MIDPOINT, make_server

from gnomon.errors import RoughtimeError, RoughtimeVerificationError
from gnomon.proto.roughtime import (
    DRAFT_12,
    VERSION_1,
    DropReason,
    Request,
    build_request,
    verify_response,
)

OFFERS = [(VERSION_1,), (DRAFT_12,), (VERSION_1, DRAFT_12), (DRAFT_12, 0x8000000B)]


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 17, 31, 32, 33, 63, 64])
def test_batches_of_mixed_versions_all_verify(batch: int) -> None:
    server, public = make_server()
    requests = [
        build_request(os.urandom(32), OFFERS[i % len(OFFERS)], public if i % 2 else None)
        for i in range(batch)
    ]
    admitted = [server.parse_request(r.packet) for r in requests]
    assert all(isinstance(a, Request) for a in admitted)
    responses = server.respond([a for a in admitted if isinstance(a, Request)], MIDPOINT, 5)
    assert len(responses) == batch
    versions = set()
    for request, response in zip(requests, responses, strict=True):
        assert 0 < len(response) <= len(request.packet)
        reply = verify_response(request, response, public)
        assert (reply.midpoint, reply.radius) == (MIDPOINT, 5)
        assert reply.version in request.versions
        versions.add(reply.version)
    if batch >= 2:
        assert versions == {VERSION_1, DRAFT_12}


def test_one_signature_per_version_group(monkeypatch: pytest.MonkeyPatch) -> None:
    server, public = make_server()
    calls: list[bytes] = []
    real_sign = server.online_key.sign

    class CountingKey:
        def sign(self, data: bytes) -> bytes:
            calls.append(data)
            return real_sign(data)

    server.online_key = CountingKey()  # type: ignore[assignment]
    requests = [build_request(os.urandom(32), OFFERS[i % 2], public) for i in range(64)]
    admitted = [server.parse_request(r.packet) for r in requests]
    server.respond([a for a in admitted if isinstance(a, Request)], MIDPOINT, 3)
    assert len(calls) == 2


def test_a_response_from_another_request_does_not_verify() -> None:
    server, public = make_server()
    first, second = (build_request(os.urandom(32), (VERSION_1,), public) for _ in range(2))
    admitted = [server.parse_request(first.packet), server.parse_request(second.packet)]
    responses = server.respond([a for a in admitted if isinstance(a, Request)], MIDPOINT, 3)
    with pytest.raises(RoughtimeVerificationError):
        verify_response(first, responses[1], public)
    _, other_public = make_server(seed=7)
    with pytest.raises(RoughtimeVerificationError):
        verify_response(first, responses[0], other_public)


def test_admission_drops_without_signing() -> None:
    server, public = make_server()
    _, other = make_server(seed=9)
    good = build_request(os.urandom(32), (VERSION_1,), public).packet
    assert server.parse_request(good[:1023]) is DropReason.too_short
    assert server.parse_request(b"\x00" * 1024) is DropReason.malformed
    unknown = build_request(os.urandom(32), (VERSION_1,), other).packet
    assert server.parse_request(unknown) is DropReason.unknown_server
    old = build_request(os.urandom(32), (0x8000000B,), public).packet
    assert server.parse_request(old) is DropReason.no_common_version
    # a 1036-byte request (1024-byte message) is accepted too
    long = build_request(os.urandom(32), (VERSION_1,), public, size=1036).packet
    assert len(long) == 1036
    assert isinstance(server.parse_request(long), Request)


def test_midpoint_outside_the_delegation_is_refused() -> None:
    server, public = make_server()
    request = server.parse_request(build_request(os.urandom(32), (1,), public).packet)
    assert isinstance(request, Request)
    with pytest.raises(RoughtimeError):
        server.respond([request], MIDPOINT + 2 * 86400, 3)
    with pytest.raises(RoughtimeError):
        server.respond([request], MIDPOINT, 0)


def test_a_request_read_from_a_reused_buffer_is_kept() -> None:
    server, public = make_server()
    request = build_request(os.urandom(32), (VERSION_1,), public)
    buffer = bytearray(request.packet)
    admitted = server.parse_request(memoryview(buffer))
    assert isinstance(admitted, Request)
    buffer[:] = bytes(len(buffer))  # the next datagram lands in the same buffer
    response = server.respond([admitted], MIDPOINT, 3)[0]
    assert verify_response(request, response, public).midpoint == MIDPOINT
