"""The NTS-KE client over real TLS against scripted servers that misbehave."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL

import gnomon
from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import ake_exchange, ke_exchange
from gnomon.proto.nts.ke import Record, RecordStream, RecordType, encode_records, u16_list
from gnomon.server.certificates import load_server_context
from gnomon.tls import TrustStore

Behaviour = Callable[[SSL.Connection], None]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"))


def _read_request(conn: SSL.Connection) -> None:
    stream = RecordStream()
    while stream.feed(conn.recv(4096)) is None:
        pass


def _response(cookies: int = 8, cookie: bytes = b"C" * 64) -> bytes:
    return encode_records(
        [
            Record(RecordType.NEXT_PROTOCOL, u16_list([0]), True),
            Record(RecordType.AEAD_ALGORITHM, u16_list([15]), True),
            *(Record(RecordType.NEW_COOKIE, cookie) for _ in range(cookies)),
            Record(RecordType.END_OF_MESSAGE, critical=True),
        ]
    )


@pytest.fixture
def scripted_server(pki: DemoPki) -> Iterator[Callable[[Behaviour], int]]:
    """Starts a one-connection TLS 1.3 server whose behaviour the test scripts."""
    context, _ = load_server_context(pki.cert_chain, pki.key)
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(behaviour: Behaviour) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        listeners.append(listener)

        def serve() -> None:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            raw.settimeout(None)  # pyOpenSSL needs a blocking socket here
            conn = SSL.Connection(context, raw)
            conn.set_accept_state()
            try:
                conn.do_handshake()
                behaviour(conn)
            except (SSL.Error, OSError):
                pass
            finally:
                raw.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(15)


def test_response_split_into_one_byte_tls_records(
    scripted_server: Callable[[Behaviour], int], pki: DemoPki
) -> None:
    def one_byte_records(conn: SSL.Connection) -> None:
        _read_request(conn)
        for byte in _response():
            conn.sendall(bytes([byte]))  # one TLS record each

    port = scripted_server(one_byte_records)
    result = ke_exchange("localhost", port, trust=TrustStore.from_file(pki.ca_cert), aeads=(15,))
    assert result.response.aead == 15 and len(result.response.cookies) == 8
    assert result.ntp_port == 123 and result.ntp_host == "localhost"
    assert len(result.c2s) == len(result.s2c) == 32 and result.c2s != result.s2c


def test_response_never_finished_times_out(
    scripted_server: Callable[[Behaviour], int], pki: DemoPki
) -> None:
    release = threading.Event()

    def stall(conn: SSL.Connection) -> None:
        _read_request(conn)
        conn.sendall(_response()[:20])  # part of a message, then silence
        release.wait(10)

    port = scripted_server(stall)
    try:
        with pytest.raises(gnomon.QueryTimeoutError, match="NTS-KE"):
            ke_exchange("localhost", port, trust=TrustStore.from_file(pki.ca_cert), timeout=0.5)
    finally:
        release.set()


def test_connection_closed_before_end_of_message(
    scripted_server: Callable[[Behaviour], int], pki: DemoPki
) -> None:
    def close_early(conn: SSL.Connection) -> None:
        _read_request(conn)
        conn.sendall(_response()[:30])
        conn.shutdown()

    port = scripted_server(close_early)
    with pytest.raises(gnomon.KeProtocolError, match="End of Message"):
        ke_exchange("localhost", port, trust=TrustStore.from_file(pki.ca_cert), aeads=(15,))


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (_response(cookies=9), gnomon.KeProtocolError),
        (_response(cookie=b"x" * 300), gnomon.KeProtocolError),
        (_response() + _response(), gnomon.KeProtocolError),  # records after End of Message
        (
            encode_records(
                [
                    Record(RecordType.NEXT_PROTOCOL, u16_list([0]), True),
                    Record(RecordType.AEAD_ALGORITHM, u16_list([17]), True),  # never offered
                    Record(RecordType.NEW_COOKIE, b"C" * 64),
                    Record(RecordType.END_OF_MESSAGE, critical=True),
                ]
            ),
            gnomon.KeProtocolError,
        ),
        (
            encode_records(
                [
                    Record(RecordType.ERROR, u16_list([1]), True),
                    Record(RecordType.END_OF_MESSAGE, critical=True),
                ]
            ),
            gnomon.KeServerError,
        ),
    ],
    ids=["nine-cookies", "oversized-cookie", "after-eom", "aead-not-offered", "error-record"],
)
def test_hostile_responses_are_refused(
    scripted_server: Callable[[Behaviour], int],
    pki: DemoPki,
    response: bytes,
    error: type[Exception],
) -> None:
    def hostile(conn: SSL.Connection) -> None:
        _read_request(conn)
        conn.sendall(response)

    port = scripted_server(hostile)
    with pytest.raises(error):
        asyncio.run(
            ake_exchange("localhost", port, trust=TrustStore.from_file(pki.ca_cert), aeads=(15,))
        )


def test_server_without_alpn_is_refused(pki: DemoPki, tmp_path: Path) -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate_chain_file(str(pki.cert_chain))
    context.use_privatekey_file(str(pki.key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        raw, _ = listener.accept()
        conn = SSL.Connection(context, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            conn.recv(4096)
        except SSL.Error:
            pass
        raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(gnomon.TlsError, match="ALPN"):
            ke_exchange("localhost", port, trust=TrustStore.from_file(pki.ca_cert), timeout=5)
    finally:
        listener.close()
        thread.join(10)
