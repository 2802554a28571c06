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
(bench/README.md, "Profile"). A sealed reply waits for its ``sendmmsg`` while
the replies after it are sealed, until the first of the batch is more than
``_SEND_DELAY_NS`` old (20 µs: one or two NTS replies more, a few plain
ones). That wait falls between the transmit timestamp and the wire, so a
basic client sees it as delay and its offset is off by up to half of it: with
200 µs a chrony client under half load measured a median offset of -25.1 µs
(from chrony's own server -0.8), with 20 µs -6.2, for about 10% more CPU per
NTS reply at saturation (bench/README.md, "Batched sends"). Interleaved clients
measure the kernel's transmit time, after the wait. Elsewhere, or if libc
cannot be used, the service falls back to ``recvmsg`` and ``sendto``, each
reply sent as soon as it is sealed. The machinery it shares with the
Roughtime service (sockets, buffers, batched sends, admission) is in
``udp.py``; the per-datagram loop stays here.

Interleaved mode (draft-ietf-ntp-interleaved-modes, chrony's ``xleave``): the
responder decides which replies are interleaved and keeps their transmit
timestamps (``NtpResponder._interleave``); here a reply it marks (``tx_key``, only
replies to clients that ask) goes out with a control message asking the kernel
for its software transmit timestamp (``SO_TIMESTAMPING``, ``OPT_ID`` and
``OPT_TSONLY`` set on the socket, ``TX_SOFTWARE`` per packet), read back from the
error queue after the ``sendmmsg``, so the next interleaved reply to that client
carries the time its previous reply really left, batching wait included. Basic
replies pay one attribute test each. Without kernel timestamps (the ``recvmsg``
fallback, an old kernel) interleaved replies carry the daemon's transmit time.

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
import struct
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
# Replies are sent once the first of them was sealed this long ago (basic clients see it).
_SEND_DELAY_NS = 20_000
open_ntp_socket = open_udp_socket

SO_TIMESTAMPING = 37  # Linux; SCM_TIMESTAMPING has the same value
_TX_SOFTWARE, _SOFTWARE, _OPT_ID, _OPT_TSONLY, _OPT_RX_FILTER = (
    1 << 1,
    1 << 4,
    1 << 7,
    1 << 11,
    1 << 17,
)
_SO_EE_ORIGIN_TIMESTAMPING = 4
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP_RECVERR, IPV6_RECVERR
_EXTENDED_ERR = struct.Struct("@IBBBxII")  # struct sock_extended_err (ee_info, ee_data last)
_TS = struct.Struct("@qq")
# A control message asking for this datagram's software transmit timestamp:
# cmsg_len = CMSG_LEN(4), SOL_SOCKET, SO_TIMESTAMPING, the flags; CMSG_SPACE(4) bytes.
_TX_REQUEST = struct.Struct("@NiiI4x")
_CONTROL = struct.Struct("@PN")  # msg_control, msg_controllen of an mmsghdr (at 32)
_TX_IDS_LIMIT = 4096  # transmit timestamps asked for and not yet read


def enable_transmit_timestamps(sock: socket.socket) -> bool:
    """Let datagrams on ``sock`` ask for kernel software transmit timestamps, reported
    by id without the packet (receive timestamps stay SO_TIMESTAMPNS)."""
    for extra in (_OPT_RX_FILTER, 0):  # RX_FILTER (Linux 6.2): no second receive stamp
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, SO_TIMESTAMPING, _SOFTWARE | _OPT_ID | _OPT_TSONLY | extra
            )
        except OSError:
            continue
        return True
    return False


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
        self.transmit_stamps = self._batch is not None and enable_transmit_timestamps(sock)
        self._tx_ids: dict[int, int] = {}  # kernel timestamp id -> reply's receive timestamp
        self._next_tx_id = 0
        self._tx_request_raw = ctypes.create_string_buffer(
            _TX_REQUEST.pack(_TX_REQUEST.size - 4, SOL_SOCKET, SO_TIMESTAMPING, _TX_SOFTWARE)
        )
        self._tx_request = ctypes.addressof(self._tx_request_raw)
        self.tx_stamps_read = 0
        self._forgotten = False  # ids dropped unread: their stamps may sit in the queue

    def drain(self) -> None:
        super().drain()
        if self._tx_ids or self._forgotten:
            self._read_transmit_stamps()

    def _stamped_sent(self, batch: Batch, stamped: list[tuple[int, int]]) -> None:
        """After a ``sendmmsg``: each reply in ``stamped`` (slot, key) gets its id, the
        slots lose their control message, and the stamps already there are read."""
        headers = batch.send_headers
        ids = self._tx_ids
        for slot, key in stamped:
            _CONTROL.pack_into(headers, slot * HDR + 32, 0, 0)
            ids[self._next_tx_id] = key
            self._next_tx_id = (self._next_tx_id + 1) & 0xFFFFFFFF
        while len(ids) > _TX_IDS_LIMIT:
            del ids[next(iter(ids))]
            self._forgotten = True
        self._read_transmit_stamps()

    def _read_transmit_stamps(self) -> None:
        """Everything in the socket's error queue: transmit timestamps, by id."""
        recvmsg = self.sock.recvmsg
        update = self.responder.update_transmit
        ids = self._tx_ids
        while True:
            try:
                _, ancillary, _, _ = recvmsg(0, 256, socket.MSG_ERRQUEUE | MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self._forgotten = False  # the queue is empty
                return
            except OSError:
                self.errors += 1
                return
            stamp = ident = None
            for level, kind, value in ancillary:
                if level == SOL_SOCKET and kind == SO_TIMESTAMPING and len(value) >= _TS.size:
                    seconds, nanoseconds = _TS.unpack_from(value)
                    stamp = seconds * 1_000_000_000 + nanoseconds
                elif (level, kind) in _RECVERR and len(value) >= _EXTENDED_ERR.size:
                    _, origin, _, _, _, data = _EXTENDED_ERR.unpack_from(value)
                    if origin == _SO_EE_ORIGIN_TIMESTAMPING:
                        ident = data
            if stamp and ident is not None:
                key = ids.pop(ident, 0)
                if key:
                    self.tx_stamps_read += 1
                    update(key, stamp)

    def _drain_mmsg(self, batch: Batch) -> None:
        """One ``recvmmsg`` for up to ``batch`` datagrams, each answered in turn."""
        assert self._recvmmsg is not None
        count = self._recvmmsg(self.sock.fileno(), batch.address, batch.size, MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                self.errors += 1
            return
        headers, aux, data = batch.headers, batch.aux, batch.data
        sizes_of, slots_of = batch.readers(count)
        addresses = self._addresses
        respond = self.responder.respond
        time_ns = time.time_ns
        admission = self.admission
        now = time.monotonic() if admission is not None else 0.0
        send_data, send_names, send_iovecs = batch.send_data, batch.send_names, batch.send_iovecs
        name_len = batch.name_len
        pack_length = IOV_LEN.pack_into
        responder = self.responder
        stamped: list[tuple[int, int]] = []
        replies = 0
        try:
            slots = iter(slots_of(aux))  # six values per datagram, read in step below
            for at, size, _, level, kind, seconds, nanoseconds, name in zip(
                range(0, count * MAX_REQUEST, MAX_REQUEST),
                sizes_of(headers),
                *(slots,) * 6,
                strict=False,
            ):
                if kind == SO_TIMESTAMPNS and level == SOL_SOCKET:
                    received = seconds * 1_000_000_000 + nanoseconds
                else:
                    received = time_ns()
                request = bytes(data[at : at + size])
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
                    if responder.tx_key:  # an interleaved client: its transmit time, please
                        if self.transmit_stamps:
                            stamped.append((replies, responder.tx_key))
                            _CONTROL.pack_into(
                                batch.send_headers,
                                replies * HDR + 32,
                                self._tx_request,
                                _TX_REQUEST.size,
                            )
                        responder.tx_key = 0
                    replies += 1
                    if replies == 1:
                        oldest = time_ns()
                    elif time_ns() - oldest > _SEND_DELAY_NS:
                        self._send_replies(batch, replies)
                        replies = 0
                        if stamped:
                            self._stamped_sent(batch, stamped)
                            stamped = []
        finally:
            headers[: count * HDR] = batch.headers_template[: count * HDR]
            aux[: count * AUX] = batch.aux_template[: count * AUX]
            if replies:
                self._send_replies(batch, replies)
            if stamped:
                self._stamped_sent(batch, stamped)

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
                self.responder.tx_key = 0  # no kernel transmit time here: the daemon's stays
                self._send(reply, address)
