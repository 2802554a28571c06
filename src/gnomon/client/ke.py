"""NTS-KE client: TLS 1.3 with ALPN ``ntske/1``, blocking and asyncio.

:class:`KeConnection` joins the TLS engine and the sans-I/O
:class:`~gnomon.proto.nts.client.KeExchange`; :func:`ke_exchange` and
:func:`ake_exchange` only move its bytes over a socket under a deadline.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Sequence

from OpenSSL import SSL

from .._frozen import Frozen
from ..errors import GnomonError, KeProtocolError, QueryTimeoutError, TlsError
from ..hostport import NTS_KE_PORT as NTS_KE_PORT
from ..proto.nts.client import DEFAULT_AEADS, KeExchange, keys_from_response
from ..proto.nts.ke import KeResponse
from ..tls import ALPN_NTSKE, TlsEngine, TrustStore, client_context

TYPE_CHECKING = False  # a blocking query imports neither asyncio nor typing
if TYPE_CHECKING:
    import asyncio
    from datetime import datetime

NTP_PORT = 123

_CONTEXT: SSL.Context | None = None


def _client_context() -> SSL.Context:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = client_context()
    return _CONTEXT


class KeResult(Frozen):
    """Keys and cookies from one NTS-KE exchange, and where to send NTP."""

    __slots__ = __match_args__ = ("response", "c2s", "s2c", "ntp_host", "ntp_port")
    response: KeResponse
    c2s: bytes
    s2c: bytes
    ntp_host: str
    ntp_port: int

    def __init__(
        self, response: KeResponse, c2s: bytes, s2c: bytes, ntp_host: str, ntp_port: int
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "response", response)
        set_field(self, "c2s", c2s)
        set_field(self, "s2c", s2c)
        set_field(self, "ntp_host", ntp_host)
        set_field(self, "ntp_port", ntp_port)


class KeConnection:
    """The client side of one NTS-KE connection, without a socket.

    Send :meth:`data_to_send` to the server and pass what comes back to
    :meth:`receive_data`, which returns the :class:`KeResult` once the whole
    response has arrived and been checked.
    """

    def __init__(
        self,
        host: str,
        trust: TrustStore,
        aeads: Sequence[int] = DEFAULT_AEADS,
        ntp_server: str | None = None,
        ntp_port: int | None = None,
        verify_time: datetime | None = None,
    ) -> None:
        self.host = host
        self._trust = trust
        self._verify_time = verify_time  # check the certificate at this time, not the system's
        self._tls = TlsEngine(_client_context(), server_side=False, server_name=host)
        self._exchange = KeExchange(aeads, server=ntp_server, port=ntp_port)
        self._handshake_done = False
        self._result: KeResult | None = None
        self._tls.handshake()

    def data_to_send(self) -> bytes:
        return self._tls.outgoing()

    def receive(self, data: bytes) -> tuple[bytes, KeResult | None]:
        """Bytes read from the socket (``b""``: the server closed it): what to send
        back, and the result once the response is complete."""
        if not data:
            self.connection_closed()
        result = self.receive_data(data)
        return self.data_to_send(), result

    def receive_data(self, data: bytes) -> KeResult | None:
        if self._result is not None:
            return self._result
        self._tls.receive(data)
        if not self._handshake_done:
            if not self._tls.handshake():
                return None
            self._after_handshake()
        response = self._exchange.receive_data(self._tls.read())
        if response is None:
            if self._tls.closed:
                self._exchange.connection_closed()
            return None
        c2s, s2c = keys_from_response(response, self._tls.export)
        self._result = KeResult(
            response,
            c2s,
            s2c,
            ntp_host=response.server or self.host,
            ntp_port=response.port or NTP_PORT,
        )
        self._tls.close()
        return self._result

    def connection_closed(self) -> None:
        """The server closed TCP; raises unless the response was complete."""
        if self._result is None:
            if not self._handshake_done:
                raise TlsError(f"{self.host} closed the connection during the TLS handshake")
            raise KeProtocolError(f"{self.host} closed the connection before End of Message")

    def _after_handshake(self) -> None:
        self._handshake_done = True
        if self._tls.version != "TLSv1.3":
            raise TlsError(f"{self.host} negotiated {self._tls.version}, NTS-KE needs TLS 1.3")
        if self._tls.alpn != ALPN_NTSKE:
            raise TlsError(f"{self.host} did not agree to ALPN ntske/1")
        self._trust.verify(self._tls.peer_chain(), self.host, self._verify_time)
        # RFC 8915 section 4: the whole request in one write (one TLS record).
        self._tls.write(self._exchange.request())


@contextlib.contextmanager
def _failures(host: str, port: int, timeout: float) -> Iterator[None]:
    """What the socket raises, as one-line gnomon errors (the deadline included)."""
    try:
        yield
    except TimeoutError:
        raise QueryTimeoutError(
            f"NTS-KE with {host}:{port} timed out after {timeout:g} s"
        ) from None
    except OSError as exc:
        raise GnomonError(f"NTS-KE with {host}:{port} failed: {exc.strerror or exc}") from None


def _cannot_connect(host: str, port: int, exc: OSError) -> GnomonError:
    return GnomonError(f"cannot connect to {host}:{port}: {exc.strerror or exc}")


def ke_exchange(
    host: str,
    port: int = NTS_KE_PORT,
    *,
    trust: TrustStore,
    timeout: float = 5.0,
    aeads: Sequence[int] = DEFAULT_AEADS,
    ntp_server: str | None = None,
    ntp_port: int | None = None,
    verify_time: datetime | None = None,
) -> KeResult:
    """Run NTS-KE with ``host`` over a blocking socket, all within ``timeout``.

    ``verify_time``: check the server's certificate at that time instead of the
    system clock's (a time obtained elsewhere, when the local clock is wrong).
    """
    deadline = time.monotonic() + timeout
    with _failures(host, port, timeout):
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise
        except OSError as exc:
            raise _cannot_connect(host, port, exc) from None
        with sock:
            connection = KeConnection(host, trust, aeads, ntp_server, ntp_port, verify_time)
            outgoing, result = connection.data_to_send(), None
            while True:
                if outgoing:
                    sock.sendall(outgoing)
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                outgoing, result = connection.receive(sock.recv(65536))


async def ake_exchange(
    host: str,
    port: int = NTS_KE_PORT,
    *,
    trust: TrustStore,
    timeout: float = 5.0,
    aeads: Sequence[int] = DEFAULT_AEADS,
    ntp_server: str | None = None,
    ntp_port: int | None = None,
    verify_time: datetime | None = None,
) -> KeResult:
    """The asyncio twin of :func:`ke_exchange`."""
    import asyncio  # here: a blocking query need not pay for importing asyncio

    writer: asyncio.StreamWriter | None = None
    try:
        with _failures(host, port, timeout):
            async with asyncio.timeout(timeout):
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError as exc:
                    raise _cannot_connect(host, port, exc) from None
                connection = KeConnection(host, trust, aeads, ntp_server, ntp_port, verify_time)
                outgoing, result = connection.data_to_send(), None
                while True:
                    if outgoing:
                        writer.write(outgoing)
                        await writer.drain()
                    if result is not None:
                        return result
                    outgoing, result = connection.receive(await reader.read(65536))
    finally:
        if writer is not None:
            writer.close()
