"""The UDP loop (NtpService.drain) on a real loopback socket.

The responder is a stand-in, so what is checked is the loop, batched (``recvmmsg`` and
``sendmmsg``) and in its fallback (``recvmsg`` and ``sendto``, where libc has neither):
every reply reaches the address its request came from with the kernel's receive
timestamp, a failing or silent request costs only itself; batched, a reply the kernel
refuses is skipped without losing the rest, and sealed replies wait for their
``sendmmsg`` no longer than the loop's bound.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from gnomon.server import ntp, udp
from gnomon.server.ntp import NtpService, open_ntp_socket

from .udp_clients import Clients, assert_no_reply, send

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux loop")


class Echo:
    """Answers ``b"re:" + request``; None for b"drop", raises for b"boom"."""

    tx_key = 0  # never asks for a transmit timestamp (interleaved mode)

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.received: list[int] = []

    def respond(self, data: bytes, receive_ns: int, clock: Callable[[], int]) -> bytes | None:
        self.received.append(receive_ns)
        if self.pause:
            time.sleep(self.pause)
        if data == b"drop":
            return None
        if data == b"boom":
            raise RuntimeError("a bug in the responder")
        return b"re:" + data


@pytest.fixture
def server(host: str) -> Iterator[socket.socket]:
    sock = open_ntp_socket(host, 0)
    yield sock
    sock.close()


def service(responder: Echo, server: socket.socket) -> NtpService:
    svc = NtpService(responder, server)  # type: ignore[arg-type]
    assert svc._batch is not None, "recvmmsg/sendmmsg expected on Linux"
    return svc


MakeService = Callable[[Echo, socket.socket], NtpService]


@pytest.fixture(params=["batched", "fallback"])
def make_service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> MakeService:
    """Either loop: the fallback is what runs where libc has no recvmmsg/sendmmsg."""
    if request.param == "batched":
        return service
    monkeypatch.setattr(udp, "libc_mmsg", lambda: None)

    def fallback(responder: Echo, server: socket.socket) -> NtpService:
        svc = NtpService(responder, server)  # type: ignore[arg-type]
        assert svc._batch is None
        return svc

    return fallback


def record_sends(svc: NtpService) -> list[int]:
    """Wraps the service's sendmmsg; returns the list of batch sizes it is called with."""
    calls: list[int] = []
    real = svc._sendmmsg
    assert real is not None

    def sendmmsg(fd: int, headers: int, count: int, flags: int) -> int:
        calls.append(count)
        return real(fd, headers, count, flags)

    svc._sendmmsg = sendmmsg
    return calls


def test_replies_of_a_batch_leave_in_one_system_call(
    clients: Clients, server: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unanswered requests leave no gap: the replies are packed, each to its sender."""
    monkeypatch.setattr(ntp, "_SEND_DELAY_NS", 10**10)  # a stall of this process splits none
    socks = clients(6)
    payloads = [b"a", b"drop", b"c", b"drop", b"e", b"f"]
    svc = service(Echo(), server)
    sends = record_sends(svc)
    send(socks, payloads, server)
    svc.drain()
    assert sends == [4]
    for sock, payload in zip(socks, payloads, strict=True):
        if payload == b"drop":
            assert_no_reply(sock)
        else:
            assert sock.recv(100) == b"re:" + payload


def test_every_reply_goes_to_its_sender(
    clients: Clients,
    server: socket.socket,
    make_service: MakeService,
) -> None:
    socks = clients(5)
    svc = make_service(Echo(), server)
    send(socks, [f"request {i}".encode() for i in range(5)], server)
    svc.drain()
    for i, sock in enumerate(socks):
        assert sock.recv(100) == f"re:request {i}".encode()


def test_kernel_receive_timestamps_reach_the_responder(
    clients: Clients,
    server: socket.socket,
    make_service: MakeService,
) -> None:
    (sock,) = clients(1)
    echo = Echo()
    svc = make_service(echo, server)
    before = time.time_ns()
    sock.sendto(b"x", server.getsockname())
    time.sleep(0.05)  # the timestamp is the arrival's, not the read's
    svc.drain()
    assert len(echo.received) == 1 and before <= echo.received[0] < before + 40_000_000
    assert sock.recv(100) == b"re:x"


def test_silent_and_failing_requests_cost_only_themselves(
    clients: Clients,
    server: socket.socket,
    make_service: MakeService,
) -> None:
    socks = clients(4)
    svc = make_service(Echo(), server)
    send(socks, [b"a", b"drop", b"boom", b"d"], server)
    svc.drain()
    assert svc.errors == 1
    assert socks[0].recv(100) == b"re:a"
    assert socks[3].recv(100) == b"re:d"
    for sock in socks[1:3]:
        assert_no_reply(sock)


def test_a_refused_reply_is_skipped_and_the_rest_sent(
    clients: Clients, server: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ntp, "_SEND_DELAY_NS", 10**10)  # all three in one batch
    socks = clients(3)
    svc = service(Echo(), server)
    real = svc._sendmmsg
    assert real is not None
    calls: list[int] = []

    def sendmmsg(fd: int, headers: int, count: int, flags: int) -> int:
        calls.append(count)
        if len(calls) == 1:  # the first message fails, as for an unreachable address
            ctypes.set_errno(errno.EPERM)
            return -1
        return real(fd, headers, 1, flags)  # then one at a time (partial sends)

    svc._sendmmsg = sendmmsg
    send(socks, [bytes([i]) for i in range(3)], server)
    svc.drain()
    assert calls == [3, 2, 1]
    assert svc.errors == 1
    assert socks[1].recv(100) == b"re:\x01"
    assert socks[2].recv(100) == b"re:\x02"


def test_sealed_replies_wait_no_longer_than_the_bound(
    clients: Clients, server: socket.socket
) -> None:
    # Each request takes longer than the bound: replies leave two by two, the first
    # of each pair sent once the second is sealed, never later.
    pause = ntp._SEND_DELAY_NS / 1e9 * 1.5
    socks = clients(4)
    svc = service(Echo(pause=pause), server)
    sends = record_sends(svc)
    send(socks, [b"slow"] * 4, server)
    svc.drain()
    assert sends == [2, 2]
    for sock in socks:
        assert sock.recv(100) == b"re:slow"


def test_buffers_are_reused_without_stale_bytes(clients: Clients, server: socket.socket) -> None:
    """A long reply then a short one in the same slot: the short one is sent alone."""
    (sock,) = clients(1)
    svc = service(Echo(), server)
    for payload in (b"x" * 1000, b"y"):
        sock.sendto(payload, server.getsockname())
        svc.drain()
        assert sock.recv(2048) == b"re:" + payload
