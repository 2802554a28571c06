"""The NTS-KE side of an NTS server without I/O: a complete request in, the response out.

:class:`KeResponder` turns the records of an NTS-KE request into the response
bytes (RFC 8915 section 4), sealing cookies with the current
:class:`~.cookie.CookieCodec`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .aead import AES_128_GCM_SIV, Exporter, derive_keys
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

_U16 = struct.Struct("!H")
_RECORD_HEAD = struct.Struct("!HH")  # record type (critical bit clear), body length


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
    offered, with one exception (RFC 8915 5.1 and chrony's history): a client
    that offers AES-128-GCM-SIV without record 1024 may be an older chrony,
    which derives that AEAD's keys from a non-standard exporter context, or a
    client that follows the RFC; so when it also offers another AEAD the server
    runs, that one is chosen (chrony offers AES-SIV-CMAC-256 beside it), and
    when it offers AES-128-GCM-SIV alone, the keys come from the context RFC
    8915 section 5.1 defines. Record 1024 is echoed when the client sent it and
    AES-128-GCM-SIV is chosen.

    ``respond`` takes the time (Unix ns: ``codec_provider(unix_ns)`` gives the
    cookie keys in force then) and :data:`~.cookie.RANDOM_LEN` fresh random
    bytes for the response's cookies: nothing here reads a clock or a random
    source.
    """

    codec_provider: Callable[[int], CookieCodec]
    aeads: Sequence[int] = (AES_128_GCM_SIV, 15)
    ntp_server: str | None = None
    ntp_port: int | None = None
    counters: KeCounters = field(default_factory=KeCounters)

    def respond(
        self, records: Sequence[Record], exporter: Exporter, *, unix_ns: int, randomness: bytes
    ) -> bytes:
        try:
            request = parse_request(records)
        except KeRequestError as exc:
            return self.error(exc.code)
        return self._negotiate(request, exporter, unix_ns, randomness)

    def error(self, code: ErrorCode) -> bytes:
        self.counters.error += 1
        return encode_records(
            [
                Record(RecordType.ERROR, _U16.pack(code), critical=True),
                Record(RecordType.END_OF_MESSAGE, critical=True),
            ]
        )

    def _negotiate(
        self, request: KeRequest, exporter: Exporter, unix_ns: int, randomness: bytes
    ) -> bytes:
        records: list[Record] = []
        protocol_ok = 0 in request.protocols
        records.append(Record(RecordType.NEXT_PROTOCOL, u16_list([0] if protocol_ok else []), True))
        common = [a for a in self.aeads if a in request.aeads]
        chosen = common[0] if common else None
        if chosen == AES_128_GCM_SIV and not request.compliant_gcm_siv and len(common) > 1:
            chosen = common[1]  # no record 1024: which exporter context it uses is unknown
        if not protocol_ok or chosen is None:
            self.counters.no_common_aead += 1
            records.append(Record(RecordType.AEAD_ALGORITHM, b"", True))
            records.append(Record(RecordType.END_OF_MESSAGE, critical=True))
            return encode_records(records)
        records.append(Record(RecordType.AEAD_ALGORITHM, u16_list([chosen]), True))
        if chosen == AES_128_GCM_SIV and request.compliant_gcm_siv:
            records.append(Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER))
        c2s, s2c = derive_keys(exporter, chosen)  # RFC 8915 5.1's context, for every AEAD
        cookies = self.codec_provider(unix_ns).seal_many(chosen, c2s, s2c, MAX_COOKIES, randomness)
        cookie_head = _RECORD_HEAD.pack(RecordType.NEW_COOKIE, len(cookies[0]))  # all one size
        tail: list[Record] = []
        if self.ntp_server is not None:
            tail.append(Record(RecordType.NTPV4_SERVER, self.ntp_server.encode("ascii")))
        if self.ntp_port is not None:
            tail.append(Record(RecordType.NTPV4_PORT, _U16.pack(self.ntp_port)))
        tail.append(Record(RecordType.END_OF_MESSAGE, critical=True))
        self.counters.ok += 1
        return b"".join(
            (encode_records(records), *[cookie_head + c for c in cookies], encode_records(tail))
        )
