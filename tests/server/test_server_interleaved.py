"""Interleaved client/server mode (draft-ietf-ntp-interleaved-modes, as chrony's server
does it): the responder in memory, then the UDP loop with kernel transmit timestamps on
a loopback socket (issue 15 item 2). chrony's ``xleave`` client against a real server is
in tests/interop/test_interleaved.py."""

from __future__ import annotations

import os
import socket
import struct
import sys

import pytest

from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec
from gnomon.proto.nts.ntp_server import NtpResponder, TimeSource
from gnomon.server.ntp import NtpService, open_ntp_socket

_NS = 1_000_000_000
_EPOCH = 2_208_988_800


def request(
    origin: int = 0, receive: int = 0, transmit: int = 0x1122334455667788, *, version: int = 4
) -> bytes:
    return struct.pack("!BBbb12xQQQQ", version << 3 | 3, 0, 6, 0, 0, origin, receive, transmit)


def fields(reply: bytes) -> tuple[int, int, int]:
    """origin, receive, transmit of a reply."""
    origin, receive, transmit = struct.unpack_from("!QQQ", reply, 24)
    return origin, receive, transmit


def ntp(unix_ns: int) -> int:
    return ((unix_ns << 32) // _NS + (_EPOCH << 32)) & (2**64 - 1)


@pytest.fixture
def responder(codec: CookieCodec) -> NtpResponder:
    return NtpResponder(codec, TimeSource(stratum=2), seed=os.urandom(RANDOM_LEN))


T0 = 1_800_000_000 * _NS


def test_receive_timestamps_odd_transmit_even(responder: NtpResponder) -> None:
    for step in range(4):
        reply = responder.respond(request(), T0 + step, lambda s=step: T0 + 1000 + s)
        assert reply is not None
        _, receive, transmit = fields(reply)
        assert receive & 1 == 1 and transmit & 1 == 0
        assert abs(receive - ntp(T0 + step)) <= 1 and abs(transmit - ntp(T0 + 1000 + step)) <= 1


def test_third_reply_of_an_interleaved_client_carries_the_previous_transmit(
    responder: NtpResponder,
) -> None:
    first = responder.respond(request(), T0, lambda: T0 + 10_000)
    assert first is not None and responder.tx_key == 0  # a basic request: nothing kept
    _, rx1, _ = fields(first)
    second = responder.respond(request(rx1, 111, 222), T0 + _NS, lambda: T0 + _NS + 10_000)
    assert second is not None
    origin2, rx2, _ = fields(second)
    assert origin2 == 222  # not found: a basic reply, but its transmit time is kept
    assert responder.tx_key == rx2
    responder.tx_key = 0
    responder.update_transmit(rx2, T0 + _NS + 60_000)  # the kernel: 50 µs later
    third = responder.respond(request(rx2, 333, 444), T0 + 2 * _NS, lambda: T0 + 2 * _NS)
    assert third is not None
    origin3, _, tx3 = fields(third)
    assert origin3 == 333  # the request's receive field: the client's T4 of reply 2
    assert abs(tx3 - ntp(T0 + _NS + 60_000)) <= 1 and tx3 & 1 == 0
    assert responder.interleaved == 1
    # The entry is spent: the same origin again gets a basic reply.
    again = responder.respond(request(rx2, 333, 555), T0 + 3 * _NS, lambda: T0 + 3 * _NS)
    assert again is not None and fields(again)[0] == 555


@pytest.mark.parametrize(
    "make",
    [
        lambda rx: request(rx, 7, 7),  # receive == transmit: a basic client's echo
        lambda rx: request(rx & ~1, 7, 8),  # an even origin: one of our transmit stamps
        lambda rx: request(rx, 7, 8, version=3),
    ],
    ids=["receive-equals-transmit", "even-origin", "version-3"],
)
def test_requests_that_are_not_interleaved_keep_nothing(
    responder: NtpResponder, make: object
) -> None:
    first = responder.respond(request(), T0, lambda: T0)
    assert first is not None
    _, rx1, _ = fields(first)
    build = make  # type: ignore[assignment]
    reply = responder.respond(build(rx1), T0 + 1, lambda: T0 + 1)  # type: ignore[operator]
    assert reply is not None and responder.tx_key == 0 and responder.interleaved == 0


def test_a_kernel_stamp_outside_a_second_after_the_reply_is_ignored(
    responder: NtpResponder,
) -> None:
    _, rx1, _ = fields(responder.respond(request(), T0, lambda: T0) or b"")
    _, rx2, tx2 = fields(responder.respond(request(rx1, 1, 2), T0, lambda: T0 + 5) or b"")
    responder.update_transmit(rx2, T0 - 1_000)  # before the reply was sealed
    responder.update_transmit(rx2, T0 + 2 * _NS)  # two seconds later
    third = responder.respond(request(rx2, 3, 4), T0 + 9, lambda: T0 + 9)
    assert third is not None and fields(third)[2] == tx2


def test_the_table_is_bounded_oldest_forgotten(codec: CookieCodec) -> None:
    responder = NtpResponder(codec, seed=os.urandom(RANDOM_LEN), interleaved_table=2)
    keys = []
    for i in range(3):
        _, rx, _ = fields(responder.respond(request(), T0 + i, lambda: T0) or b"")
        reply = responder.respond(request(rx, 1, 2), T0 + 10 + i, lambda: T0 + 20)
        keys.append(fields(reply or b"")[1])
    assert len(responder._transmits) == 2
    oldest = responder.respond(request(keys[0], 5, 6), T0 + 99, lambda: T0 + 99)
    newest = responder.respond(request(keys[2], 5, 6), T0 + 99, lambda: T0 + 99)
    assert fields(oldest or b"")[0] == 6 and fields(newest or b"")[0] == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timestamps")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loop_puts_the_kernel_transmit_time_in_the_next_interleaved_reply(
    responder: NtpResponder, host: str
) -> None:
    sock = open_ntp_socket(host, 0)
    client = socket.socket(sock.family, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        service = NtpService(responder, sock)
        assert service.transmit_stamps  # Linux: SO_TIMESTAMPING with OPT_ID, OPT_TSONLY

        def exchange(packet: bytes) -> bytes:
            client.sendto(packet, sock.getsockname()[:2])
            for _ in range(100):  # bounded: the datagram is on loopback already
                service.drain()
                try:
                    return client.recv(100, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
            raise AssertionError("no reply")

        _, rx1, _ = fields(exchange(request()))
        assert service.tx_stamps_read == 0  # basic clients cost no timestamps
        second = exchange(request(rx1, 111, 222))
        _, rx2, tx2 = fields(second)
        assert service.tx_stamps_read == 1
        kernel = responder._transmits[rx2]
        assert kernel != tx2 and 0 < kernel - tx2 < 1 << 32  # the kernel's, after sealing
        origin3, _, tx3 = fields(exchange(request(rx2, 333, 444)))
        assert (origin3, tx3) == (333, kernel)
        assert responder.interleaved == 1
    finally:
        client.close()
        sock.close()
