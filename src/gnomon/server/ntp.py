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
to ``recvmsg`` and ``sendto``, each reply sent as soon as it is sealed.

Abuse controls sit in front of the responder, so what is refused costs no
cryptography: an :class:`Admission` (allow/deny lists and the per-address
rate limiter of ``proto/ratelimit.py``) decides each datagram from its
source address before it is parsed. With neither configured the loop makes
no call for it at all.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from .._os import SO_TIMESTAMPNS, TIMESPEC, TIMESTAMP_ANCILLARY_SPACE
from ..proto.acl import Acl
from ..proto.nts.ntp_server import NtpResponder
from ..proto.ratelimit import DROP, KISS, RateLimiter, build_rate_kiss

log = logging.getLogger("gnomon.ntp")
MAX_REQUEST = 2048
_MSG_DONTWAIT = 0x40
_ADDRESS_CACHE = 4096
_SOL_SOCKET = socket.SOL_SOCKET


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


# --- steering clients to workers (Linux) ---------------------------------------------------

_SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_NET_OFF = 0xFFF00000  # -0x100000: loads relative to the IP header
_FILTER = struct.Struct("@HBBI")  # struct sock_filter
_FPROG = struct.Struct("@H6xP")  # struct sock_fprog
_LD_ABS_W, _AND_K, _MUL_K, _RSH_K, _MOD_K, _XOR_X, _TAX, _RET_A = (
    0x20, 0x54, 0x24, 0x74, 0x94, 0xAC, 0x07, 0x16
)  # fmt: skip
_GOLDEN = 0x9E3779B1


def _prefix_mask(bits: int) -> int:
    bits = max(0, min(32, bits))
    return (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF


def steering_program(family: int, workers: int, prefix: int) -> list[tuple[int, int, int, int]]:
    """A classic BPF program choosing a reuseport socket from the source prefix.

    It hashes the first ``prefix`` bits of the source address (IPv4 at bytes
    12-16 of the IP header, IPv6 the first 64 bits at bytes 8-16) and returns
    the hash modulo ``workers``: every datagram from one rate-limiting bucket
    reaches the same worker, whatever source port it comes from.
    """
    if family == socket.AF_INET:
        load = [(_LD_ABS_W, 0, 0, _SKF_NET_OFF + 12), (_AND_K, 0, 0, _prefix_mask(prefix))]
    else:
        load = [
            (_LD_ABS_W, 0, 0, _SKF_NET_OFF + 8),
            (_AND_K, 0, 0, _prefix_mask(prefix)),
            (_TAX, 0, 0, 0),
            (_LD_ABS_W, 0, 0, _SKF_NET_OFF + 12),
            (_AND_K, 0, 0, _prefix_mask(prefix - 32)),
            (_XOR_X, 0, 0, 0),
        ]
    return [
        *load,
        (_MUL_K, 0, 0, _GOLDEN),
        (_RSH_K, 0, 0, 16),
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]


def steer_by_source(sock: socket.socket, workers: int, prefix: int) -> bool:
    """Make the kernel pick this port's reuseport socket by source prefix.

    With several workers each keeps its own rate limiter; the kernel's default
    choice hashes addresses *and ports*, so a client changing source ports
    would meet every worker's bucket in turn and get ``workers`` times its
    rate. A socket index past the group's size (a worker being restarted)
    falls back to the kernel's own hash, and a restart reorders the group, so
    some clients then meet another worker's bucket: the limit fails open for
    a moment, never closed. Returns False where unsupported.
    """
    if not sys.platform.startswith("linux") or workers < 2:
        return False
    program = steering_program(sock.family, workers, prefix)
    code = ctypes.create_string_buffer(b"".join(_FILTER.pack(*op) for op in program))
    try:
        sock.setsockopt(
            _SOL_SOCKET,
            _SO_ATTACH_REUSEPORT_CBPF,
            _FPROG.pack(len(program), ctypes.addressof(code)),
        )
    except OSError as exc:
        log.warning("cannot steer NTP clients to workers by address: %s", exc)
        return False
    return True


# --- recvmmsg (Linux, LP64) ----------------------------------------------------------------

# struct mmsghdr on LP64 Linux: msg_name 0, msg_namelen 8, msg_iov 16, msg_iovlen 24,
# msg_control 32, msg_controllen 40, msg_flags 48, then msg_len 56; 64 bytes.
_MMSGHDR = struct.Struct("@PI4xPNPNi4xI4x")
_HDR = 64
_MSG_LEN = struct.Struct("@I")
_MSG_LEN_AT = 56
_IOVEC = struct.Struct("@PN")
_IOV_LEN = struct.Struct("@N")
# Replies wait for one sendmmsg at most this long after the first of them was sealed.
_SEND_DELAY_NS = 200_000
# Next to it, one 64-byte "aux" slot per datagram: the control buffer (room for one
# SCM_TIMESTAMPNS message, 32 bytes: cmsg_len, cmsg_level, cmsg_type, tv_sec, tv_nsec) and
# the source address (sockaddr_in6 is 28 bytes), read with one unpack.
_AUX = 64
_CONTROL_LEN = 32
_NAME_LEN = 32
_TIMESTAMP_MESSAGE = "@Niiqq"


def _libc_mmsg() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """libc's ``recvmmsg`` and ``sendmmsg``, or None where they cannot be used."""
    if (
        not sys.platform.startswith("linux")
        or _MMSGHDR.size != _HDR
        or _IOVEC.size != 16
        or struct.calcsize(_TIMESTAMP_MESSAGE) != _CONTROL_LEN
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


def _buffer(size: int) -> tuple[Any, memoryview, int]:
    """A zeroed ctypes buffer (kept alive by the caller), a byte view of it, its address."""
    raw = ctypes.create_string_buffer(size)
    return raw, memoryview(raw).cast("B"), ctypes.addressof(raw)


class _Messages:
    """An mmsghdr array of ``size`` one-buffer messages: message i has its data at
    ``data + i * MAX_REQUEST`` and its address at ``names + i * name_stride``; with
    ``aux``, its control buffer at ``aux + i * _AUX``."""

    def __init__(
        self,
        size: int,
        data: int,
        iov_len: int,
        names: int,
        name_stride: int,
        name_len: int,
        aux: int = 0,
    ) -> None:
        self._headers, self.headers, self.address = _buffer(size * _HDR)
        self._iovecs, self.iovecs, iovecs = _buffer(size * _IOVEC.size)
        for i in range(size):
            _IOVEC.pack_into(self.iovecs, i * _IOVEC.size, data + i * MAX_REQUEST, iov_len)
            _MMSGHDR.pack_into(
                self.headers,
                i * _HDR,
                names + i * name_stride,
                name_len,
                iovecs + i * _IOVEC.size,
                1,
                aux + i * _AUX if aux else 0,
                _CONTROL_LEN if aux else 0,
                0,
                0,
            )


class _Batch:
    """Buffers for ``size`` requests and replies, and the mmsghdr arrays describing them.

    A request's control buffer (its timestamp) and source address share one aux
    slot; a reply's destination is copied from there into its own slot.
    """

    def __init__(self, size: int, name_len: int) -> None:
        self.size = size
        self.name_len = name_len
        self._aux, self.aux, aux = _buffer(size * _AUX)
        self._data, self.data, data = _buffer(size * MAX_REQUEST)
        receive = _Messages(size, data, MAX_REQUEST, aux + _CONTROL_LEN, _AUX, _NAME_LEN, aux)
        self._receive, self.headers, self.address = receive, receive.headers, receive.address
        self.aux_of = struct.Struct(f"{_TIMESTAMP_MESSAGE}{name_len}s").unpack_from
        self._send_names, self.send_names, names = _buffer(size * _NAME_LEN)
        self._send_data, self.send_data, send_data = _buffer(size * MAX_REQUEST)
        send = _Messages(size, send_data, 0, names, _NAME_LEN, name_len)
        self._send, self.send_iovecs, self.send_address = send, send.iovecs, send.address
        # The kernel rewrites msg_namelen, msg_controllen, msg_flags and msg_len of the
        # headers it fills, and the aux slots: all restored from these copies (zeros where
        # it writes) before the next call, so nothing stale is ever read. In particular a
        # datagram without a timestamp leaves cmsg_type 0 in its slot.
        self.headers_template = bytes(self.headers)
        self.aux_template = bytes(self.aux)


def _decode_address(family: int, name: bytes) -> Any:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), int.from_bytes(name[2:4], "big")
    port, flowinfo = struct.unpack_from("!HI", name, 2)
    scope_id = int.from_bytes(name[24:28], sys.byteorder)
    return socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flowinfo, scope_id


class Admission:
    """Who gets an answer: allow/deny lists, then the per-address rate limit.

    :meth:`decide` returns None to answer normally, or what was done instead:
    ``"denied"``, ``"rate_limited"`` (dropped) or ``"rate_kiss"`` (answer with
    a RATE kiss-o'-death). Counts every outcome but the normal one.
    """

    def __init__(self, acl: Acl | None = None, limiter: RateLimiter | None = None) -> None:
        self.acl = None if acl is None or acl.unrestricted else acl
        self.limiter = limiter
        self.denied = 0
        self.rate_limited = 0
        self.rate_kiss = 0

    @property
    def active(self) -> bool:
        return self.acl is not None or self.limiter is not None

    def decide(self, host: str, now: float) -> str | None:
        if self.acl is not None and not self.acl.permits(host):
            self.denied += 1
            return "denied"
        if self.limiter is not None:
            verdict = self.limiter.check_host(host, now)
            if verdict is DROP:
                self.rate_limited += 1
                return "rate_limited"
            if verdict is KISS:
                self.rate_kiss += 1
                return "rate_kiss"
        return None

    def counters(self) -> dict[str, int]:
        return {
            "denied": self.denied,
            "rate_limited": self.rate_limited,
            "rate_kiss": self.rate_kiss,
        }


class NtpService:
    def __init__(
        self,
        responder: NtpResponder,
        sock: socket.socket,
        batch: int = 64,
        *,
        admission: Admission | None = None,
    ) -> None:
        self.responder = responder
        self.sock = sock
        self.batch = batch
        self.errors = 0
        self.admission = admission if admission is not None and admission.active else None
        mmsg = _libc_mmsg() if batch > 0 else None
        self._recvmmsg: Callable[..., int] | None = None
        self._sendmmsg: Callable[..., int] | None = None
        if mmsg is not None:
            self._recvmmsg, self._sendmmsg = mmsg
        self._batch: _Batch | None = None
        self._addresses: dict[bytes, Any] = {}
        if mmsg is not None:
            self._batch = _Batch(batch, 28 if sock.family == socket.AF_INET6 else 16)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self.drain)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())

    def drain(self) -> None:
        if self._batch is not None:
            self._drain_mmsg(self._batch)
        else:
            self._drain_recvmsg()

    def _drain_mmsg(self, batch: _Batch) -> None:
        """One ``recvmmsg`` for up to ``batch`` datagrams, each answered in turn."""
        assert self._recvmmsg is not None
        count = self._recvmmsg(self.sock.fileno(), batch.address, batch.size, _MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                self.errors += 1
            return
        headers, aux, data, aux_of = batch.headers, batch.aux, batch.data, batch.aux_of
        length_of = _MSG_LEN.unpack_from
        addresses = self._addresses
        respond = self.responder.respond
        time_ns = time.time_ns
        admission = self.admission
        now = time.monotonic() if admission is not None else 0.0
        send_data, send_names, send_iovecs = batch.send_data, batch.send_names, batch.send_iovecs
        name_len = batch.name_len
        pack_length = _IOV_LEN.pack_into
        replies = 0
        try:
            for i in range(count):
                _, level, kind, seconds, nanoseconds, name = aux_of(aux, i * _AUX)
                if kind == SO_TIMESTAMPNS and level == _SOL_SOCKET:
                    received = seconds * 1_000_000_000 + nanoseconds
                else:
                    received = time_ns()
                at = i * MAX_REQUEST
                request = bytes(data[at : at + length_of(headers, i * _HDR + _MSG_LEN_AT)[0]])
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
                    at = replies * _NAME_LEN
                    send_names[at : at + name_len] = name
                    pack_length(send_iovecs, replies * _IOVEC.size + 8, len(reply))
                    replies += 1
                    if replies == 1:
                        oldest = time_ns()
                    elif time_ns() - oldest > _SEND_DELAY_NS:
                        self._send_replies(batch, replies)
                        replies = 0
        finally:
            headers[: count * _HDR] = batch.headers_template[: count * _HDR]
            aux[: count * _AUX] = batch.aux_template[: count * _AUX]
            if replies:
                self._send_replies(batch, replies)

    def _send_replies(self, batch: _Batch, replies: int) -> None:
        """``sendmmsg`` the first ``replies`` queued replies; one that cannot be sent
        (a full buffer, an unreachable address) is counted and skipped, never the rest."""
        assert self._sendmmsg is not None
        fd = self.sock.fileno()
        sent = 0
        while sent < replies:
            done = self._sendmmsg(fd, batch.send_address + sent * _HDR, replies - sent, 0)
            if done > 0:
                sent += done
            elif ctypes.get_errno() != errno.EINTR:
                self.errors += 1
                sent += 1

    def _remember(self, name: bytes) -> Any:
        """The socket address in a raw sockaddr, decoded once and cached (bounded)."""
        addresses = self._addresses
        if len(addresses) >= _ADDRESS_CACHE:
            addresses.clear()
        address = addresses[name] = _decode_address(int.from_bytes(name[:2], sys.byteorder), name)
        return address

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

    def _send(self, reply: bytes, address: Any) -> None:
        try:
            self.sock.sendto(reply, address)
        except OSError:
            self.errors += 1

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
