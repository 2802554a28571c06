"""The NTS-KE service: TLS 1.3 over asyncio, one protocol object per connection.

pyOpenSSL runs over memory BIOs (``TlsEngine``), so no thread is needed per
connection. Every connection has one deadline for handshake and request;
the number of connections is capped; the response goes out in one write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ..errors import GnomonError, KeProtocolError
from ..proto.acl import Acl
from ..proto.ke import ErrorCode, RecordStream
from ..proto.ratelimit import KeRateLimiter
from ..proto.server import KeResponder
from ..tls import ALPN_NTSKE, TlsEngine
from .certificates import CertificateSource

log = logging.getLogger("gnomon.ke")


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

    def stats(self) -> dict[str, int]:
        return {
            "tls_failure": self.tls_failures,
            "timeout": self.timeouts,
            "over_capacity": self.rejected,
            "denied": self.denied,
            "rate_limited": self.rate_limited,
        }

    def protocol(self) -> asyncio.Protocol:
        return _KeConnection(self)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol, host, port, reuse_address=True, reuse_port=reuse_port or None
        )


class _KeConnection(asyncio.Protocol):
    def __init__(self, service: KeService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.engine: TlsEngine | None = None
        self.stream = RecordStream(service.limits.max_message)
        self.handshake_done = False
        self.finished = False
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        service = self.service
        if service.acl is not None or service.rate_limiter is not None:
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if peer else ""
            if service.acl is not None and not service.acl.permits(host):
                service.denied += 1
                transport.abort()
                return
            limiter = service.rate_limiter
            if limiter is not None and not limiter.allow_host(host, time.monotonic()):
                service.rate_limited += 1
                transport.abort()
                return
        if service.active >= service.limits.max_connections:
            service.rejected += 1
            transport.abort()
            return
        service.active += 1
        self.counted = True
        self.engine = TlsEngine(service.certificates.context(), server_side=True)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(service.limits.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self.service.timeouts += 1
        self._close(abort=True)

    def data_received(self, data: bytes) -> None:
        if self.engine is None or self.finished:
            return
        try:
            self._process(data)
        except GnomonError as exc:
            self.service.tls_failures += 1
            log.debug("NTS-KE connection dropped: %s", exc)
            self._flush()  # the TLS alert OpenSSL queued, if any
            self._close(abort=False)
        except Exception:  # a bug must cost one connection, never the service
            log.exception("NTS-KE connection failed")
            self._close(abort=True)

    def _process(self, data: bytes) -> None:
        engine = self.engine
        assert engine is not None
        engine.receive(data)
        if not self.handshake_done:
            done = engine.handshake()
            self._flush()
            if not done:
                return
            self.handshake_done = True
            if engine.alpn != ALPN_NTSKE:
                raise KeProtocolError("client did not negotiate ALPN ntske/1")
        payload = engine.read()
        try:
            records = self.stream.feed(payload)
        except KeProtocolError:
            self._respond(self.service.responder.error(ErrorCode.BAD_REQUEST))
            return
        if records is not None:
            self._respond(self.service.responder.respond(records, engine.export))
        elif engine.closed:
            self._close(abort=False)

    def _respond(self, response: bytes) -> None:
        engine = self.engine
        assert engine is not None
        engine.write(response)
        engine.close()
        self._flush()
        self._close(abort=False)

    def _flush(self) -> None:
        if self.engine is not None and self.transport is not None:
            outgoing = self.engine.outgoing()
            if outgoing:
                self.transport.write(outgoing)

    def _close(self, *, abort: bool) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def eof_received(self) -> bool | None:
        self._close(abort=False)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.service.active -= 1
            self.counted = False
