"""The NTS-KE service: TLS 1.3 over non-blocking sockets in the asyncio loop.

pyOpenSSL runs over memory BIOs (``TlsEngine``), so no thread is needed per
connection. Every connection has one deadline for handshake and request;
the number of connections is capped; the response goes out in one write.

A connection costs a few hundred microseconds of TLS and responder work, so
the path around it is kept short: accepted sockets are raw file descriptors
(no asyncio transport, protocol or socket object), waited on through one
epoll set of the service's own that the event loop watches as a single
reader; a ClientHello already queued at accept is answered at once; the
deadlines sit in one queue (all connections have the same timeout, so it is
in deadline order) behind one timer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import select
import socket
import time
from dataclasses import dataclass

from ..errors import GnomonError, KeProtocolError
from ..proto.acl import Acl
from ..proto.nts.cookie import RANDOM_LEN
from ..proto.nts.ke import ErrorCode, RecordStream
from ..proto.nts.ke_server import KeResponder
from ..proto.ratelimit import KeRateLimiter
from ..tls import ALPN_NTSKE, TlsEngine
from .certificates import CertificateSource

log = logging.getLogger("gnomon.ke")

_READ_SIZE = 65536
_ACCEPT_BATCH = 64  # connections taken per listening-socket event
_BACKLOG = 256
_ACCEPT_PAUSE = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT


@dataclass
class KeLimits:
    timeout: float = 5.0  # handshake and request together
    max_connections: int = 256
    max_message: int = 16384


class KeService:
    def __init__(
        self,
        responder: KeResponder,
        certificates: CertificateSource,
        limits: KeLimits,
        *,
        acl: Acl | None = None,
        rate_limiter: KeRateLimiter | None = None,
    ):
        self.responder = responder
        self.certificates = certificates
        self.limits = limits
        self.acl = None if acl is None or acl.unrestricted else acl
        self.rate_limiter = rate_limiter
        self.active = 0
        self.rejected = 0  # over the connection cap
        self.denied = 0  # by the allow/deny lists
        self.rate_limited = 0
        self.timeouts = 0
        self.tls_failures = 0
        self._connections: dict[int, _KeConnection] = {}  # by file descriptor
        self._deadlines: collections.deque[_KeConnection] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stats(self) -> dict[str, int]:
        return {
            "tls_failure": self.tls_failures,
            "timeout": self.timeouts,
            "over_capacity": self.rejected,
            "denied": self.denied,
            "rate_limited": self.rate_limited,
        }

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        """Listen on ``host`` (an IP address); the returned server's ``close()`` stops it."""
        loop = asyncio.get_running_loop()
        if self._epoll is None or self._loop is not loop:
            self._loop = loop
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._ready)
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
            # An asyncio.Server that never serves through asyncio: close() removes this
            # reader and closes the socket, as for any server socket of the loop.
            server = await loop.create_server(asyncio.Protocol, sock=sock, start_serving=False)
        except BaseException:
            sock.close()
            raise
        loop.add_reader(sock.fileno(), self._accept, sock)
        return server

    def close(self) -> None:
        """Drop every open connection and stop watching them (listeners are closed
        through the servers :meth:`listen` returned)."""
        for connection in list(self._connections.values()):
            connection.close(abort=True)
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    # -- connections ------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        limits = self.limits
        acl = self.acl
        limiter = self.rate_limiter
        for _ in range(_ACCEPT_BATCH):
            try:
                # socket.accept() is this plus a socket object around the descriptor.
                fd, peer = listener._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Out of descriptors or memory: pause accepting for a while, as asyncio
                    # does, rather than spin on a listening socket that stays readable.
                    log.error("NTS-KE accept failed, pausing for %.0f s: %s", _ACCEPT_PAUSE, exc)
                    loop = self._loop
                    assert loop is not None
                    loop.remove_reader(listener.fileno())
                    loop.call_later(_ACCEPT_PAUSE, self._resume_accepting, listener)
                else:
                    log.warning("NTS-KE accept failed: %s", exc)
                return
            if acl is not None or limiter is not None:
                host = str(peer[0]) if peer else ""
                if acl is not None and not acl.permits(host):
                    self.denied += 1
                    _close(fd)
                    continue
                if limiter is not None and not limiter.allow_host(host, time.monotonic()):
                    self.rate_limited += 1
                    _close(fd)
                    continue
            if self.active >= limits.max_connections:
                self.rejected += 1
                _close(fd)
                continue
            try:
                os.set_blocking(fd, False)
                connection = _KeConnection(self, fd, time.monotonic() + limits.timeout)
            except Exception:
                log.exception("NTS-KE connection not set up")
                _close(fd)
                continue
            self.active += 1
            self._connections[fd] = connection
            deadlines = self._deadlines
            while deadlines and deadlines[0].fd < 0:  # done with: only the timer kept them
                deadlines.popleft()
            deadlines.append(connection)
            if self._timer is None:
                self._arm_timer()
            # The ClientHello is often queued already: answer it without a trip through epoll.
            connection.readable()
            if connection.fd >= 0 and not connection.watching:
                connection.watch(_EPOLLIN)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0 and self._loop is not None:  # not closed meanwhile
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        connections = self._connections
        for fd, events in epoll.poll(0, 256):
            connection = connections.get(fd)
            if connection is None:
                continue
            if events & _EPOLLOUT or connection.closing:
                connection.writable()
            else:
                connection.readable()

    def _forget(self, connection: _KeConnection) -> None:
        if self._connections.pop(connection.fd, None) is not None:
            self.active -= 1

    def _arm_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_at(
            loop.time() + max(0.0, self._deadlines[0].deadline - time.monotonic()),
            self._expire,
        )

    def _expire(self) -> None:
        self._timer = None
        deadlines = self._deadlines
        now = time.monotonic()
        while deadlines:
            connection = deadlines[0]
            if connection.fd >= 0:  # still open (or still writing its last bytes)
                if connection.deadline > now:
                    break
                self.timeouts += 1
                connection.close(abort=True)
            deadlines.popleft()
        if deadlines:
            self._arm_timer()


class _KeConnection:
    __slots__ = (
        "closing",
        "deadline",
        "engine",
        "fd",
        "finished",
        "handshake_done",
        "pending",
        "service",
        "stream",
        "watching",
    )

    def __init__(self, service: KeService, fd: int, deadline: float) -> None:
        self.service = service
        self.fd = fd
        self.deadline = deadline
        self.engine: TlsEngine | None = TlsEngine(service.certificates.context(), server_side=True)
        self.stream: RecordStream | None = None
        self.handshake_done = False
        self.finished = False
        self.watching = 0  # epoll events registered for
        self.pending = b""  # what the socket did not take yet
        self.closing = False  # close once ``pending`` is written

    def watch(self, events: int) -> None:
        epoll = self.service._epoll
        assert epoll is not None
        if self.watching:
            epoll.modify(self.fd, events)
        else:
            epoll.register(self.fd, events)
        self.watching = events

    def readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer
            self.close(abort=True)
            return
        if not data:
            self.close(abort=False)
            return
        try:
            self._process(data)
        except GnomonError as exc:
            self.service.tls_failures += 1
            log.debug("NTS-KE connection dropped: %s", exc)
            self._flush()  # the TLS alert OpenSSL queued, if any
            self.close(abort=False)
        except Exception:  # a bug must cost one connection, never the service
            log.exception("NTS-KE connection failed")
            self.close(abort=True)

    def _process(self, data: bytes) -> None:
        engine = self.engine
        assert engine is not None
        engine.receive(data)
        if not self.handshake_done:
            if not engine.handshake():
                self._flush()  # the server's flight
                return
            # Done: what OpenSSL queued now (its session tickets) leaves with the response,
            # in the same write, rather than costing a segment and a wake-up of its own.
            self.handshake_done = True
            if engine.alpn != ALPN_NTSKE:
                raise KeProtocolError("client did not negotiate ALPN ntske/1")
            self.stream = RecordStream(self.service.limits.max_message)
        stream = self.stream
        assert stream is not None
        while True:
            payload = engine.read_record()
            if not payload:
                break
            try:
                records = stream.feed(payload)
            except KeProtocolError:
                self._respond(self.service.responder.error(ErrorCode.BAD_REQUEST))
                return
            if records is not None:
                response = self.service.responder.respond(
                    records,
                    engine.export,
                    unix_ns=time.time_ns(),
                    randomness=os.urandom(RANDOM_LEN),
                )
                self._respond(response)
                return
        if engine.closed:
            self.close(abort=False)

    def _respond(self, response: bytes) -> None:
        engine = self.engine
        assert engine is not None
        engine.write(response)
        engine.close()
        self._flush()
        self.close(abort=False)

    def _flush(self) -> None:
        engine = self.engine
        if engine is None:
            return
        outgoing = engine.outgoing()
        if not outgoing:
            return
        if self.pending:
            self.pending += outgoing
            return
        try:
            sent = os.write(self.fd, outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer is gone
            self.close(abort=True)
            return
        if sent < len(outgoing):
            self.pending = outgoing[sent:]
            self.watch(_EPOLLOUT)

    def writable(self) -> None:
        try:
            sent = os.write(self.fd, self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(abort=True)
            return
        self.pending = self.pending[sent:]
        if self.pending:
            return
        if self.closing:
            self.close(abort=False)
        else:
            self.watch(_EPOLLIN)

    def close(self, *, abort: bool) -> None:
        if self.fd < 0:
            return
        self.finished = True
        self.engine = None
        self.stream = None
        if self.pending and not abort:
            self.closing = True  # the rest of the response first; the deadline still holds
            return
        self.service._forget(self)
        fd, self.fd = self.fd, -1
        _close(fd)  # also takes it out of the epoll set


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
