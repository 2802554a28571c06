"""The NTP service: a non-blocking UDP socket drained from a reader callback.

asyncio's DatagramProtocol costs several times more per packet than reading
the socket in a loop (shared/NTS-NOTES.md), and hides the kernel receive
timestamp, so the hot path reads the socket itself: up to ``batch``
datagrams per wakeup.

On Linux the datagrams are read with ``recvmmsg`` and the replies sent with
``sendmmsg`` (through ctypes, libc's own functions: no C code of ours), into
and from buffers allocated once; each request comes with its kernel receive
timestamp (``SO_TIMESTAMPNS``), and its raw source address is copied as the
reply's destination. One system call per batch each way instead of one per
datagram costs 0.7-0.9 µs less per request on receive (``bench/micro.py
--loop``) and about 10% of the CPU per reply under load on send
(bench/README.md, "Profile"). A sealed reply waits for its ``sendmmsg`` at
most ``_SEND_DELAY_NS`` (200 µs, reached only when the worker is saturated:
at half load a batch holds one or two requests). That wait falls between the
transmit timestamp and the wire, so the client sees it as extra delay, and
its offset can be off by at most half of it; clients prefer low-delay
samples anyway. Elsewhere, or if libc cannot be used, the service falls back
to ``recvmsg`` and ``sendto``, each reply sent as soon as it is sealed. The
machinery it shares with the Roughtime service (sockets, buffers, batched
sends, admission) is in ``udp.py``; the per-datagram loop stays here.

Abuse controls sit in front of the responder, so what is refused costs no
cryptography: an :class:`Admission` (allow/deny lists and the per-address
rate limiter of ``proto/ratelimit.py``) decides each datagram from its
source address before it is parsed. With neither configured the loop makes
no call for it at all.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import time
from typing import Any

from .._os import SO_TIMESTAMPNS, TIMESPEC, TIMESTAMP_ANCILLARY_SPACE
from ..proto.nts.ntp_server import NtpResponder
from ..proto.ratelimit import build_rate_kiss
from .udp import (
    AUX,
    HDR,
    IOV_LEN,
    IOVEC,
    MAX_REQUEST,
    MSG_DONTWAIT,
    MSG_LEN,
    MSG_LEN_AT,
    NAME_LEN,
    SOL_SOCKET,
    Admission,
    Batch,
    UdpService,
    open_udp_socket,
    steer_by_source,
)

__all__ = ["Admission", "NtpService", "open_ntp_socket", "steer_by_source"]

log = logging.getLogger("gnomon.ntp")
# Replies wait for one sendmmsg at most this long after the first of them was sealed.
_SEND_DELAY_NS = 200_000
open_ntp_socket = open_udp_socket


class NtpService(UdpService):
    def __init__(
        self,
        responder: NtpResponder,
        sock: socket.socket,
        batch: int = 64,
        *,
        admission: Admission | None = None,
    ) -> None:
        super().__init__(sock, batch, admission)
        self.responder = responder

    def _drain_mmsg(self, batch: Batch) -> None:
        """One ``recvmmsg`` for up to ``batch`` datagrams, each answered in turn."""
        assert self._recvmmsg is not None
        count = self._recvmmsg(self.sock.fileno(), batch.address, batch.size, MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                self.errors += 1
            return
        headers, aux, data, aux_of = batch.headers, batch.aux, batch.data, batch.aux_of
        length_of = MSG_LEN.unpack_from
        addresses = self._addresses
        respond = self.responder.respond
        time_ns = time.time_ns
        admission = self.admission
        now = time.monotonic() if admission is not None else 0.0
        send_data, send_names, send_iovecs = batch.send_data, batch.send_names, batch.send_iovecs
        name_len = batch.name_len
        pack_length = IOV_LEN.pack_into
        replies = 0
        try:
            for i in range(count):
                _, level, kind, seconds, nanoseconds, name = aux_of(aux, i * AUX)
                if kind == SO_TIMESTAMPNS and level == SOL_SOCKET:
                    received = seconds * 1_000_000_000 + nanoseconds
                else:
                    received = time_ns()
                at = i * MAX_REQUEST
                request = bytes(data[at : at + length_of(headers, i * HDR + MSG_LEN_AT)[0]])
                if admission is not None:
                    address = addresses.get(name)
                    if address is None:
                        address = self._remember(name)
                    if self._refused(admission, address, request, received, now):
                        continue
                try:
                    reply = respond(request, received, time_ns)
                except Exception:  # a bug must cost one packet, never the worker
                    self.errors += 1
                    log.exception("NTP request failed")
                    continue
                if reply is not None:
                    at = replies * MAX_REQUEST
                    send_data[at : at + len(reply)] = reply
                    at = replies * NAME_LEN
                    send_names[at : at + name_len] = name
                    pack_length(send_iovecs, replies * IOVEC.size + 8, len(reply))
                    replies += 1
                    if replies == 1:
                        oldest = time_ns()
                    elif time_ns() - oldest > _SEND_DELAY_NS:
                        self._send_replies(batch, replies)
                        replies = 0
        finally:
            headers[: count * HDR] = batch.headers_template[: count * HDR]
            aux[: count * AUX] = batch.aux_template[: count * AUX]
            if replies:
                self._send_replies(batch, replies)

    def _refused(
        self, admission: Admission, address: Any, request: bytes, received: int, now: float
    ) -> bool:
        """Whether ``admission`` refuses the request; sends the RATE kiss it may call for."""
        outcome = admission.decide(address[0], now)
        if outcome is None:
            return False
        if outcome == "rate_kiss":
            kiss = build_rate_kiss(request, received, time.time_ns())
            if kiss is not None:
                self._send(kiss, address)
        return True

    def _drain_recvmsg(self) -> None:
        recvmsg = self.sock.recvmsg
        respond = self.responder.respond
        time_ns = time.time_ns
        admission = self.admission
        now = time.monotonic() if admission is not None else 0.0
        for _ in range(self.batch):
            try:
                data, ancillary, _, address = recvmsg(MAX_REQUEST, TIMESTAMP_ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            if ancillary:
                seconds, nanoseconds = TIMESPEC.unpack_from(ancillary[0][2])
                received = seconds * 1_000_000_000 + nanoseconds
            else:
                received = time_ns()
            if admission is not None and self._refused(admission, address, data, received, now):
                continue
            try:
                reply = respond(data, received, time_ns)
            except Exception:  # a bug must cost one packet, never the worker
                self.errors += 1
                log.exception("NTP request from %s failed", address)
                continue
            if reply is not None:
                self._send(reply, address)
