"""NTPv4 packets (RFC 5905) and extension fields (RFC 7822).

Timestamps stay in their wire form (64-bit integers) inside packets; the
functions here convert them to and from Unix nanoseconds, resolving the
32-bit era against a pivot time the caller supplies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ..._frozen import Frozen
from ...errors import NtpFormatError
from .scan import EF_HEADER, MIN_EF_LEN, PROBLEMS, scan_fields

HEADER = struct.Struct("!BBbbII4sQQQQ")
HEADER_LEN = HEADER.size  # 48
MAX_PACKET_LEN = 2048  # nothing legitimate comes near this

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_ERA = 1 << 32
_NS = 1_000_000_000

# Modes (RFC 5905 figure 10)
MODE_CLIENT = 3
MODE_SERVER = 4

LEAP_NONE = 0
LEAP_UNSYNCHRONIZED = 3


def unix_ns_to_ntp(unix_ns: int) -> int:
    """Unix time in nanoseconds to a 64-bit NTP timestamp (era dropped)."""
    seconds, ns = divmod(unix_ns, _NS)
    fraction = (ns << 32) // _NS
    return (((seconds + NTP_UNIX_OFFSET) % _ERA) << 32) | fraction


def ntp_to_unix_ns(timestamp: int, pivot_unix_ns: int) -> int:
    """A 64-bit NTP timestamp to Unix nanoseconds, in the era nearest the pivot.

    The 32-bit seconds field wraps every 136 years (first in 2036); choosing
    the era that puts the result within 68 years of a known-good time (for a
    client, its own clock when it sent the request) is RFC 5905's rule.
    """
    seconds = timestamp >> 32
    fraction = timestamp & 0xFFFFFFFF
    pivot = pivot_unix_ns // _NS + NTP_UNIX_OFFSET
    era = (pivot - seconds + (1 << 31)) >> 32
    full_seconds = seconds + era * _ERA - NTP_UNIX_OFFSET
    return full_seconds * _NS + ((fraction * _NS + (1 << 31)) >> 32)


def short_to_seconds(value: int) -> float:
    """An NTP short format value (unsigned 16.16 fixed point) in seconds."""
    return value / 65536.0


def seconds_to_short(seconds: float) -> int:
    return max(0, min(0xFFFFFFFF, round(seconds * 65536.0)))


class NtpHeader(Frozen):
    """The 48-byte NTP header. Timestamps and short values in wire form."""

    __slots__ = __match_args__ = (
        "leap",
        "version",
        "mode",
        "stratum",
        "poll",
        "precision",
        "root_delay",
        "root_dispersion",
        "reference_id",
        "reference_ts",
        "origin_ts",
        "receive_ts",
        "transmit_ts",
    )
    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay: int
    root_dispersion: int
    reference_id: bytes
    reference_ts: int
    origin_ts: int
    receive_ts: int
    transmit_ts: int

    def __init__(
        self,
        leap: int = LEAP_NONE,
        version: int = 4,
        mode: int = MODE_CLIENT,
        stratum: int = 0,
        poll: int = 0,
        precision: int = 0,
        root_delay: int = 0,
        root_dispersion: int = 0,
        reference_id: bytes = b"\x00\x00\x00\x00",
        reference_ts: int = 0,
        origin_ts: int = 0,
        receive_ts: int = 0,
        transmit_ts: int = 0,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "leap", leap)
        set_field(self, "version", version)
        set_field(self, "mode", mode)
        set_field(self, "stratum", stratum)
        set_field(self, "poll", poll)
        set_field(self, "precision", precision)
        set_field(self, "root_delay", root_delay)
        set_field(self, "root_dispersion", root_dispersion)
        set_field(self, "reference_id", reference_id)
        set_field(self, "reference_ts", reference_ts)
        set_field(self, "origin_ts", origin_ts)
        set_field(self, "receive_ts", receive_ts)
        set_field(self, "transmit_ts", transmit_ts)

    def encode(self) -> bytes:
        return HEADER.pack(
            (self.leap << 6) | (self.version << 3) | self.mode,
            self.stratum,
            self.poll,
            self.precision,
            self.root_delay,
            self.root_dispersion,
            self.reference_id,
            self.reference_ts,
            self.origin_ts,
            self.receive_ts,
            self.transmit_ts,
        )

    @classmethod
    def decode(cls, data: bytes) -> NtpHeader:
        if len(data) < HEADER_LEN:
            raise NtpFormatError(f"NTP packet of {len(data)} bytes is shorter than its header")
        (
            lvm,
            stratum,
            poll,
            precision,
            root_delay,
            root_dispersion,
            ref_id,
            reference_ts,
            origin_ts,
            receive_ts,
            transmit_ts,
        ) = HEADER.unpack_from(data)
        return cls(
            leap=lvm >> 6,
            version=(lvm >> 3) & 7,
            mode=lvm & 7,
            stratum=stratum,
            poll=poll,
            precision=precision,
            root_delay=root_delay,
            root_dispersion=root_dispersion,
            reference_id=ref_id,
            reference_ts=reference_ts,
            origin_ts=origin_ts,
            receive_ts=receive_ts,
            transmit_ts=transmit_ts,
        )

    @property
    def kiss_code(self) -> str | None:
        """The kiss-o'-death code of a stratum-0 server packet, else None."""
        if self.stratum != 0 or self.mode != MODE_SERVER:
            return None
        return self.reference_id.rstrip(b"\x00").decode("ascii", "replace")


class ExtensionField(Frozen):
    """One extension field. ``body`` is everything after the 4-byte header,
    padding included when parsed; :meth:`encode` pads it as RFC 7822 asks."""

    __slots__ = __match_args__ = ("type", "body")
    type: int
    body: bytes

    def __init__(self, type: int, body: bytes) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "body", body)

    def encode(self, min_length: int = MIN_EF_LEN) -> bytes:
        length = max(min_length, 4 + len(self.body))
        length = (length + 3) & ~3
        return EF_HEADER.pack(self.type, length) + self.body + bytes(length - 4 - len(self.body))


def encode_extension_field(ef_type: int, body: bytes) -> bytes:
    return ExtensionField(ef_type, body).encode()


class NtpPacket(Frozen):
    """A whole NTP packet: header, extension fields, and a legacy MAC if any.

    ``offsets[i]`` is where extension field ``i`` starts in the packet (the
    NTS authenticator covers the bytes before it); packets compare without them.
    """

    __slots__ = __match_args__ = ("header", "extensions", "mac", "offsets")
    _compared = ("header", "extensions", "mac")
    header: NtpHeader
    extensions: tuple[ExtensionField, ...]
    mac: bytes | None
    offsets: tuple[int, ...]

    def __init__(
        self,
        header: NtpHeader,
        extensions: tuple[ExtensionField, ...] = (),
        mac: bytes | None = None,
        offsets: tuple[int, ...] = (),
    ) -> None:
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "extensions", extensions)
        object.__setattr__(self, "mac", mac)
        object.__setattr__(self, "offsets", offsets)

    def encode(self) -> bytes:
        return build_packet(self.header, (ef.encode() for ef in self.extensions), self.mac)

    @classmethod
    def decode(cls, data: bytes) -> NtpPacket:
        if len(data) > MAX_PACKET_LEN:
            raise NtpFormatError(f"NTP packet of {len(data)} bytes is too long")
        header = NtpHeader.decode(data)
        extensions, offsets, mac = parse_extension_fields(data, HEADER_LEN)
        return cls(header, extensions, mac, offsets)


def build_packet(
    header: NtpHeader, encoded_fields: Iterable[bytes], mac: bytes | None = None
) -> bytes:
    return header.encode() + b"".join(encoded_fields) + (mac or b"")


def parse_extension_fields(
    data: bytes, start: int
) -> tuple[tuple[ExtensionField, ...], tuple[int, ...], bytes | None]:
    """Extension fields from ``start`` to the end, their offsets, and a trailing legacy
    MAC (the framing rules are :func:`.scan.scan_fields`'s); NtpFormatError if malformed."""
    offsets: list[int] = []
    problem, end, *_ = scan_fields(data, start, offsets)
    if problem:
        raise NtpFormatError(PROBLEMS[problem].format(end))
    ends = [*offsets[1:], end] if offsets else []
    fields = tuple(
        ExtensionField(data[at] << 8 | data[at + 1], data[at + 4 : next_at])
        for at, next_at in zip(offsets, ends, strict=True)
    )
    return fields, tuple(offsets), data[end:] if end < len(data) else None
