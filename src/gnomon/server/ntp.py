"""The NTP service: a non-blocking UDP socket drained from a reader callback.

asyncio's DatagramProtocol costs several times more per packet than
``recvmsg`` in a loop (shared/NTS-NOTES.md), and hides the kernel receive
timestamp, so the hot path reads the socket itself: up to ``batch``
datagrams per wakeup, each answered before the next is read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from ..ntpclient import _ANCILLARY_SPACE, _TIMESPEC, SO_TIMESTAMPNS
from ..proto.server import NtpResponder

log = logging.getLogger("gnomon.ntp")
MAX_REQUEST = 2048


def open_ntp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class NtpService:
    def __init__(self, responder: NtpResponder, sock: socket.socket, batch: int = 64) -> None:
        self.responder = responder
        self.sock = sock
        self.batch = batch
        self.errors = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self.drain)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())

    def drain(self) -> None:
        recvmsg = self.sock.recvmsg
        sendto = self.sock.sendto
        respond = self.responder.respond
        time_ns = time.time_ns
        for _ in range(self.batch):
            try:
                data, ancillary, _, address = recvmsg(MAX_REQUEST, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            if ancillary:
                seconds, nanoseconds = _TIMESPEC.unpack_from(ancillary[0][2])
                received = seconds * 1_000_000_000 + nanoseconds
            else:
                received = time_ns()
            try:
                reply = respond(data, received, time_ns)
            except Exception:  # a bug must cost one packet, never the worker
                self.errors += 1
                log.exception("NTP request from %s failed", address)
                continue
            if reply is not None:
                try:
                    sendto(reply, address)
                except OSError:
                    self.errors += 1
