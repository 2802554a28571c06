"""gnomon's NTS-KE client and server connections pumping bytes to each other in memory.

No socket, no clock: the client's :class:`KeConnection` and the server's
:class:`KeServerConnection` exchange what each has to send (aioquic's
``roundtrip``), with real TLS 1.3 between them and time passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import KeConnection, KeResult
from gnomon.errors import KeProtocolError, KeServerError, NegotiationError, TlsError
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256
from gnomon.proto.nts.cookie import CookieCodec, CookieKey
from gnomon.proto.nts.ke import (
    MAX_COOKIES,
    ErrorCode,
    Record,
    RecordStream,
    RecordType,
    build_request,
    encode_records,
)
from gnomon.proto.nts.ke_server import KeResponder
from gnomon.server.certificates import load_server_context
from gnomon.server.keconnection import (
    TRANSITIONS,
    KeOutcome,
    KeServerConnection,
    KeServerState,
)
from gnomon.tls import ALPN_NTSKE, TlsEngine, TrustStore

HOST = "localhost"
DEADLINE = 100.0  # the server connection's deadline, on the tests' own clock
NOW = 10.0
UNIX_NS = 1_800_000_000 * 10**9


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def context(pki: DemoPki) -> SSL.Context:
    return load_server_context(pki.cert_chain, pki.key)[0]


@pytest.fixture(scope="module")
def trust(pki: DemoPki) -> TrustStore:
    return TrustStore.from_file(pki.ca_cert)


CODEC = CookieCodec(CookieKey(3, bytes(range(16))))


class _Recording(KeServerConnection):
    """Keeps every state it passes through."""

    __slots__ = ("states",)

    def _move(self, state: KeServerState) -> None:
        if not hasattr(self, "states"):
            self.states = [self.state]
        super()._move(state)
        self.states.append(state)


class Server:
    def __init__(self, context: SSL.Context, responder: KeResponder | None = None) -> None:
        self.responder = responder or KeResponder(lambda _unix_ns: CODEC)
        self.connection = _Recording(
            context,
            self.responder,
            deadline=DEADLINE,
            unix_ns=lambda: UNIX_NS,
            randomness=lambda n: bytes(range(n)),  # the same for every test: nothing checks it
        )

    @property
    def states(self) -> list[KeServerState]:
        return getattr(self.connection, "states", [self.connection.state])

    def receive(self, data: bytes, *, chunk: int | None = None, now: float = NOW) -> None:
        step = chunk or len(data) or 1
        for start in range(0, len(data), step):
            self.connection.receive_data(data[start : start + step], now)

    def send(self) -> bytes:
        return self.connection.data_to_send()

    def check_path(self) -> None:
        for before, after in zip(self.states, self.states[1:], strict=False):
            assert after in TRANSITIONS[before]


def roundtrip(client: KeConnection, server: Server, *, chunk: int | None = None) -> KeResult:
    """Moves bytes both ways until neither side has any left; the client's result."""
    result = None
    while True:
        up = client.data_to_send()
        if up:
            server.receive(up, chunk=chunk)
        down = server.send()
        if down:
            result = client.receive_data(down) or result
        if not up and not down:
            break
    server.check_path()
    assert result is not None, "the exchange stalled"
    return result


class RawClient:
    """A TLS client in memory whose every byte the test chooses."""

    def __init__(self, alpn: list[bytes] | None = None) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        if alpn != []:  # [] offers no ALPN at all
            context.set_alpn_protos(alpn or [ALPN_NTSKE])
        context.set_verify(SSL.VERIFY_NONE)
        self.tls = TlsEngine(context, server_side=False)

    def handshake(self, server: Server) -> None:
        done = self.tls.handshake()
        while not done:
            server.receive(self.tls.outgoing())
            self.tls.receive(server.send())
            done = self.tls.handshake()
        server.receive(self.tls.outgoing())  # the client's Finished

    def response(self, server: Server) -> tuple[Record, ...]:
        self.tls.receive(server.send())
        records = RecordStream(1 << 20).feed(self.tls.read())
        assert records is not None, "no whole response"
        return records


def _error_code(records: tuple[Record, ...]) -> int | None:
    found = [r for r in records if r.type == RecordType.ERROR]
    return int.from_bytes(found[0].body, "big") if found else None


# --- the exchange -------------------------------------------------------------------------


def test_exchange_gives_keys_the_server_sealed_into_its_cookies(
    context: SSL.Context, trust: TrustStore
) -> None:
    client = KeConnection(HOST, trust)
    server = Server(context)
    result = roundtrip(client, server)
    assert server.states == [
        KeServerState.HELLO,
        KeServerState.HANDSHAKE,
        KeServerState.REQUEST,
        KeServerState.CLOSED,
    ]
    assert server.connection.outcome is KeOutcome.RESPONSE
    assert server.connection.error is None
    assert server.responder.counters.ok == 1
    assert len(result.response.cookies) == MAX_COOKIES
    for cookie in result.response.cookies:
        assert CODEC.open(cookie) == (result.response.aead, result.c2s, result.s2c)
    assert server.send() == b""  # all of it went out, close_notify included


@pytest.mark.parametrize(
    ("server_aeads", "client_aeads", "chosen"),
    [
        ((AES_128_GCM_SIV, AES_SIV_CMAC_256), (AES_128_GCM_SIV, AES_SIV_CMAC_256), 30),
        ((AES_128_GCM_SIV, AES_SIV_CMAC_256), (AES_SIV_CMAC_256,), 15),
        ((AES_SIV_CMAC_256,), (AES_128_GCM_SIV, AES_SIV_CMAC_256), 15),
        ((AES_128_GCM_SIV,), (AES_128_GCM_SIV,), 30),
    ],
)
def test_aead_negotiation(
    context: SSL.Context,
    trust: TrustStore,
    server_aeads: tuple[int, ...],
    client_aeads: tuple[int, ...],
    chosen: int,
) -> None:
    client = KeConnection(HOST, trust, aeads=client_aeads)
    server = Server(context, KeResponder(lambda _unix_ns: CODEC, aeads=server_aeads))
    result = roundtrip(client, server)
    assert result.response.aead == chosen
    assert CODEC.open(result.response.cookies[0]) == (chosen, result.c2s, result.s2c)


def test_no_aead_in_common_is_a_negotiation_error(context: SSL.Context, trust: TrustStore) -> None:
    client = KeConnection(HOST, trust, aeads=(AES_SIV_CMAC_256,))
    server = Server(context, KeResponder(lambda _unix_ns: CODEC, aeads=(AES_128_GCM_SIV,)))
    with pytest.raises(NegotiationError):
        roundtrip(client, server)
    assert server.connection.outcome is KeOutcome.RESPONSE
    assert server.responder.counters.no_common_aead == 1


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (  # no Next Protocol record
            encode_records(
                [
                    Record(RecordType.AEAD_ALGORITHM, b"\x00\x0f", True),
                    Record(RecordType.END_OF_MESSAGE, critical=True),
                ]
            ),
            ErrorCode.BAD_REQUEST,
        ),
        (  # an unknown critical record
            build_request((AES_SIV_CMAC_256,))[:-4]
            + Record(0x3FFF, b"x", True).encode()
            + Record(RecordType.END_OF_MESSAGE, critical=True).encode(),
            ErrorCode.UNRECOGNIZED_CRITICAL_RECORD,
        ),
        (  # records after End of Message
            build_request((AES_SIV_CMAC_256,)) + build_request((AES_SIV_CMAC_256,)),
            ErrorCode.BAD_REQUEST,
        ),
    ],
    ids=["no-next-protocol", "unknown-critical", "after-end-of-message"],
)
def test_bad_requests_get_error_records_the_client_reports(
    context: SSL.Context, trust: TrustStore, request_bytes: bytes, code: int
) -> None:
    client = KeConnection(HOST, trust, aeads=(AES_SIV_CMAC_256,))
    client._exchange._request = request_bytes  # what this client sends once TLS is up
    server = Server(context)
    with pytest.raises(KeServerError) as caught:
        roundtrip(client, server)
    assert caught.value.code == code
    assert server.connection.outcome is KeOutcome.RESPONSE
    assert server.responder.counters.error == 1


def test_request_in_one_byte_chunks(context: SSL.Context, trust: TrustStore) -> None:
    client = KeConnection(HOST, trust)
    server = Server(context)
    result = roundtrip(client, server, chunk=1)
    assert len(result.response.cookies) == MAX_COOKIES


def test_request_in_one_byte_tls_records(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    for byte in build_request((AES_SIV_CMAC_256,)):
        assert server.connection.state is KeServerState.REQUEST
        client.tls.write(bytes([byte]))
        server.receive(client.tls.outgoing())
    assert server.connection.outcome is KeOutcome.RESPONSE
    assert _error_code(client.response(server)) is None


def test_clienthello_counts_only_once_whole(context: SSL.Context) -> None:
    """HELLO lasts until the last byte of the ClientHello: what the flood defence and
    the metrics call 'no complete ClientHello'."""
    client, server = RawClient(), Server(context)
    client.tls.handshake()
    hello = client.tls.outgoing()
    server.receive(hello[:-1], chunk=1)
    assert server.connection.state is KeServerState.HELLO
    assert server.send() == b""
    server.receive(hello[-1:])
    assert server.connection.state is KeServerState.HANDSHAKE
    assert server.send()  # the server's flight


# --- ALPN -----------------------------------------------------------------------------------


def test_client_without_alpn_is_dropped_after_the_handshake(context: SSL.Context) -> None:
    client, server = RawClient(alpn=[]), Server(context)
    client.handshake(server)
    assert server.connection.state is KeServerState.CLOSED
    assert server.connection.outcome is KeOutcome.TLS_FAILURE
    assert isinstance(server.connection.error, KeProtocolError)
    assert server.responder.counters.ok == server.responder.counters.error == 0


def test_client_with_another_alpn_gets_an_alert(context: SSL.Context) -> None:
    client, server = RawClient(alpn=[b"http/1.1"]), Server(context)
    client.tls.handshake()
    server.receive(client.tls.outgoing())
    assert server.connection.outcome is KeOutcome.TLS_FAILURE
    assert isinstance(server.connection.error, TlsError)
    client.tls.receive(server.send())
    with pytest.raises(TlsError, match="no application protocol"):
        client.tls.handshake()


# --- close_notify ---------------------------------------------------------------------------


def test_request_then_close_notify_at_once_gets_the_whole_response(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    client.tls.write(build_request((AES_SIV_CMAC_256,)))
    client.tls.close()
    server.receive(client.tls.outgoing())  # request and close_notify in one piece
    assert server.connection.outcome is KeOutcome.RESPONSE
    records = client.response(server)
    assert len([r for r in records if r.type == RecordType.NEW_COOKIE]) == MAX_COOKIES
    assert client.tls.closed  # and the server's close_notify behind it


def test_close_notify_before_a_request_is_no_request(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    client.tls.close()
    server.receive(client.tls.outgoing())
    assert server.connection.outcome is KeOutcome.NO_REQUEST
    client.tls.receive(server.send())
    assert client.tls.read() == b"" and client.tls.closed  # answered with close_notify
    server.check_path()


def test_tcp_close_after_tls_is_no_request(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    server.connection.connection_lost()
    assert server.connection.outcome is KeOutcome.NO_REQUEST


def test_tcp_close_during_the_handshake_is_abandoned(context: SSL.Context) -> None:
    server = Server(context)
    server.connection.connection_lost()
    assert server.connection.outcome is KeOutcome.ABANDONED


def test_close_notify_after_the_response_is_ignored(
    context: SSL.Context, trust: TrustStore
) -> None:
    client = KeConnection(HOST, trust)
    server = Server(context)
    roundtrip(client, server)  # the client's close_notify went to the server at the end
    server.receive(b"anything after that")
    assert server.connection.outcome is KeOutcome.RESPONSE
    assert server.send() == b""


# --- the deadline ---------------------------------------------------------------------------


def test_deadline_during_the_handshake_ends_it_silently(context: SSL.Context) -> None:
    server = Server(context)
    server.connection.handle_timer(DEADLINE - 0.001)
    assert server.connection.state is KeServerState.HELLO
    server.connection.handle_timer(DEADLINE)
    assert server.connection.outcome is KeOutcome.TIMEOUT
    assert server.send() == b""


def test_incomplete_request_at_the_deadline_gets_bad_request(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    client.tls.write(build_request((AES_SIV_CMAC_256,))[:-4])  # no End of Message
    server.receive(client.tls.outgoing())
    assert server.connection.state is KeServerState.REQUEST
    server.connection.handle_timer(DEADLINE + 1)
    assert server.connection.outcome is KeOutcome.TIMEOUT
    records = client.response(server)
    assert _error_code(records) == ErrorCode.BAD_REQUEST
    assert client.tls.closed  # close_notify after it


def test_bytes_after_the_deadline_are_not_processed(context: SSL.Context) -> None:
    client, server = RawClient(), Server(context)
    client.handshake(server)
    client.tls.write(build_request((AES_SIV_CMAC_256,)))
    server.receive(client.tls.outgoing(), now=DEADLINE)
    assert server.connection.outcome is KeOutcome.TIMEOUT
    assert _error_code(client.response(server)) == ErrorCode.BAD_REQUEST
    assert server.responder.counters.ok == 0


# --- any bytes ------------------------------------------------------------------------------


def _pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_garbage_ends_in_a_failure_never_an_exception(
    context: SSL.Context, data: bytes, cuts: list[int]
) -> None:
    server = Server(context)
    for piece in _pieces(data, cuts):
        server.receive(piece)
    server.check_path()
    assert server.connection.state in (KeServerState.HELLO, KeServerState.CLOSED)
    if server.connection.state is KeServerState.CLOSED:
        assert server.connection.outcome is KeOutcome.TLS_FAILURE
    server.send()
