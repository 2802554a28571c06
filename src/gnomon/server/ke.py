"""The NTS-KE service: TLS 1.3 over non-blocking sockets in the asyncio loop.

Each connection's protocol (TLS over memory BIOs, ALPN, record framing, the
responder, what its deadline means) is a sans-I/O
:class:`~gnomon.server.keconnection.KeServerConnection`; this module only
moves its bytes, so no thread is needed per connection. It keeps the
descriptors, their readiness and the deadlines (one per connection, for
handshake and request, read from :attr:`KeService.clock`); the number of
connections is capped; the response goes out in one write.

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
from collections.abc import Callable
from dataclasses import dataclass

from ..proto.acl import Acl
from ..proto.nts.ke_server import KeResponder
from ..proto.ratelimit import KeRateLimiter
from .certificates import CertificateSource
from .keconnection import KeOutcome, KeServerConnection, KeServerState

log = logging.getLogger("gnomon.ke")

_READ_SIZE = 65536
_ACCEPT_BATCH = 64  # connections taken per listening-socket event
_BACKLOG = 256
_ACCEPT_PAUSE = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_CLOSED = KeServerState.CLOSED
_HELLO = KeServerState.HELLO
_RESPONSE = KeOutcome.RESPONSE


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
        clock: Callable[[], float] = time.monotonic,
    ):
        self.responder = responder
        self.clock = clock  # deadlines and rate limits; a test may set its own
        self.certificates = certificates
        self.limits = limits
        self.acl = None if acl is None or acl.unrestricted else acl
        self.rate_limiter = rate_limiter
        self.active = 0
        self.rejected = 0  # over the connection cap, with no idle connection to close
        self.evicted = 0  # idle (no whole ClientHello) closed to make room at the cap
        self.denied = 0  # by the allow/deny lists
        self.rate_limited = 0
        self.timeouts = 0
        self.tls_failures = 0
        self.no_request = 0  # TLS done, then closed without a request (health checks)
        self._connections: dict[int, _KeSocket] = {}  # by file descriptor
        self._deadlines: collections.deque[_KeSocket] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stats(self) -> dict[str, int]:
        return {
            "tls_failure": self.tls_failures,
            "timeout": self.timeouts,
            "over_capacity": self.rejected,
            "evicted": self.evicted,
            "denied": self.denied,
            "rate_limited": self.rate_limited,
            "no_request": self.no_request,
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
        for sock in list(self._connections.values()):
            sock.close()
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
        now = self.clock()
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
            # Full: the oldest connection that has not sent a whole ClientHello makes room
            # (an idle flood cannot lock clients out); with none, this one is refused, and
            # that is not charged to its address's rate limit.
            idle = None
            if self.active >= limits.max_connections:
                idle = self._oldest_idle()
                if idle is None:
                    self.rejected += 1
                    _close(fd)
                    continue
            if acl is not None or limiter is not None:
                host = str(peer[0]) if peer else ""
                if acl is not None and not acl.permits(host):
                    self.denied += 1
                    _close(fd)
                    continue
                if limiter is not None and not limiter.allow_host(host, now):
                    self.rate_limited += 1
                    _close(fd)
                    continue
            if idle is not None:
                self.evicted += 1
                idle.close()
            try:
                os.set_blocking(fd, False)
                sock = _KeSocket(
                    self,
                    fd,
                    KeServerConnection(
                        self.certificates.context(),
                        self.responder,
                        deadline=now + limits.timeout,
                        unix_ns=time.time_ns,
                        randomness=os.urandom,
                        max_message=limits.max_message,
                    ),
                )
            except Exception:
                log.exception("NTS-KE connection not set up")
                _close(fd)
                continue
            self.active += 1
            self._connections[fd] = sock
            deadlines = self._deadlines
            while deadlines and deadlines[0].fd < 0:  # done with: only the timer kept them
                deadlines.popleft()
            deadlines.append(sock)
            if self._timer is None:
                self._arm_timer()
            # The ClientHello is often queued already: answer it without a trip through epoll.
            sock.readable()
            if sock.fd >= 0 and not sock.watching:
                sock.watch(_EPOLLIN)

    def _oldest_idle(self) -> _KeSocket | None:
        """The open connection accepted first among those still waiting for a whole
        ClientHello (the deadline queue is in accept order)."""
        for sock in self._deadlines:
            if sock.fd >= 0 and sock.connection.state is _HELLO:
                return sock
        return None

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0 and self._loop is not None:  # not closed meanwhile
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _ready(self) -> None:
        epoll = self._epoll
        if epoll is None:
            return
        connections = self._connections
        for fd, events in epoll.poll(0, 256):
            sock = connections.get(fd)
            if sock is None:
                continue
            if events & _EPOLLOUT or sock.pending:
                sock.writable()
            else:
                sock.readable()

    def _forget(self, sock: _KeSocket) -> None:
        if self._connections.pop(sock.fd, None) is not None:
            self.active -= 1

    def _count(self, connection: KeServerConnection) -> None:
        outcome = connection.outcome
        if outcome is KeOutcome.TLS_FAILURE:
            self.tls_failures += 1
            log.debug("NTS-KE connection dropped: %s", connection.error)
        elif outcome is KeOutcome.TIMEOUT:
            self.timeouts += 1
        elif outcome is KeOutcome.NO_REQUEST:
            self.no_request += 1

    def _arm_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_at(
            loop.time() + max(0.0, self._deadlines[0].deadline - self.clock()),
            self.expire,
        )

    def expire(self) -> None:
        """End the connections whose deadline is past by :attr:`clock` (the timer's
        callback; a test with a clock of its own calls it after moving the clock)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadlines = self._deadlines
        now = self.clock()
        while deadlines:
            sock = deadlines[0]
            if sock.fd >= 0:  # still open (or writing its last bytes, or lingering)
                if sock.deadline > now:
                    break
                if sock.connection.state is not _CLOSED:
                    sock.connection.handle_timer(now)  # an Error record once TLS is up
                    sock.send()  # what the socket takes at once
                sock.close()
            deadlines.popleft()
        if deadlines and self._loop is not None:
            self._arm_timer()


class _KeSocket:
    """The I/O half of one connection: its descriptor, what the socket has not taken
    yet, and what epoll watches for. The protocol is :class:`KeServerConnection`'s.

    Once the connection is ``CLOSED`` its last bytes are written (waiting for
    EPOLLOUT if need be, within the deadline), then what arrived meanwhile is
    read and the socket closed: closing a socket with unread input makes the
    kernel reset the connection, which destroys whatever of the response is
    still in flight, and RFC 8915 section 4 lets a client send its close_notify
    right behind the request.
    """

    __slots__ = ("connection", "deadline", "fd", "pending", "service", "watching")

    def __init__(self, service: KeService, fd: int, connection: KeServerConnection) -> None:
        self.service = service
        self.fd = fd
        self.connection = connection  # deleted at close: its TLS state is not kept around
        self.deadline = connection.deadline  # read after the close too, by the timer
        self.watching = 0  # epoll events registered for
        self.pending = b""  # what the socket did not take yet

    def watch(self, events: int) -> None:
        if self.watching == events:
            return
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
            data = b""
        connection = self.connection
        if connection.state is _CLOSED:  # input while the last bytes wait to be written
            return
        try:
            if data:
                connection.receive_data(data, self.service.clock())
            else:
                connection.connection_lost()
        except Exception:  # a bug must cost one connection, never the service
            log.exception("NTS-KE connection failed")
            self.close()
            return
        self.send()

    def send(self) -> None:
        """Write what the connection queued; once it is ``CLOSED``, count how it ended
        and, when all is written, close."""
        connection = self.connection
        closed = connection.state is _CLOSED
        if closed and connection.outcome is not _RESPONSE:
            self.service._count(connection)  # (the responder counted the responses)
        outgoing = connection.data_to_send()
        if outgoing:
            if self.pending:
                self.pending += outgoing
                return
            try:
                sent = os.write(self.fd, outgoing)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # the peer is gone
                self.close()
                return
            if sent < len(outgoing):
                self.pending = outgoing[sent:]
                self.watch(_EPOLLOUT)
                return
        if closed and not self.pending:
            self._written()

    def _written(self) -> None:
        """All written: read what came in meanwhile (a close_notify), then close."""
        fd = self.fd
        for _ in range(4):
            try:
                if len(os.read(fd, _READ_SIZE)) < _READ_SIZE:
                    break  # drained (or the client's FIN)
            except OSError:  # nothing more (EAGAIN), or a reset
                break
        self.close()

    def writable(self) -> None:
        try:
            sent = os.write(self.fd, self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.pending = self.pending[sent:]
        if self.pending:
            return
        if self.connection.state is _CLOSED:
            self._written()
        else:
            self.watch(_EPOLLIN)

    def close(self) -> None:
        if self.fd < 0:
            return
        self.service._forget(self)
        fd, self.fd = self.fd, -1
        del self.connection
        self.pending = b""
        _close(fd)  # also takes it out of the epoll set


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
