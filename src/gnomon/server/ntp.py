"""The NTP service: a non-blocking UDP socket drained from a reader callback.

asyncio's DatagramProtocol costs several times more per packet than reading
the socket in a loop (shared/NTS-NOTES.md), and hides the kernel receive
timestamp, so the hot path reads the socket itself: up to ``batch``
datagrams per wakeup, each answered (``sendto``) before the next is looked
at, so a reply leaves right after its transmit timestamp is taken.

On Linux the datagrams are read with ``recvmmsg`` (through ctypes, libc's
own function: no C code of ours), up to ``batch`` per system call, into
buffers allocated once; each comes with its kernel receive timestamp
(``SO_TIMESTAMPNS``) and its source address, decoded once per address and
cached. That costs 0.7-0.9 µs less per request than ``socket.recvmsg``
(``bench/micro.py --loop``; bench/README.md, "Profile"). Elsewhere, or if
libc cannot be used, the service falls back to ``recvmsg`` in a loop.
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

from ..ntpclient import _ANCILLARY_SPACE, _TIMESPEC, SO_TIMESTAMPNS
from ..proto.server import NtpResponder

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


# --- recvmmsg (Linux, LP64) ----------------------------------------------------------------

# struct mmsghdr on LP64 Linux: msg_name 0, msg_namelen 8, msg_iov 16, msg_iovlen 24,
# msg_control 32, msg_controllen 40, msg_flags 48, then msg_len 56; 64 bytes.
_MMSGHDR = struct.Struct("@PI4xPNPNi4xI4x")
_HDR = 64
_MSG_LEN = struct.Struct("@I")
_MSG_LEN_AT = 56
_IOVEC = struct.Struct("@PN")
# Next to it, one 64-byte "aux" slot per datagram: the control buffer (room for one
# SCM_TIMESTAMPNS message, 32 bytes: cmsg_len, cmsg_level, cmsg_type, tv_sec, tv_nsec) and
# the source address (sockaddr_in6 is 28 bytes), read with one unpack.
_AUX = 64
_CONTROL_LEN = 32
_NAME_LEN = 32
_TIMESTAMP_MESSAGE = "@Niiqq"


def _libc_recvmmsg() -> Callable[..., int] | None:
    if (
        not sys.platform.startswith("linux")
        or _MMSGHDR.size != _HDR
        or _IOVEC.size != 16
        or struct.calcsize(_TIMESTAMP_MESSAGE) != _CONTROL_LEN
    ):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
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
    return recvmmsg


class _Batch:
    """Buffers for ``size`` datagrams and the mmsghdr array describing them."""

    def __init__(self, size: int, name_len: int) -> None:
        self.size = size
        self._headers = ctypes.create_string_buffer(size * _MMSGHDR.size)
        self._aux = ctypes.create_string_buffer(size * _AUX)
        self._iovecs = ctypes.create_string_buffer(size * _IOVEC.size)
        self._data = ctypes.create_string_buffer(size * MAX_REQUEST)
        self.address = ctypes.addressof(self._headers)
        self.headers = memoryview(self._headers).cast("B")
        self.aux = memoryview(self._aux).cast("B")
        self.data = memoryview(self._data).cast("B")
        self.aux_of = struct.Struct(f"{_TIMESTAMP_MESSAGE}{name_len}s").unpack_from
        iovecs = memoryview(self._iovecs).cast("B")
        aux, data = ctypes.addressof(self._aux), ctypes.addressof(self._data)
        for i in range(size):
            _IOVEC.pack_into(iovecs, i * _IOVEC.size, data + i * MAX_REQUEST, MAX_REQUEST)
            _MMSGHDR.pack_into(
                self.headers,
                i * _MMSGHDR.size,
                aux + i * _AUX + _CONTROL_LEN,
                _NAME_LEN,
                ctypes.addressof(self._iovecs) + i * _IOVEC.size,
                1,
                aux + i * _AUX,
                _CONTROL_LEN,
                0,
                0,
            )
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


class NtpService:
    def __init__(self, responder: NtpResponder, sock: socket.socket, batch: int = 64) -> None:
        self.responder = responder
        self.sock = sock
        self.batch = batch
        self.errors = 0
        self._recvmmsg = _libc_recvmmsg() if batch > 0 else None
        self._batch: _Batch | None = None
        self._addresses: dict[bytes, Any] = {}
        if self._recvmmsg is not None:
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
        sendto = self.sock.sendto
        time_ns = time.time_ns
        try:
            for i in range(count):
                _, level, kind, seconds, nanoseconds, name = aux_of(aux, i * _AUX)
                if kind == SO_TIMESTAMPNS and level == _SOL_SOCKET:
                    received = seconds * 1_000_000_000 + nanoseconds
                else:
                    received = time_ns()
                at = i * MAX_REQUEST
                try:
                    reply = respond(
                        bytes(data[at : at + length_of(headers, i * _HDR + _MSG_LEN_AT)[0]]),
                        received,
                        time_ns,
                    )
                except Exception:  # a bug must cost one packet, never the worker
                    self.errors += 1
                    log.exception("NTP request failed")
                    continue
                if reply is not None:
                    address = addresses.get(name)
                    if address is None:
                        if len(addresses) >= _ADDRESS_CACHE:
                            addresses.clear()
                        address = addresses[name] = _decode_address(
                            int.from_bytes(name[:2], sys.byteorder), name
                        )
                    try:
                        sendto(reply, address)
                    except OSError:
                        self.errors += 1
        finally:
            headers[: count * _HDR] = batch.headers_template[: count * _HDR]
            aux[: count * _AUX] = batch.aux_template[: count * _AUX]

    def _drain_recvmsg(self) -> None:
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
