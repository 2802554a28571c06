"""The server side of one NTS-KE connection, without sockets or clocks.

:class:`KeServerConnection` is the twin of the client's
:class:`~gnomon.client.ke.KeConnection`: pass what the client sent to
:meth:`~KeServerConnection.receive_data`, send what
:meth:`~KeServerConnection.data_to_send` returns, and call
:meth:`~KeServerConnection.handle_timer` once the deadline
(:attr:`~KeServerConnection.deadline`) has passed. Time comes in as
arguments; the only state outside the object is the shared TLS engine
(pyOpenSSL over memory BIOs). The NTS-KE rules themselves are
:class:`~gnomon.proto.nts.ke_server.KeResponder`'s. The service
(:mod:`gnomon.server.ke`) keeps the descriptors, readiness and deadlines.

Lifecycle (RFC 8915 section 4)::

    HELLO --ClientHello--> HANDSHAKE --client Finished--> REQUEST --End of Message--> CLOSED
      |                        |                             |                  (response)
      +------------------------+-----------------------------+--> CLOSED (TLS failure,
                                                                   client closed, deadline)

Every path ends in ``CLOSED``, with :attr:`~KeServerConnection.outcome`
saying how; after it, :meth:`~KeServerConnection.data_to_send` holds the
last bytes (the response and close_notify, an Error record, or a TLS alert)
and the transport is to be closed once they are written.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from OpenSSL import SSL

from ..errors import GnomonError, KeProtocolError, QueryTimeoutError, TlsError
from ..proto.nts.cookie import RANDOM_LEN
from ..proto.nts.ke import ErrorCode, RecordStream
from ..proto.nts.ke_server import KeResponder
from ..tls import ALPN_NTSKE, TlsEngine


class KeServerState(enum.IntEnum):  # (an int's hash: the table below is read per step)
    HELLO = 1  # waiting for a complete ClientHello (nothing sent yet)
    HANDSHAKE = 2  # server flight sent, waiting for the client's Finished
    REQUEST = 3  # TLS 1.3 with ntske/1 is up: reading the NTS-KE request
    CLOSED = 4  # nothing more is read; data_to_send() holds the last bytes


_HELLO, _HANDSHAKE, _REQUEST, _CLOSED = KeServerState

#: The allowed transitions, and the only ones.
TRANSITIONS: dict[KeServerState, frozenset[KeServerState]] = {
    _HELLO: frozenset({_HANDSHAKE, _CLOSED}),
    _HANDSHAKE: frozenset({_REQUEST, _CLOSED}),
    _REQUEST: frozenset({_CLOSED}),
    _CLOSED: frozenset(),
}


class KeOutcome(enum.Enum):
    """How a connection ended (the service counts each but ``RESPONSE``, whose
    kinds the responder counts: ok, error, no_common_aead)."""

    RESPONSE = "response"  # a response or an Error record, then close_notify
    TLS_FAILURE = "tls_failure"  # handshake failed (alert queued), or no ALPN ntske/1
    NO_REQUEST = "no_request"  # TLS done, then the client closed without a whole request
    TIMEOUT = "timeout"  # the deadline came first (an Error record if TLS was up)
    ABANDONED = "abandoned"  # the client closed during the TLS handshake


class KeServerConnection:
    """One NTS-KE connection as the server sees it (see the module docstring).

    ``deadline`` (any clock's seconds, the one ``now`` arguments come from)
    bounds handshake and request together; ``max_message`` bounds the request.
    The response's cookies take the time from ``unix_ns`` and their randomness
    from ``randomness`` (the service gives ``time.time_ns`` and ``os.urandom``).
    """

    __slots__ = (
        "_engine",
        "_outgoing",
        "_randomness",
        "_responder",
        "_stream",
        "_unix_ns",
        "deadline",
        "error",
        "outcome",
        "state",
    )

    def __init__(
        self,
        context: SSL.Context,
        responder: KeResponder,
        *,
        deadline: float,
        unix_ns: Callable[[], int],
        randomness: Callable[[int], bytes],
        max_message: int = 16384,
    ) -> None:
        self._engine = TlsEngine(context, server_side=True)
        self._responder = responder
        self._unix_ns = unix_ns
        self._randomness = randomness
        self._stream = RecordStream(max_message)
        self._outgoing = b""  # the server's flight, read out to tell HELLO from HANDSHAKE
        self.deadline = deadline
        self.state = _HELLO
        self.outcome: KeOutcome | None = None
        self.error: GnomonError | None = None  # what it ended with, for a failure

    def _move(self, state: KeServerState) -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"NTS-KE connection cannot go from {self.state} to {state}")
        self.state = state

    def _close(self, outcome: KeOutcome, error: GnomonError | None = None) -> None:
        self._move(_CLOSED)
        self.outcome = outcome
        self.error = error

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the client. Raises only on a bug; failures end in ``CLOSED``."""
        state = self.state
        if state is _CLOSED:
            return  # after the response: the client's close_notify, if anything
        if now >= self.deadline:
            self.handle_timer(now)
            return
        engine = self._engine
        engine.receive(data)
        if state is not _REQUEST:
            try:
                done = engine.handshake()
            except TlsError as exc:
                self._close(KeOutcome.TLS_FAILURE, exc)  # OpenSSL queued its alert
                return
            if not done:
                if state is _HELLO:
                    flight = engine.outgoing()
                    if flight:  # a whole ClientHello was read and answered
                        self._outgoing = flight
                        self._move(_HANDSHAKE)
                return
            # Done: what OpenSSL queued now leaves with the response, in the same write.
            if state is _HELLO:  # (only an engine that needs no flight of ours)
                self._move(_HANDSHAKE)
            self._move(_REQUEST)
            if engine.alpn != ALPN_NTSKE:
                self._close(
                    KeOutcome.TLS_FAILURE, KeProtocolError("client did not negotiate ALPN ntske/1")
                )
                return
        self._read_request()

    def _read_request(self) -> None:
        engine = self._engine
        stream = self._stream
        try:
            while payload := engine.read_record():
                try:
                    records = stream.feed(payload)
                except KeProtocolError:
                    self._respond(self._responder.error(ErrorCode.BAD_REQUEST))
                    return
                if records is not None:
                    response = self._responder.respond(
                        records,
                        engine.export,
                        unix_ns=self._unix_ns(),
                        randomness=self._randomness(RANDOM_LEN),
                    )
                    self._respond(response)
                    return
        except TlsError as exc:  # a bad record: OpenSSL queued its alert
            self._close(KeOutcome.TLS_FAILURE, exc)
            return
        if engine.closed:  # close_notify before the request was whole: answer it in kind
            engine.close()
            self._close(KeOutcome.NO_REQUEST, KeProtocolError("client closed before its request"))

    def _respond(
        self,
        response: bytes,
        outcome: KeOutcome = KeOutcome.RESPONSE,
        error: GnomonError | None = None,
    ) -> None:
        engine = self._engine
        engine.write(response)
        engine.close()  # close_notify right behind it
        self._close(outcome, error)

    def connection_lost(self) -> None:
        """The client closed (or reset) TCP."""
        state = self.state
        if state is _CLOSED:
            return
        if state is _REQUEST:
            self._close(KeOutcome.NO_REQUEST, KeProtocolError("client closed before its request"))
        else:
            self._close(KeOutcome.ABANDONED, TlsError("client closed during the TLS handshake"))

    def handle_timer(self, now: float) -> None:
        """End the connection if ``now`` is past its deadline.

        During the handshake it just ends; once TLS is up the client gets an
        Error record (Bad Request) and close_notify: it spoke TLS, so it is
        told why (RFC 8915 section 4).
        """
        if self.state is _CLOSED or now < self.deadline:
            return
        error = QueryTimeoutError("NTS-KE request not complete before the deadline")
        if self.state is _REQUEST:
            self._respond(self._responder.error(ErrorCode.BAD_REQUEST), KeOutcome.TIMEOUT, error)
        else:
            self._close(KeOutcome.TIMEOUT, error)

    def data_to_send(self) -> bytes:
        """What the client should receive next (b"" if nothing)."""
        flight = self._outgoing
        if flight:
            self._outgoing = b""
            return flight
        return self._engine.outgoing()
