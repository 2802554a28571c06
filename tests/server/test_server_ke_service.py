"""The NTS-KE service over real TLS on loopback: framing, limits, refusals, key export."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from typing import Any

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib

from gnomon.certs import DemoPki
from gnomon.client.ntp import fresh_request
from gnomon.client.session import Session
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, derive_keys
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.cookie import CookieCodec, CookieKey
from gnomon.proto.nts.ke import MAX_COOKIES, ErrorCode, Record, RecordStream, RecordType
from gnomon.proto.nts.ke_server import KeResponder
from gnomon.server.ke import KeService
from gnomon.server.keconnection import KeOutcome, KeServerState
from gnomon.tls import TlsEngine

from .helpers import (
    LOOPBACK,
    WAIT,
    RawKeClient,
    Refused,
    aead_record,
    base_config,
    client_context,
    compliant_record,
    error_code,
    ke_request,
    message,
    npn,
    open_reply,
    records_of,
    running_server,
    u16s,
    udp_ask,
    wait_closed,
)

GOOD = message(npn(0), aead_record(AES_128_GCM_SIV, AES_SIV_CMAC_256), compliant_record())


def cookies(records: tuple[Record, ...]) -> list[bytes]:
    return [r.body for r in records_of(records, RecordType.NEW_COOKIE)]


async def test_session_gets_authenticated_time(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        session = Session(ca_file=pki.ca_cert, timeout=3.0)
        result = await session.aquery(LOOPBACK, server.bound_ke_port)
        assert result.authenticated and result.key_exchange
        assert result.port == server.bound_ntp_port  # learnt from Port Negotiation
        assert result.leap == 3 and result.stratum == 16  # no upstream: honest ignorance
        again = await session.aquery(LOOPBACK, server.bound_ke_port)
        assert not again.key_exchange


async def test_request_one_byte_per_tls_record_is_answered(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        outcome = await asyncio.to_thread(ke_request, server.bound_ke_port, GOOD, per_write=1)
    assert error_code(outcome.records) is None
    assert len(cookies(outcome.records)) == MAX_COOKIES


async def test_request_longer_than_16384_bytes_is_refused_in_one_write(pki: DemoPki) -> None:
    filler = Record(0x2345, bytes(17000)).encode()  # one record longer than the limit
    request = message(npn(0), aead_record(AES_SIV_CMAC_256))[:-4] + filler + message()
    async with running_server(base_config(pki)) as server:
        try:
            outcome = await asyncio.to_thread(ke_request, server.bound_ke_port, request)
        except Refused:
            return
    assert error_code(outcome.records) == ErrorCode.BAD_REQUEST


async def test_request_longer_than_16384_bytes_is_refused_in_small_records(
    pki: DemoPki,
) -> None:
    """The limit bounds the whole message, not only what is still unparsed."""
    # distinct unknown non-critical types: a repeated one would be a Bad Request anyway
    filler = b"".join(Record(0x2000 + i, bytes(1000)).encode() for i in range(20))  # 20 KB
    request = message(npn(0), aead_record(AES_SIV_CMAC_256))[:-4] + filler + message()
    async with running_server(base_config(pki)) as server:
        try:
            outcome = await asyncio.to_thread(
                ke_request, server.bound_ke_port, request, per_write=1004
            )
        except Refused:
            return
    assert error_code(outcome.records) == ErrorCode.BAD_REQUEST


async def test_bad_request_over_tls_gets_error_record(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        outcome = await asyncio.to_thread(
            ke_request, server.bound_ke_port, message(aead_record(AES_SIV_CMAC_256))
        )
    assert error_code(outcome.records) == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("alpn", [None, (b"http/1.1",)], ids=["no-alpn", "other-alpn"])
async def test_client_without_ntske_alpn_is_refused(pki: DemoPki, alpn: object) -> None:
    async with running_server(base_config(pki)) as server:
        with pytest.raises(Refused):
            await asyncio.to_thread(ke_request, server.bound_ke_port, GOOD, alpn=alpn)
        # and the service still works
        outcome = await asyncio.to_thread(ke_request, server.bound_ke_port, GOOD)
        assert len(cookies(outcome.records)) == MAX_COOKIES


async def test_tls_1_2_client_gets_protocol_version_alert(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        with pytest.raises(Refused, match="protocol version"):
            await asyncio.to_thread(
                ke_request, server.bound_ke_port, GOOD, max_version=SSL.TLS1_2_VERSION
            )


async def test_client_with_other_alpn_gets_no_application_protocol_alert(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        with pytest.raises(Refused, match="no application protocol"):
            await asyncio.to_thread(ke_request, server.bound_ke_port, GOOD, alpn=(b"http/1.1",))


async def test_tls_1_2_client_is_refused(pki: DemoPki) -> None:
    async with running_server(base_config(pki)) as server:
        with pytest.raises(Refused):
            await asyncio.to_thread(
                ke_request, server.bound_ke_port, GOOD, max_version=SSL.TLS1_2_VERSION
            )
        assert server.ke_service.tls_failures >= 1


# --- keys: compliant vs legacy exporter context, checked through NTP ----------------------


def _ntp_with_keys(ntp_port: int, aead: int, keys: tuple[bytes, bytes], cookie: bytes) -> str:
    """'ok' for an authenticated answer, 'nak' for an NTS NAK, 'none' for silence."""
    association = Association(aead, keys[0], keys[1], [cookie])
    packet, _ = fresh_request(association)
    reply = udp_ask(ntp_port, packet)
    if reply is None:
        return "none"
    header = open_reply(reply, aead, keys[1]) if len(reply) > 48 else None
    if header is not None and header.authenticated:
        return "ok"
    if reply[12:16] == b"NTSN" and reply[1] == 0:
        return "nak"
    return "other"


@pytest.mark.parametrize(
    ("offered", "send_1024", "compliant"),
    [
        ((AES_128_GCM_SIV,), True, True),
        ((AES_128_GCM_SIV,), False, True),  # 30 alone without 1024: RFC 8915 5.1's context
        ((AES_SIV_CMAC_256,), False, True),
        ((AES_128_GCM_SIV, AES_SIV_CMAC_256), False, True),  # chrony without 1024: gets 15
    ],
    ids=["gcm-siv-with-1024", "gcm-siv-alone", "siv-cmac", "gcm-siv-and-siv-cmac"],
)
async def test_keys_follow_the_negotiated_exporter_context(
    pki: DemoPki, offered: tuple[int, ...], send_1024: bool, compliant: bool
) -> None:
    extra = (compliant_record(),) if send_1024 else ()
    async with running_server(base_config(pki)) as server:
        outcome = await asyncio.to_thread(
            ke_request, server.bound_ke_port, message(npn(0), aead_record(*offered), *extra)
        )
        (aead,) = u16s(records_of(outcome.records, RecordType.AEAD_ALGORITHM)[0].body)
        jar = cookies(outcome.records)
        right = derive_keys(outcome.exporter, aead, compliant=compliant)
        results = {
            "right": await asyncio.to_thread(
                _ntp_with_keys, server.bound_ntp_port, aead, right, jar[0]
            )
        }
        if aead == AES_128_GCM_SIV:
            wrong = derive_keys(outcome.exporter, aead, compliant=not compliant)
            results["wrong"] = await asyncio.to_thread(
                _ntp_with_keys, server.bound_ntp_port, aead, wrong, jar[1]
            )
    assert results["right"] == "ok"
    if "wrong" in results:
        assert results["wrong"] == "nak"


async def test_server_and_port_records_from_config(pki: DemoPki) -> None:
    config = base_config(pki, advertised_server="ntp.example.net", advertised_port=4123)
    async with running_server(config) as server:
        outcome = await asyncio.to_thread(ke_request, server.bound_ke_port, GOOD)
    (name,) = records_of(outcome.records, RecordType.NTPV4_SERVER)
    (port,) = records_of(outcome.records, RecordType.NTPV4_PORT)
    assert name.body == b"ntp.example.net"
    assert u16s(port.body) == [4123]


# --- timeouts and connection limits ---------------------------------------------------------


class ManualClock:
    """The KE service's clock in a test: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _manual_clock(server: object) -> tuple[KeService, ManualClock]:
    service = server.ke_service  # type: ignore[attr-defined]
    assert service is not None and service.active == 0  # before any connection
    clock = ManualClock()
    service.clock = clock
    return service, clock


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


@pytest.mark.parametrize("handshake_first", [False, True], ids=["silent", "after-handshake"])
async def test_idle_client_is_dropped_and_does_not_block_others(
    pki: DemoPki, handshake_first: bool
) -> None:
    async with running_server(base_config(pki, ke_timeout=5.0)) as server:
        service, clock = _manual_clock(server)
        port = server.bound_ke_port
        with RawKeClient(port) as idle:
            if handshake_first:
                await asyncio.to_thread(idle.handshake)
            await _wait_active(server, 1)
            outcome = await asyncio.to_thread(ke_request, port, GOOD)
            assert len(cookies(outcome.records)) == MAX_COOKIES
            await _wait_active(server, 1)  # answered while the idle client held its slot
            clock.advance(4.9)
            service.expire()
            assert _still_open(idle.sock) and service.timeouts == 0
            clock.advance(0.2)
            service.expire()
            assert service.timeouts == 1 and service.active == 0
            assert await asyncio.to_thread(wait_closed, idle.sock, 2.0) < 2.0


async def _wait_active(server: object, count: int) -> None:
    await _wait_service_active(server.ke_service, count)  # type: ignore[attr-defined]


async def _wait_service_active(service: KeService, count: int) -> None:
    async with asyncio.timeout(5):
        while service.active != count:
            await asyncio.sleep(0.01)


async def test_max_connections_refuses_the_third_then_serves_later(pki: DemoPki) -> None:
    async with running_server(base_config(pki, ke_max_connections=2)) as server:
        port = server.bound_ke_port
        first, second = RawKeClient(port), RawKeClient(port)
        try:
            for busy in (first, second):  # TLS up: neither is idle
                await asyncio.to_thread(busy.handshake)
            await _wait_active(server, 2)
            with pytest.raises(Refused):
                await asyncio.to_thread(ke_request, port, GOOD, timeout=3.0)
            assert server.ke_service.rejected >= 1
        finally:
            first.close()
            second.close()
        await _wait_active(server, 0)
        for _ in range(3):
            outcome = await asyncio.to_thread(ke_request, port, GOOD)
            assert len(cookies(outcome.records)) == MAX_COOKIES


async def test_at_the_cap_the_oldest_idle_connection_makes_room(pki: DemoPki) -> None:
    """Connections without a whole ClientHello are closed oldest first for new ones."""
    async with running_server(base_config(pki, ke_max_connections=3)) as server:
        port = server.bound_ke_port
        busy = RawKeClient(port)  # the oldest, but past its ClientHello: kept
        idle = []
        try:
            await asyncio.to_thread(busy.handshake)
            for _ in range(2):
                idle.append(socket.create_connection((LOOPBACK, port), timeout=5))
                await _wait_active(server, len(idle) + 1)
            outcome = await asyncio.to_thread(ke_request, port, GOOD)
            assert len(cookies(outcome.records)) == MAX_COOKIES
            assert await asyncio.to_thread(wait_closed, idle[0], 2.0) < 2.0  # made room
            assert _still_open(idle[1]) and _still_open(busy.sock)
            service = server.ke_service
            assert service is not None
            assert service.evicted == 1 and service.rejected == 0
        finally:
            busy.close()
            for sock in idle:
                sock.close()


async def test_dual_stack_listen(pki: DemoPki) -> None:
    async with running_server(base_config(pki, listen=(LOOPBACK, "::1"))) as server:
        session = Session(ca_file=pki.ca_cert, timeout=3.0)
        for host in (LOOPBACK, "::1"):
            result = await session.aquery(host, server.bound_ke_port)
            assert result.authenticated
            assert result.address == host


# --- TLS sessions: NTS-KE clients never resume -------------------------------------------


def _second_handshake_resumes(port: int) -> tuple[bool, int]:
    """(whether a handshake offering the session a full exchange left behind was resumed,
    the bytes of TLS records that came after the server's first flight)."""
    with RawKeClient(port) as first:
        first.handshake()
        first.send(GOOD)
        seen = 0
        stream = RecordStream(1 << 20)
        records = None
        while records is None:
            data = first._recv()
            seen += len(data)
            first.tls.receive(data)
            records = stream.feed(first.tls.read())  # takes in any NewSessionTicket too
        session = first.tls.conn.get_session()
        context = first.tls.conn.get_context()
    assert len(cookies(records)) == MAX_COOKIES
    with RawKeClient(port) as second:
        second.tls = TlsEngine(context, server_side=False)  # a session resumes in its context
        second.tls.conn.set_session(session)
        second.handshake()
        return bool(openssl_lib.SSL_session_reused(second.tls.conn._ssl)), seen


async def test_server_issues_no_resumable_session(pki: DemoPki) -> None:
    """No stateless tickets (each an encrypted copy of the session: two per handshake by
    OpenSSL's default) and no session cache: nothing a client could resume with."""
    async with running_server(base_config(pki)) as server:
        resumed, after_flight = await asyncio.to_thread(
            _second_handshake_resumes, server.bound_ke_port
        )
        context = server.certificates.context()  # type: ignore[union-attr]
    assert not resumed
    assert context.get_session_cache_mode() == SSL.SESS_CACHE_OFF
    # After the handshake: the response (~650 bytes with close_notify) and, from OpenSSL
    # releases that still send them, two useless 79-byte stateful tickets; OpenSSL's default
    # stateless ones are 255 bytes each (about 1160 bytes in all).
    assert after_flight < 1000


# --- the write path: a peer that takes the response slowly --------------------------------


class _BigResponse:
    """Stands in for a connection whose response is more than a socket buffer takes."""

    state = KeServerState.CLOSED
    outcome = KeOutcome.RESPONSE
    deadline = 0.0

    def __init__(self, data: bytes) -> None:
        self.data = data

    def data_to_send(self) -> bytes:
        data, self.data = self.data, b""
        return data


async def test_response_larger_than_the_socket_buffer_is_written_in_full(pki: DemoPki) -> None:
    from gnomon.server.certificates import CertificateSource
    from gnomon.server.ke import KeLimits, _KeSocket

    service = KeService(
        KeResponder(lambda _unix_ns: CookieCodec(CookieKey(1, bytes(16)))),
        CertificateSource(pki.cert_chain, pki.key),
        KeLimits(timeout=5.0),
    )
    listener = await service.listen(LOOPBACK, 0)
    ours, theirs = socket.socketpair()
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        fd = ours.detach()
        os.set_blocking(fd, False)
        payload = os.urandom(1 << 20)
        sock = _KeSocket(service, fd, _BigResponse(payload))  # type: ignore[arg-type]
        service._connections[fd] = sock
        service.active += 1
        sock.watch(select.EPOLLIN)
        sock.send()
        assert sock.pending  # the socket took part of it
        assert service.active == 1  # still open until the rest is written

        def read_all() -> bytes:
            theirs.settimeout(5.0)
            chunks = []
            while chunk := theirs.recv(65536):
                chunks.append(chunk)
            theirs.close()  # after the server's end of stream, as a client does
            return b"".join(chunks)

        received = await asyncio.to_thread(read_all)
        await _wait_service_active(service, 0)  # closed once the client closed
    finally:
        theirs.close()
        listener.close()
        service.close()
    assert received == payload  # all of it, in order, then the end of the stream


# --- cipher suite: the server's choice ------------------------------------------------------


def _negotiated_cipher(port: int, suites: bytes | None) -> str:
    with RawKeClient(port) as client:
        if suites is not None:
            context = client_context()
            context.set_tls13_ciphersuites(suites)
            client.tls = TlsEngine(context, server_side=False)
        client.handshake()
        return str(client.tls.conn.get_cipher_name())


@pytest.mark.parametrize(
    ("client_suites", "expected"),
    [
        (None, "TLS_AES_128_GCM_SHA256"),  # OpenSSL's client asks for AES-256-GCM first
        (b"TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
        (b"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    ],
)
async def test_server_chooses_the_cipher_suite(
    pki: DemoPki, client_suites: bytes | None, expected: str
) -> None:
    async with running_server(base_config(pki)) as server:
        cipher = await asyncio.to_thread(_negotiated_cipher, server.bound_ke_port, client_suites)
    assert cipher == expected


async def test_stopping_the_server_closes_open_connections(pki: DemoPki) -> None:
    async with running_server(base_config(pki, ke_timeout=60.0)) as server:
        service, _ = _manual_clock(server)  # time stands still: no deadline can close it
        idle = socket.create_connection((LOOPBACK, server.bound_ke_port))
        await _wait_active(server, 1)  # accepted, waiting for a ClientHello
    try:
        # Closed by the stop, at once.
        assert await asyncio.to_thread(wait_closed, idle, 2.0) < 2.0
        assert service.active == 0 and service.timeouts == 0
    finally:
        idle.close()


# --- RFC 8915 section 4: how a connection ends ------------------------------------------------


def _read_to_the_end(client: RawKeClient) -> tuple[tuple[Record, ...] | None, bool, str]:
    """(the response's records, whether the server's close_notify came, how TCP ended:
    'eof' or 'reset')."""
    data = bytearray()
    ending = "eof"
    client.sock.settimeout(WAIT)
    while True:
        try:
            chunk = client.sock.recv(65536)
        except ConnectionResetError:
            ending = "reset"
            break
        if not chunk:
            break
        data += chunk
    client.tls.receive(bytes(data))
    records = RecordStream(1 << 20).feed(client.tls.read())
    return records, client.tls.closed, ending


async def test_close_notify_right_behind_the_request_still_gets_the_whole_response(
    pki: DemoPki,
) -> None:
    """The client closes its side at once; the server must not reset the connection
    (closing with the close_notify unread would), which can destroy the response."""
    async with running_server(base_config(pki)) as server:
        responder = server.ke
        respond = responder.respond
        responding, sent = threading.Event(), threading.Event()

        def held_respond(*args: Any, **kwargs: Any) -> bytes:
            responding.set()  # the request was read, without what follows it
            assert sent.wait(WAIT)  # the close_notify is waiting in the server's socket
            return respond(*args, **kwargs)

        responder.respond = held_respond  # type: ignore[method-assign]

        def exchange() -> tuple[tuple[Record, ...] | None, bool, str]:
            with RawKeClient(server.bound_ke_port) as client:
                client.handshake()
                client.send(GOOD)
                assert responding.wait(WAIT)
                client.tls.close()
                client._flush()
                sent.set()
                return _read_to_the_end(client)

        records, close_notify, ending = await asyncio.to_thread(exchange)
    assert records is not None and len(cookies(records)) == MAX_COOKIES
    assert close_notify
    assert ending == "eof"


async def test_incomplete_request_at_the_deadline_gets_bad_request_and_close_notify(
    pki: DemoPki,
) -> None:
    async with running_server(base_config(pki, ke_timeout=5.0)) as server:
        service, clock = _manual_clock(server)
        with RawKeClient(server.bound_ke_port) as client:
            await asyncio.to_thread(client.handshake)
            await asyncio.to_thread(client.send, GOOD[:-4])  # all but End of Message
            (sock,) = service._connections.values()
            async with asyncio.timeout(WAIT):  # until the server has TLS up
                while sock.connection.state is not KeServerState.REQUEST:
                    await asyncio.sleep(0.01)
            clock.advance(5.0)
            service.expire()
            records, close_notify, ending = await asyncio.to_thread(_read_to_the_end, client)
    assert records is not None and error_code(records) == ErrorCode.BAD_REQUEST
    assert close_notify and ending == "eof"
    assert service.timeouts == 1


@pytest.mark.parametrize("how", ["tcp-close", "close-notify"])
async def test_tls_without_a_request_is_counted_as_no_request(pki: DemoPki, how: str) -> None:
    """Health checks: TLS, then a close, no NTS-KE request."""
    async with running_server(base_config(pki)) as server:
        service = server.ke_service
        assert service is not None

        def health_check() -> None:
            with RawKeClient(server.bound_ke_port) as client:
                client.handshake()
                if how == "close-notify":
                    client.tls.close()
                    client._flush()

        await asyncio.to_thread(health_check)
        await _wait_active(server, 0)
        stats = service.stats()
        (metrics,) = [
            r.counters["ke"]
            for source in server.metric_sources()
            if "ke" in (r := source(0.0)).counters
        ]
    assert stats["no_request"] == 1
    assert metrics["no_request"] == 1  # what /metrics shows as outcome="no_request"
    assert stats["tls_failure"] == stats["timeout"] == 0
    assert server.ke.counters.as_dict() == {"ok": 0, "error": 0, "no_common_aead": 0}
