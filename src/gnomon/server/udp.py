"""The batched UDP loop shared by the NTP and Roughtime services.

Each service reads its socket itself from an event-loop reader callback (asyncio's
DatagramProtocol costs several times more per packet and hides the kernel receive
timestamp). On Linux the datagrams are read with ``recvmmsg`` and the replies sent
with ``sendmmsg`` (through ctypes, libc's own functions: no C code of ours), into and
from buffers allocated once (:class:`Batch`); each request comes with its kernel
receive timestamp (``SO_TIMESTAMPNS``) and its raw source address, copied as the
reply's destination. Elsewhere, or if libc cannot be used, services fall back to
``recvmsg`` and ``sendto``.

What is shared lives here: sockets, steering clients to workers, the mmsghdr
buffers, :class:`Admission` (ACL and per-address rate limit, decided before a
datagram is parsed) and :class:`UdpService` (attach, drain dispatch, batched
sends). What each protocol does per datagram stays in its own drain loop
(``ntp.py``, ``roughtime.py``), so the NTP path makes no extra call per datagram.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from .._os import SO_TIMESTAMPNS
from ..proto.acl import Acl
from ..proto.ratelimit import DROP, KISS, RateLimiter

log = logging.getLogger("gnomon.udp")
MAX_REQUEST = 2048
MSG_DONTWAIT = 0x40
ADDRESS_CACHE = 4096
SOL_SOCKET = socket.SOL_SOCKET
__all__ = ["SO_TIMESTAMPNS"]


def open_udp_socket(
    host: str, port: int, *, reuse_port: bool = False, timestamps: bool = True
) -> socket.socket:
    """A bound, non-blocking UDP socket; with ``timestamps`` each datagram comes with its
    kernel receive time (``SO_TIMESTAMPNS``), which NTP needs and Roughtime does not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if timestamps:
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
            SOL_SOCKET,
            _SO_ATTACH_REUSEPORT_CBPF,
            _FPROG.pack(len(program), ctypes.addressof(code)),
        )
    except OSError as exc:
        log.warning("cannot steer clients to workers by address: %s", exc)
        return False
    return True


# --- recvmmsg (Linux, LP64) ----------------------------------------------------------------

# struct mmsghdr on LP64 Linux: msg_name 0, msg_namelen 8, msg_iov 16, msg_iovlen 24,
# msg_control 32, msg_controllen 40, msg_flags 48, then msg_len 56; 64 bytes.
MMSGHDR = struct.Struct("@PI4xPNPNi4xI4x")
HDR = 64
MSG_LEN = struct.Struct("@I")
MSG_LEN_AT = 56
IOVEC = struct.Struct("@PN")
IOV_LEN = struct.Struct("@N")
# Next to it, one 64-byte "aux" slot per datagram: the control buffer (room for one
# SCM_TIMESTAMPNS message, 32 bytes: cmsg_len, cmsg_level, cmsg_type, tv_sec, tv_nsec) and
# the source address (sockaddr_in6 is 28 bytes), read with one unpack.
AUX = 64
CONTROL_LEN = 32
NAME_LEN = 32
TIMESTAMP_MESSAGE = "@Niiqq"


def libc_mmsg() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """libc's ``recvmmsg`` and ``sendmmsg``, or None where they cannot be used."""
    if (
        not sys.platform.startswith("linux")
        or MMSGHDR.size != HDR
        or IOVEC.size != 16
        or struct.calcsize(TIMESTAMP_MESSAGE) != CONTROL_LEN
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
    ``aux``, its control buffer at ``aux + i * AUX``."""

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
        self._headers, self.headers, self.address = _buffer(size * HDR)
        self._iovecs, self.iovecs, iovecs = _buffer(size * IOVEC.size)
        for i in range(size):
            IOVEC.pack_into(self.iovecs, i * IOVEC.size, data + i * MAX_REQUEST, iov_len)
            MMSGHDR.pack_into(
                self.headers,
                i * HDR,
                names + i * name_stride,
                name_len,
                iovecs + i * IOVEC.size,
                1,
                aux + i * AUX if aux else 0,
                CONTROL_LEN if aux else 0,
                0,
                0,
            )


class Batch:
    """Buffers for ``size`` requests and replies, and the mmsghdr arrays describing them.

    A request's control buffer (its timestamp) and source address share one aux
    slot; a reply's destination is copied from there into its own slot.
    """

    def __init__(self, size: int, name_len: int) -> None:
        self.size = size
        self.name_len = name_len
        self._aux, self.aux, aux = _buffer(size * AUX)
        self._data, self.data, data = _buffer(size * MAX_REQUEST)
        receive = _Messages(size, data, MAX_REQUEST, aux + CONTROL_LEN, AUX, NAME_LEN, aux)
        self._receive, self.headers, self.address = receive, receive.headers, receive.address
        self._readers: dict[tuple[int, bool], tuple[Callable[[Any], tuple[Any, ...]], ...]] = {}
        self._send_names, self.send_names, names = _buffer(size * NAME_LEN)
        self._send_data, self.send_data, send_data = _buffer(size * MAX_REQUEST)
        send = _Messages(size, send_data, 0, names, NAME_LEN, name_len)
        self._send, self.send_iovecs, self.send_address = send, send.iovecs, send.address
        self.send_headers = send.headers
        # The kernel rewrites msg_namelen, msg_controllen, msg_flags and msg_len of the
        # headers it fills, and the aux slots: all restored from these copies (zeros where
        # it writes) before the next call, so nothing stale is ever read. In particular a
        # datagram without a timestamp leaves cmsg_type 0 in its slot.
        self.headers_template = bytes(self.headers)
        self.aux_template = bytes(self.aux)

    def readers(
        self, count: int, stamps: bool = True
    ) -> tuple[Callable[[Any], tuple[Any, ...]], ...]:
        """For a receive of ``count`` datagrams, two ``unpack_from`` functions reading all
        of them at once: their sizes from ``headers`` (``count`` values) and their aux slots
        from ``aux``: cmsg_len, cmsg_level, cmsg_type, seconds, nanoseconds and the source
        address (six values each), or with ``stamps`` false the source address alone.
        One call per receive rather than two per datagram."""
        readers = self._readers.get((count, stamps))
        if readers is None:
            size = f"{MSG_LEN_AT}x{MSG_LEN.format[-1]}{HDR - MSG_LEN_AT - MSG_LEN.size}x"
            control = TIMESTAMP_MESSAGE[1:] if stamps else f"{CONTROL_LEN}x"
            slot = f"{control}{self.name_len}s{AUX - CONTROL_LEN - self.name_len}x"
            readers = self._readers[count, stamps] = (
                struct.Struct("@" + size * count).unpack_from,
                struct.Struct("@" + slot * count).unpack_from,
            )
        return readers


def decode_address(family: int, name: bytes) -> Any:
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


class UdpService:
    """A UDP socket drained from an event-loop reader: the buffers and calls every
    service shares. Subclasses implement ``_drain_mmsg`` (one ``recvmmsg`` batch)
    and ``_drain_recvmsg`` (the fallback, at most ``batch`` datagrams)."""

    def __init__(self, sock: socket.socket, batch: int, admission: Admission | None) -> None:
        self.sock = sock
        self.batch = batch
        self.errors = 0
        self.admission = admission if admission is not None and admission.active else None
        mmsg = libc_mmsg() if batch > 0 else None
        self._recvmmsg: Callable[..., int] | None = None
        self._sendmmsg: Callable[..., int] | None = None
        self._batch: Batch | None = None
        self._addresses: dict[bytes, Any] = {}
        if mmsg is not None:
            self._recvmmsg, self._sendmmsg = mmsg
            self._batch = Batch(batch, 28 if sock.family == socket.AF_INET6 else 16)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.sock.fileno(), self.drain)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())

    def drain(self) -> None:
        if self._batch is not None:
            self._drain_mmsg(self._batch)
        else:
            self._drain_recvmsg()

    def _drain_mmsg(self, batch: Batch) -> None:
        raise NotImplementedError

    def _drain_recvmsg(self) -> None:
        raise NotImplementedError

    def _receive(self, batch: Batch) -> int:
        """One ``recvmmsg`` into ``batch``: how many datagrams it holds (0 on none or error)."""
        assert self._recvmmsg is not None
        count = self._recvmmsg(self.sock.fileno(), batch.address, batch.size, MSG_DONTWAIT, None)
        if count <= 0:
            if count < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                self.errors += 1
            return 0
        return count

    def _send_replies(self, batch: Batch, replies: int) -> None:
        """``sendmmsg`` the first ``replies`` queued replies; one that cannot be sent
        (a full buffer, an unreachable address) is counted and skipped, never the rest."""
        assert self._sendmmsg is not None
        fd = self.sock.fileno()
        sent = 0
        while sent < replies:
            done = self._sendmmsg(fd, batch.send_address + sent * HDR, replies - sent, 0)
            if done > 0:
                sent += done
            elif ctypes.get_errno() != errno.EINTR:
                self.errors += 1
                sent += 1

    def _remember(self, name: bytes) -> Any:
        """The socket address in a raw sockaddr, decoded once and cached (bounded)."""
        addresses = self._addresses
        if len(addresses) >= ADDRESS_CACHE:
            addresses.clear()
        address = addresses[name] = decode_address(int.from_bytes(name[:2], sys.byteorder), name)
        return address

    def _send(self, reply: bytes, address: Any) -> None:
        try:
            self.sock.sendto(reply, address)
        except OSError:
            self.errors += 1
