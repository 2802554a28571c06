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
    NtpPacket,
    encode_extension_field,
    unix_ns_to_ntp,
)
from .nts import (
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    MIN_UNIQUE_ID_LEN,
    NtsFields,
    encode_authenticator,
    locate_nts_fields,
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


@dataclass
class NtpResponder:
    """Answers NTP client requests, plain or NTS-protected.

    ``respond(data, receive_ns, transmit_ns)`` returns the reply bytes or None
    to drop. A reply is never longer than its request (no amplification).
    """

    codec: CookieCodec
    time_source: TimeSource = field(default_factory=TimeSource)
    require_nts: bool = False
    counters: NtpCounters = field(default_factory=NtpCounters)
    _aeads: dict[tuple[int, bytes], Aead] = field(default_factory=dict, repr=False)

    def respond(self, data: bytes, receive_ns: int, transmit_ns: int) -> bytes | None:
        if len(data) < HEADER_LEN:
            self.counters.malformed += 1
            return None
        first = data[0]
        version = (first >> 3) & 7
        if first & 7 != MODE_CLIENT or not 1 <= version <= 4:
            self.counters.dropped += 1
            return None
        if len(data) == HEADER_LEN:
            if self.require_nts:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1
            return self._header(data, version, receive_ns, transmit_ns)
        try:
            packet = NtpPacket.decode(data)
        except NtpFormatError:
            self.counters.malformed += 1
            return None
        fields = locate_nts_fields(packet.extensions, packet.offsets)
        if fields.cookie is None and fields.authenticator_offset is None:
            if self.require_nts or fields.unique_id is not None:
                self.counters.dropped += 1
                return None
            self.counters.plain += 1  # unknown extensions: answer the header only
            return self._header(data, version, receive_ns, transmit_ns)
        return self._respond_nts(data, version, fields, receive_ns, transmit_ns)

    def _header(
        self,
        request: bytes,
        version: int,
        receive_ns: int,
        transmit_ns: int,
        kiss: bytes | None = None,
    ) -> bytes:
        source = self.time_source
        return HEADER.pack(
            ((LEAP_UNSYNCHRONIZED if kiss else source.leap) << 6) | (version << 3) | MODE_SERVER,
            0 if kiss else source.stratum,
            request[2] if request[2] < 128 else request[2] - 256,
            source.precision,
            source.root_delay,
            source.root_dispersion,
            kiss or source.reference_id,
            0 if kiss else source.reference_ts,
            int.from_bytes(request[40:48]),
            unix_ns_to_ntp(receive_ns),
            unix_ns_to_ntp(transmit_ns),
        )

    def _aead(self, aead_id: int, key: bytes) -> Aead:
        cached = self._aeads.get((aead_id, key))
        if cached is None:
            if len(self._aeads) > 4096:
                self._aeads.clear()
            cached = self._aeads[(aead_id, key)] = Aead(aead_id, key)
        return cached

    def _respond_nts(
        self, data: bytes, version: int, fields: NtsFields, receive_ns: int, transmit_ns: int
    ) -> bytes | None:
        unique_id = fields.unique_id
        if (
            unique_id is None
            or len(unique_id) < MIN_UNIQUE_ID_LEN
            or fields.cookie is None
            or fields.authenticator_offset is None
            or fields.authenticator_body is None
        ):
            self.counters.malformed += 1
            return None
        uid_field = encode_extension_field(EF_UNIQUE_IDENTIFIER, unique_id)
        opened = self.codec.open(fields.cookie)
        if opened is None:
            return self._nak(data, version, uid_field, receive_ns, transmit_ns)
        aead_id, c2s, s2c = opened
        try:
            plaintext = open_authenticator(
                self._aead(aead_id, c2s),
                data,
                fields.authenticator_offset,
                fields.authenticator_body,
            )
            encrypted = parse_encrypted_fields(plaintext)
        except (AuthenticationError, NtpFormatError):
            return self._nak(data, version, uid_field, receive_ns, transmit_ns)
        # RFC 8915 5.7: one cookie, plus one per placeholder no shorter than the
        # cookie; we also insist on equal length so the reply never grows.
        cookie_len = len(fields.cookie)
        placeholders = sum(1 for n in fields.placeholder_lengths if n == cookie_len)
        placeholders += sum(
            1
            for ef in encrypted
            if ef.type == EF_NTS_COOKIE_PLACEHOLDER and len(ef.body) == cookie_len
        )
        count = min(1 + placeholders, MAX_COOKIES)
        seal = self.codec.seal
        cookies = b"".join(
            encode_extension_field(EF_NTS_COOKIE, seal(aead_id, c2s, s2c)) for _ in range(count)
        )
        head = self._header(data, version, receive_ns, transmit_ns) + uid_field
        s2c_aead = self._aead(aead_id, s2c)
        nonce = os.urandom(s2c_aead.algorithm.nonce_length)
        reply = head + encode_authenticator(s2c_aead, nonce, head, cookies)
        while len(reply) > len(data) and count > 0:
            count -= 1
            cookies = cookies[: len(cookies) * count // (count + 1)]
            reply = head + encode_authenticator(s2c_aead, nonce, head, cookies)
        if len(reply) > len(data):
            self.counters.dropped += 1
            return None
        self.counters.nts += 1
        return reply

    def _nak(
        self, data: bytes, version: int, uid_field: bytes, receive_ns: int, transmit_ns: int
    ) -> bytes:
        """RFC 8915 5.7: kiss code NTSN, the unique id echoed, no authenticator."""
        self.counters.nak += 1
        return self._header(data, version, receive_ns, transmit_ns, kiss=NTSN) + uid_field


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
