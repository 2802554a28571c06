"""A minimal, independent NTS-KE client (pyOpenSSL, blocking) to ask a peer what it speaks.

Deliberately separate from gnomon's own code: it is the measuring stick used to
characterise the reference peers (which AEADs a server accepts, whether it knows record
1024), not something under test.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from OpenSSL import SSL

END_OF_MESSAGE = 0
NEXT_PROTOCOL = 1
ERROR = 2
WARNING = 3
AEAD = 4
NEW_COOKIE = 5
SERVER = 6
PORT = 7
COMPLIANT_GCM_SIV_EXPORTER = 1024
CRITICAL = 0x8000

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    critical: bool
    type: int
    body: bytes

    def u16s(self) -> list[int]:
        return [v for (v,) in struct.iter_unpack(">H", self.body[: len(self.body) // 2 * 2])]


def record(rtype: int, body: bytes = b"", *, critical: bool = True) -> bytes:
    return struct.pack(">HH", (CRITICAL if critical else 0) | rtype, len(body)) + body


def request(aeads: Iterable[int], extra: bytes = b"") -> bytes:
    """Next protocol NTPv4, AEAD offer `aeads`, `extra` records, End of Message."""
    body = b"".join(struct.pack(">H", a) for a in aeads)
    return record(NEXT_PROTOCOL, b"\0\0") + record(AEAD, body) + extra + record(END_OF_MESSAGE)


def parse_records(data: bytes) -> list[Record]:
    out = []
    i = 0
    while i + 4 <= len(data):
        head, length = struct.unpack_from(">HH", data, i)
        out.append(Record(bool(head & CRITICAL), head & 0x7FFF, data[i + 4 : i + 4 + length]))
        i += 4 + length
    return out


@dataclass(frozen=True)
class KeResult:
    records: list[Record]
    tls_version: str
    alpn: bytes | None

    def of_type(self, rtype: int) -> list[Record]:
        return [r for r in self.records if r.type == rtype]

    @property
    def aead(self) -> list[int]:
        """AEAD ids the server chose (empty list: the record was empty or absent)."""
        recs = self.of_type(AEAD)
        return recs[0].u16s() if recs else []

    @property
    def cookies(self) -> list[bytes]:
        return [r.body for r in self.of_type(NEW_COOKIE)]

    @property
    def errors(self) -> list[int]:
        return [v for r in self.of_type(ERROR) for v in r.u16s()]

    @property
    def port(self) -> int | None:
        recs = self.of_type(PORT)
        return recs[0].u16s()[0] if recs else None


def ke_exchange(
    host: str,
    port: int,
    ca: Path,
    *,
    aeads: Sequence[int] = (15,),
    extra: bytes = b"",
    server_name: str = "localhost",
    timeout: float = 5.0,
) -> KeResult:
    """One NTS-KE exchange; returns the server's records (empty if it just closed).

    The certificate chain is checked against `ca`; the name only goes out as SNI.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _e, _d, ok: bool(ok))
    ctx.set_alpn_protos([b"ntske/1"])
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setblocking(False)
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()

        def wait(readable: bool) -> None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"NTS-KE with {host}:{port} timed out")
            rlist, wlist = ([sock], []) if readable else ([], [sock])
            r, w, _ = select.select(rlist, wlist, [], left)
            if not r and not w:
                raise TimeoutError(f"NTS-KE with {host}:{port} timed out")

        def io(op: Callable[[], T]) -> T:
            while True:
                try:
                    return op()
                except SSL.WantReadError:
                    wait(True)
                except SSL.WantWriteError:
                    wait(False)

        io(conn.do_handshake)
        tls_version = conn.get_protocol_version_name()
        alpn = conn.get_alpn_proto_negotiated() or None
        io(lambda: conn.sendall(request(aeads, extra)))
        data = b""
        while True:
            try:
                chunk = io(lambda: conn.recv(65536))
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            data += chunk
            recs = parse_records(data)
            if recs and recs[-1].type == END_OF_MESSAGE:
                break
    return KeResult(parse_records(data), tls_version, alpn)


class RecordingKeServer:
    """A one-shot NTS-KE server on loopback that records what a client sends.

    It completes the TLS 1.3 handshake (ALPN ntske/1) with the given certificate,
    reads the client's request up to End of Message, records it, answers `reply`
    (default: nothing, just close) and stops.  Used to see what a peer's client offers.

        with RecordingKeServer(pki.cert_chain, pki.key) as rec:
            ...point a client at 127.0.0.1:rec.port...
            request = rec.wait(timeout=10)
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reply: bytes = b"",
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.ctx = SSL.Context(SSL.TLS_METHOD)
        self.ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        self.ctx.use_certificate(x509.load_pem_x509_certificate(cert.read_bytes()))
        private_key = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        self.ctx.use_privatekey(private_key)
        self.alpn_offered: list[bytes] = []

        def select_alpn(_conn: SSL.Connection, offered: list[bytes]) -> bytes:
            self.alpn_offered = list(offered)
            return b"ntske/1"

        self.ctx.set_alpn_select_callback(select_alpn)
        self.reply = reply
        self.listener = socket.create_server((host, port))
        self.port: int = self.listener.getsockname()[1]
        self.records: list[Record] | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> RecordingKeServer:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.listener.close()
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self) -> None:
        try:
            self.listener.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    sock, _ = self.listener.accept()
                except TimeoutError:
                    continue
                with sock:
                    # Blocking for pyOpenSSL, but bounded: a read stalls at most 5 s.
                    sock.settimeout(None)
                    timeval = struct.pack("ll", 5, 0)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
                    conn = SSL.Connection(self.ctx, sock)
                    conn.set_accept_state()
                    conn.do_handshake()
                    data = b""
                    while True:
                        data += conn.recv(65536)
                        recs = parse_records(data)
                        if recs and recs[-1].type == END_OF_MESSAGE:
                            break
                    self.records = recs
                    if self.reply:
                        conn.sendall(self.reply)
                    conn.shutdown()
                return
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self, timeout: float) -> list[Record]:
        """The client's request records; AssertionError if none came within `timeout`."""
        deadline = time.monotonic() + timeout
        while self.records is None and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.records is None:
            raise AssertionError(f"no NTS-KE request recorded within {timeout:g} s: {self.error!r}")
        return self.records
