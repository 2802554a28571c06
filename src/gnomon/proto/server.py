"""The server's protocol logic without I/O: KE requests and NTP requests in,
responses out.

:class:`NtpResponder` answers one datagram at a time; :class:`KeResponder`
turns a complete NTS-KE request into the response bytes. Both take the
current cookie keys from a :class:`~.cookie.CookieCodec` the caller may swap
at any time (key rotation), and the time-source state as a
:class:`TimeSource` value.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..errors import AuthenticationError, NtpFormatError
from .aead import AES_128_GCM_SIV, Aead, Exporter, derive_keys
from .cookie import NONCE_LEN as COOKIE_NONCE_LEN
from .cookie import CookieCodec
from .ke import (
    MAX_COOKIES,
    ErrorCode,
    KeRequest,
    KeRequestError,
    Record,
    RecordType,
    encode_records,
    parse_request,
    u16_list,
)
from .ntp import (
    HEADER,
    HEADER_LEN,
    LEAP_UNSYNCHRONIZED,
    MODE_CLIENT,
    MODE_SERVER,
)
from .nts import (
    EF_NTS_AUTHENTICATOR,
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    MIN_UNIQUE_ID_LEN,
    encode_authenticator,
    open_authenticator,
    parse_encrypted_fields,
)

NTSN = b"NTSN"


@dataclass(frozen=True, slots=True)
class TimeSource:
    """What the server says about its own clock in every response.

    The default is honest ignorance: leap 3 (unsynchronised), stratum 16.
    """

    leap: int = LEAP_UNSYNCHRONIZED
    stratum: int = 16
    precision: int = -20
    root_delay: int = 0  # NTP short format
    root_dispersion: int = 0
    reference_id: bytes = b"\x00\x00\x00\x00"
    reference_ts: int = 0  # NTP timestamp


@dataclass
class NtpCounters:
    plain: int = 0
    nts: int = 0
    nak: int = 0
    malformed: int = 0
    dropped: int = 0  # well-formed but not answered (wrong mode, NTS required...)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


_EF_HEAD = struct.Struct("!HH")
_TWO_TS = struct.Struct("!QQ")
_AUTH_HEAD = struct.Struct("!HHHH")  # field type, field length, nonce length, ciphertext length
_NS = 1_000_000_000
_NTP_OFFSET = 2_208_988_800


def _ntp_time(unix_ns: int) -> int:
    seconds, ns = divmod(unix_ns, _NS)
    return (((seconds + _NTP_OFFSET) & 0xFFFFFFFF) << 32) | ((ns << 32) // _NS)


class _KeyCache:
    """AEAD objects by key: building one costs more than using it, and a
    client sends many requests under the same keys."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = 8192) -> None:
        self._entries: dict[bytes, Aead] = {}
        self._limit = limit

    def get(self, aead_id: int, key: bytes) -> Aead:
        entry = self._entries.get(key)
        if entry is None or entry.algorithm.id != aead_id:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            entry = self._entries[key] = Aead(aead_id, key)
        return entry


class NtpResponder:
    """Answers NTP client requests, plain or NTS-protected.

    ``respond(data, receive_ns, clock)`` returns the reply bytes or None to
    drop. ``clock()`` gives the transmit timestamp (Unix ns); it is read as
    late as possible, after the cookies are sealed and just before the final
    authenticator, so the server's own work is not counted as network delay.
    A reply is never longer than its request (no amplification).
    This is the per-packet path: it scans extension fields in place rather
    than building objects, and keeps AEAD objects per key.
    """

    def __init__(
        self,
        codec: CookieCodec,
        time_source: TimeSource | None = None,
        *,
        require_nts: bool = False,
    ) -> None:
        self.codec = codec
        self.require_nts = require_nts
        self.counters = NtpCounters()
        self._keys = _KeyCache()
        self.time_source = time_source or TimeSource()

    @property
    def time_source(self) -> TimeSource:
        return self._time_source

    @time_source.setter
    def time_source(self, source: TimeSource) -> None:
        self._time_source = source
        # Everything from precision to the reference timestamp, packed once.
        self._static = HEADER.pack(
            0,
            0,
            0,
            source.precision,
            source.root_delay,
            source.root_dispersion,
            source.reference_id,
            source.reference_ts,
            0,
            0,
            0,
        )[3:24]
        self._first = source.leap << 6 | MODE_SERVER
        self._stratum = source.stratum

    def _header(self, request: bytes, receive_ns: int, transmit_ns: int) -> bytes:
        return b"".join(
            (
                bytes((self._first | (request[0] & 0x38), self._stratum, request[2])),
                self._static,
                request[40:48],
                _TWO_TS.pack(_ntp_time(receive_ns), _ntp_time(transmit_ns)),
            )
        )

    def respond(self, data: bytes, receive_ns: int, clock: Callable[[], int]) -> bytes | None:
        length = len(data)
        if length < HEADER_LEN:
            self.counters.malformed += 1
            return None
        first = data[0]
        if first & 7 != MODE_CLIENT or not 0x08 <= first & 0x38 <= 0x20:
            self.counters.dropped += 1  # not a client request of NTP versions 1-4
            return None
        if length == HEADER_LEN:
            if self.require_nts:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1
            return self._header(data, receive_ns, clock())
        # Scan extension fields up to the authenticator (RFC 7822 framing).
        unique_id = cookie = None
        placeholder_lengths: list[int] = []
        auth_at = -1
        position = HEADER_LEN
        unpack = _EF_HEAD.unpack_from
        while position + 4 <= length:
            ef_type, ef_length = unpack(data, position)
            if ef_length < 16 or ef_length & 3 or position + ef_length > length:
                break
            if ef_type == EF_NTS_AUTHENTICATOR:
                auth_at = position
                break
            if ef_type == EF_UNIQUE_IDENTIFIER:
                if unique_id is not None:
                    self.counters.malformed += 1
                    return None
                unique_id = data[position + 4 : position + ef_length]
            elif ef_type == EF_NTS_COOKIE:
                if cookie is not None:
                    self.counters.malformed += 1
                    return None
                cookie = data[position + 4 : position + ef_length]
            elif ef_type == EF_NTS_COOKIE_PLACEHOLDER:
                placeholder_lengths.append(ef_length - 4)
            position += ef_length
        else:
            if position != length:
                self.counters.malformed += 1
                return None
        if auth_at < 0:
            if position != length and length - position not in (20, 24):
                self.counters.malformed += 1  # broken framing, and not a legacy MAC
                return None
            if cookie is not None or unique_id is not None or self.require_nts:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1  # unknown extensions: answer the header only
            return self._header(data, receive_ns, clock())
        if unique_id is None or len(unique_id) < MIN_UNIQUE_ID_LEN or cookie is None:
            self.counters.malformed += 1
            return None
        return self._respond_nts(
            data, auth_at, unique_id, cookie, placeholder_lengths, receive_ns, clock
        )

    def _respond_nts(
        self,
        data: bytes,
        auth_at: int,
        unique_id: bytes,
        cookie: bytes,
        placeholder_lengths: list[int],
        receive_ns: int,
        clock: Callable[[], int],
    ) -> bytes | None:
        uid_field = _EF_HEAD.pack(EF_UNIQUE_IDENTIFIER, 4 + len(unique_id)) + unique_id
        opened = self.codec.open(cookie)
        if opened is None:
            return self._nak(data, uid_field, receive_ns, clock())
        aead_id, c2s, s2c = opened
        auth_length = _EF_HEAD.unpack_from(data, auth_at)[1]
        try:
            plaintext = open_authenticator(
                self._keys.get(aead_id, c2s),
                data,
                auth_at,
                data[auth_at + 4 : auth_at + auth_length],
            )
            encrypted = parse_encrypted_fields(plaintext) if plaintext else ()
        except (AuthenticationError, NtpFormatError):
            return self._nak(data, uid_field, receive_ns, clock())
        # RFC 8915 5.7: one cookie, plus one per placeholder no shorter than the
        # cookie; we also insist on equal length so the reply never grows.
        cookie_length = len(cookie)
        wanted = placeholder_lengths.count(cookie_length) + sum(
            1
            for ef in encrypted
            if ef.type == EF_NTS_COOKIE_PLACEHOLDER and len(ef.body) == cookie_length
        )
        count = min(1 + wanted, MAX_COOKIES)
        cookie_head = _EF_HEAD.pack(EF_NTS_COOKIE, 4 + cookie_length)
        s2c_aead = self._keys.get(aead_id, s2c)
        nonce_length = s2c_aead.algorithm.nonce_length
        randomness = os.urandom(nonce_length + COOKIE_NONCE_LEN * count)
        sealed = self.codec.seal_many(aead_id, c2s, s2c, randomness[nonce_length:])
        head = self._header(data, receive_ns, clock()) + uid_field
        while True:
            cookies = b"".join([cookie_head + c for c in sealed[:count]])
            reply = head + encode_authenticator(s2c_aead, randomness[:nonce_length], head, cookies)
            if len(reply) <= len(data):
                self.counters.nts += 1
                return reply
            if count == 0:
                self.counters.dropped += 1
                return None
            count -= 1

    def _nak(self, data: bytes, uid_field: bytes, receive_ns: int, transmit_ns: int) -> bytes:
        """RFC 8915 5.7: kiss code NTSN, the unique id echoed, no authenticator."""
        self.counters.nak += 1
        header = HEADER.pack(
            LEAP_UNSYNCHRONIZED << 6 | (data[0] & 0x38) | MODE_SERVER,
            0,
            data[2] if data[2] < 128 else data[2] - 256,
            self._time_source.precision,
            0,
            0,
            NTSN,
            0,
            int.from_bytes(data[40:48]),
            _ntp_time(receive_ns),
            _ntp_time(transmit_ns),
        )
        return header + uid_field


_U16 = struct.Struct("!H")


@dataclass
class KeCounters:
    ok: int = 0
    error: int = 0
    no_common_aead: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class KeResponder:
    """Builds NTS-KE responses (RFC 8915 section 4).

    The AEAD is the first of ``aeads`` (server preference) that the client
    offered; for AES-128-GCM-SIV the keys come from the compliant exporter
    context when the client sent record 1024, else from chrony's original one.
    """

    codec_provider: Callable[[], CookieCodec]
    aeads: Sequence[int] = (AES_128_GCM_SIV, 15)
    ntp_server: str | None = None
    ntp_port: int | None = None
    counters: KeCounters = field(default_factory=KeCounters)

    def respond(self, records: Sequence[Record], exporter: Exporter) -> bytes:
        try:
            request = parse_request(records)
        except KeRequestError as exc:
            return self.error(exc.code)
        return self._negotiate(request, exporter)

    def error(self, code: ErrorCode) -> bytes:
        self.counters.error += 1
        return encode_records(
            [
                Record(RecordType.ERROR, _U16.pack(code), critical=True),
                Record(RecordType.END_OF_MESSAGE, critical=True),
            ]
        )

    def _negotiate(self, request: KeRequest, exporter: Exporter) -> bytes:
        records: list[Record] = []
        protocol_ok = 0 in request.protocols
        records.append(Record(RecordType.NEXT_PROTOCOL, u16_list([0] if protocol_ok else []), True))
        chosen = next((a for a in self.aeads if a in request.aeads), None)
        if not protocol_ok or chosen is None:
            self.counters.no_common_aead += 1
            records.append(Record(RecordType.AEAD_ALGORITHM, b"", True))
            records.append(Record(RecordType.END_OF_MESSAGE, critical=True))
            return encode_records(records)
        records.append(Record(RecordType.AEAD_ALGORITHM, u16_list([chosen]), True))
        compliant = chosen != AES_128_GCM_SIV or request.compliant_gcm_siv
        if chosen == AES_128_GCM_SIV and request.compliant_gcm_siv:
            records.append(Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER))
        c2s, s2c = derive_keys(exporter, chosen, compliant=compliant)
        codec = self.codec_provider()
        records.extend(
            Record(RecordType.NEW_COOKIE, codec.seal(chosen, c2s, s2c)) for _ in range(MAX_COOKIES)
        )
        if self.ntp_server is not None:
            records.append(Record(RecordType.NTPV4_SERVER, self.ntp_server.encode("ascii")))
        if self.ntp_port is not None:
            records.append(Record(RecordType.NTPV4_PORT, _U16.pack(self.ntp_port)))
        records.append(Record(RecordType.END_OF_MESSAGE, critical=True))
        self.counters.ok += 1
        return encode_records(records)
