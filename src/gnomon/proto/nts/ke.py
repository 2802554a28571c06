"""NTS-KE records and messages (RFC 8915 section 4).

A message is a sequence of records ended by a critical End of Message
record. :class:`RecordStream` frames records from a byte stream under size
limits; :func:`parse_response` and :func:`parse_request` apply the RFC's
rules to a complete message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum

from ..._frozen import Frozen
from ...errors import KeProtocolError, KeServerError, NegotiationError
from .aead import ALGORITHMS, NEXT_PROTOCOL_NTPV4
from .limits import MAX_COOKIE_LEN as MAX_COOKIE_LEN
from .limits import MAX_COOKIES as MAX_COOKIES
from .limits import MIN_COOKIE_LEN as MIN_COOKIE_LEN

CRITICAL = 0x8000
_RECORD_HEADER = struct.Struct("!HH")
_U16 = struct.Struct("!H")

MAX_MESSAGE_LEN = 16384  # chrony's limit; a response with 8 cookies needs ~1 KiB
MAX_SERVER_NAME_LEN = 255


class RecordType(IntEnum):
    END_OF_MESSAGE = 0
    NEXT_PROTOCOL = 1
    ERROR = 2
    WARNING = 3
    AEAD_ALGORITHM = 4
    NEW_COOKIE = 5
    NTPV4_SERVER = 6
    NTPV4_PORT = 7
    COMPLIANT_AES_128_GCM_SIV_EXPORTER = 1024


class ErrorCode(IntEnum):
    UNRECOGNIZED_CRITICAL_RECORD = 0
    BAD_REQUEST = 1
    INTERNAL_SERVER_ERROR = 2


KNOWN_TYPES = frozenset(int(t) for t in RecordType)


class Record(Frozen):
    __slots__ = __match_args__ = ("type", "body", "critical")
    type: int
    body: bytes
    critical: bool

    def __init__(self, type: int, body: bytes = b"", critical: bool = False) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "critical", critical)

    def encode(self) -> bytes:
        if len(self.body) > 0xFFFF:
            raise ValueError("NTS-KE record body longer than 65535 bytes")
        return (
            _RECORD_HEADER.pack(self.type | (CRITICAL if self.critical else 0), len(self.body))
            + self.body
        )


def encode_records(records: Iterable[Record]) -> bytes:
    return b"".join(r.encode() for r in records)


def u16_list(values: Iterable[int]) -> bytes:
    return b"".join(_U16.pack(v) for v in values)


def _parse_u16_list(body: bytes, what: str) -> tuple[int, ...]:
    if len(body) % 2:
        raise KeProtocolError(f"{what} record has an odd length ({len(body)})")
    return tuple(v for (v,) in _U16.iter_unpack(body))


class RecordStream:
    """Frames NTS-KE records out of a byte stream, bounded by ``max_length``.

    :meth:`feed` returns ``None`` until the End of Message record has arrived,
    then the whole message's records (End of Message excluded). A message that
    grows past the limit, or bytes after End of Message, raise KeProtocolError.
    """

    def __init__(self, max_length: int = MAX_MESSAGE_LEN) -> None:
        self._buffer = bytearray()
        self._records: list[Record] = []
        self._max_length = max_length
        self._done = False
        self._received = 0

    @property
    def complete(self) -> bool:
        return self._done

    def feed(self, data: bytes) -> tuple[Record, ...] | None:
        if self._done:
            if data:
                raise KeProtocolError("data after End of Message")
            return tuple(self._records)
        self._buffer += data
        self._received += len(data)
        if self._received > self._max_length:
            raise KeProtocolError(f"NTS-KE message longer than {self._max_length} bytes")
        buffer = self._buffer
        position = 0
        while len(buffer) - position >= 4:
            raw_type, length = _RECORD_HEADER.unpack_from(buffer, position)
            if len(buffer) - position - 4 < length:
                break
            body = bytes(buffer[position + 4 : position + 4 + length])
            position += 4 + length
            record_type = raw_type & ~CRITICAL
            if record_type == RecordType.END_OF_MESSAGE:
                if body:
                    raise KeProtocolError("End of Message record with a body")
                if position != len(buffer):
                    raise KeProtocolError("records after End of Message")
                self._done = True
                del buffer[:]
                return tuple(self._records)
            self._records.append(Record(record_type, body, bool(raw_type & CRITICAL)))
        del buffer[:position]
        return None


def parse_message(data: bytes, max_length: int = MAX_MESSAGE_LEN) -> tuple[Record, ...]:
    """All records of one complete message (End of Message excluded)."""
    records = RecordStream(max_length).feed(data)
    if records is None:
        raise KeProtocolError("NTS-KE message ends without End of Message")
    return records


# --- client side -----------------------------------------------------------


def build_request(
    aeads: Sequence[int],
    *,
    server: str | None = None,
    port: int | None = None,
) -> bytes:
    """The client's NTS-KE request: NTPv4, the AEADs in preference order.

    Record 1024 is sent whenever AES-128-GCM-SIV is offered, so a server that
    knows it derives keys with the compliant exporter context.
    """
    if not aeads:
        raise ValueError("offer at least one AEAD algorithm")
    for aead_id in aeads:
        if aead_id not in ALGORITHMS:
            raise ValueError(f"unsupported AEAD algorithm {aead_id}")
    records = [
        Record(RecordType.NEXT_PROTOCOL, u16_list([NEXT_PROTOCOL_NTPV4]), critical=True),
        Record(RecordType.AEAD_ALGORITHM, u16_list(aeads), critical=True),
    ]
    if 30 in aeads:
        records.append(Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER))
    if server is not None:
        records.append(Record(RecordType.NTPV4_SERVER, server.encode("ascii")))
    if port is not None:
        records.append(Record(RecordType.NTPV4_PORT, _U16.pack(port)))
    records.append(Record(RecordType.END_OF_MESSAGE, critical=True))
    return encode_records(records)


class KeResponse(Frozen):
    """What a server's NTS-KE response negotiated."""

    __slots__ = __match_args__ = (
        "aead",
        "cookies",
        "server",
        "port",
        "compliant_gcm_siv",
        "warnings",
    )
    aead: int
    cookies: tuple[bytes, ...]
    server: str | None
    port: int | None
    compliant_gcm_siv: bool  # the server echoed record 1024
    warnings: tuple[int, ...]

    def __init__(
        self,
        aead: int,
        cookies: tuple[bytes, ...],
        server: str | None = None,
        port: int | None = None,
        compliant_gcm_siv: bool = False,
        warnings: tuple[int, ...] = (),
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "aead", aead)
        set_field(self, "cookies", cookies)
        set_field(self, "server", server)
        set_field(self, "port", port)
        set_field(self, "compliant_gcm_siv", compliant_gcm_siv)
        set_field(self, "warnings", warnings)


def parse_server_name(body: bytes) -> str:
    if not body or len(body) > MAX_SERVER_NAME_LEN:
        raise KeProtocolError(f"NTPv4 Server record of {len(body)} bytes")
    try:
        name = body.decode("ascii")
    except UnicodeDecodeError:
        raise KeProtocolError("NTPv4 Server record is not ASCII") from None
    if not name.isprintable() or " " in name:
        raise KeProtocolError("NTPv4 Server record holds an invalid name")
    import ipaddress  # here: a query from cached cookies does not import it

    try:
        ipaddress.ip_address(name)
    except ValueError:
        labels = name.rstrip(".").split(".")
        if not all(0 < len(label) <= 63 for label in labels):
            raise KeProtocolError(f"NTPv4 Server record holds an invalid name {name!r}") from None
    return name


def _parse_port(body: bytes) -> int:
    if len(body) != 2:
        raise KeProtocolError(f"NTPv4 Port record of {len(body)} bytes")
    return int(_U16.unpack(body)[0])


def parse_response(records: Sequence[Record], offered_aeads: Sequence[int]) -> KeResponse:
    """Check a server's records against the rules of RFC 8915 section 4.

    Raises KeServerError for an Error record, NegotiationError when nothing
    was agreed, and KeProtocolError for every other breach (an AEAD the client
    never offered, a bad or missing cookie, duplicate records...).
    """
    for record in records:
        if record.type == RecordType.ERROR:
            if len(record.body) != 2:
                raise KeProtocolError("Error record with a body other than 2 bytes")
            raise KeServerError(int(_U16.unpack(record.body)[0]))
    protocols: tuple[int, ...] | None = None
    aead: int | None = None
    cookies: list[bytes] = []
    server: str | None = None
    port: int | None = None
    compliant = False
    warnings: list[int] = []
    seen: set[int] = set()
    for record in records:
        kind = record.type
        if (
            kind in seen
            and kind in KNOWN_TYPES
            and kind not in (RecordType.NEW_COOKIE, RecordType.WARNING)
        ):
            raise KeProtocolError(f"duplicate NTS-KE record of type {kind}")
        seen.add(kind)
        if kind == RecordType.NEXT_PROTOCOL:
            protocols = _parse_u16_list(record.body, "Next Protocol")
        elif kind == RecordType.AEAD_ALGORITHM:
            chosen = _parse_u16_list(record.body, "AEAD Algorithm")
            if not chosen:
                raise NegotiationError("server supports none of the offered AEAD algorithms")
            if len(chosen) != 1:
                raise KeProtocolError(f"server chose {len(chosen)} AEAD algorithms, not one")
            aead = chosen[0]
        elif kind == RecordType.NEW_COOKIE:
            if not MIN_COOKIE_LEN <= len(record.body) <= MAX_COOKIE_LEN:
                raise KeProtocolError(f"cookie of {len(record.body)} bytes")
            cookies.append(record.body)
            if len(cookies) > MAX_COOKIES:
                raise KeProtocolError(f"server sent more than {MAX_COOKIES} cookies")
        elif kind == RecordType.NTPV4_SERVER:
            server = parse_server_name(record.body)
        elif kind == RecordType.NTPV4_PORT:
            port = _parse_port(record.body)
        elif kind == RecordType.WARNING:
            if len(record.body) != 2:
                raise KeProtocolError("Warning record with a body other than 2 bytes")
            warnings.append(int(_U16.unpack(record.body)[0]))
        elif kind == RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER:
            compliant = True
        elif record.critical:
            raise KeProtocolError(f"unrecognized critical NTS-KE record of type {kind}")
    if protocols is None:
        raise KeProtocolError("response has no Next Protocol record")
    if protocols != (NEXT_PROTOCOL_NTPV4,):
        if not protocols:
            raise NegotiationError("server supports none of the offered protocols")
        raise KeProtocolError(f"server chose protocols {list(protocols)}, not NTPv4")
    if aead is None:
        raise NegotiationError("server supports none of the offered AEAD algorithms")
    if aead not in offered_aeads:
        raise KeProtocolError(f"server chose AEAD {aead}, which the client did not offer")
    if not cookies:
        raise KeProtocolError("response holds no cookie")
    return KeResponse(aead, tuple(cookies), server, port, compliant, tuple(warnings))


# --- server side -----------------------------------------------------------


class KeRequest(Frozen):
    """What a client's NTS-KE request asked for."""

    __slots__ = __match_args__ = ("protocols", "aeads", "server", "port", "compliant_gcm_siv")
    protocols: tuple[int, ...]
    aeads: tuple[int, ...]
    server: str | None
    port: int | None
    compliant_gcm_siv: bool

    def __init__(
        self,
        protocols: tuple[int, ...],
        aeads: tuple[int, ...],
        server: str | None = None,
        port: int | None = None,
        compliant_gcm_siv: bool = False,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "protocols", protocols)
        set_field(self, "aeads", aeads)
        set_field(self, "server", server)
        set_field(self, "port", port)
        set_field(self, "compliant_gcm_siv", compliant_gcm_siv)


class KeRequestError(Exception):
    """A client request the server answers with an Error record of ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        self.code = code
        super().__init__(reason)


def parse_request(records: Sequence[Record]) -> KeRequest:
    """Check a client's records (RFC 8915 section 4.1); raises KeRequestError."""
    protocols: tuple[int, ...] | None = None
    aeads: tuple[int, ...] | None = None
    server: str | None = None
    port: int | None = None
    compliant = False
    seen: set[int] = set()
    try:
        for record in records:
            kind = record.type
            if kind in seen and kind in KNOWN_TYPES and kind != RecordType.WARNING:
                raise KeRequestError(ErrorCode.BAD_REQUEST, f"duplicate record of type {kind}")
            seen.add(kind)
            if kind == RecordType.NEXT_PROTOCOL:
                protocols = _parse_u16_list(record.body, "Next Protocol")
            elif kind == RecordType.AEAD_ALGORITHM:
                aeads = _parse_u16_list(record.body, "AEAD Algorithm")
            elif kind == RecordType.NTPV4_SERVER:
                server = parse_server_name(record.body)
            elif kind == RecordType.NTPV4_PORT:
                port = _parse_port(record.body)
            elif kind == RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER:
                compliant = True
            elif kind in (RecordType.ERROR, RecordType.WARNING, RecordType.NEW_COOKIE):
                raise KeRequestError(ErrorCode.BAD_REQUEST, f"client sent a record of type {kind}")
            elif record.critical:
                raise KeRequestError(
                    ErrorCode.UNRECOGNIZED_CRITICAL_RECORD, f"unrecognized critical record {kind}"
                )
    except KeProtocolError as exc:
        raise KeRequestError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if protocols is None or not protocols:
        raise KeRequestError(ErrorCode.BAD_REQUEST, "request has no Next Protocol record")
    if aeads is None:
        raise KeRequestError(ErrorCode.BAD_REQUEST, "request has no AEAD Algorithm record")
    return KeRequest(protocols, aeads, server, port, compliant)
