"""NTP timestamps, headers, packets and RFC 7822 extension fields (gnomon.proto.nts.ntp)."""

from __future__ import annotations

import calendar
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.errors import NtpFormatError
from gnomon.proto.nts.ntp import (
    HEADER_LEN,
    MAX_PACKET_LEN,
    MODE_CLIENT,
    MODE_SERVER,
    NTP_UNIX_OFFSET,
    ExtensionField,
    NtpHeader,
    NtpPacket,
    build_packet,
    encode_extension_field,
    ntp_to_unix_ns,
    parse_extension_fields,
    seconds_to_short,
    short_to_seconds,
    unix_ns_to_ntp,
)

NS = 1_000_000_000
YEAR_NS = 365 * 86400 * NS
ERA = 1 << 32


def unix(year: int, month: int = 1, day: int = 1, h: int = 0, m: int = 0, s: int = 0) -> int:
    """A UTC calendar time in Unix nanoseconds."""
    return calendar.timegm((year, month, day, h, m, s, 0, 0, 0)) * NS


# The first NTP era ends at 2036-02-07 06:28:16 UTC.
WRAP_NS = unix(2036, 2, 7, 6, 28, 16)


# --- timestamps -------------------------------------------------------------------


def test_unix_epoch_is_ntp_2208988800() -> None:
    assert NTP_UNIX_OFFSET == 2_208_988_800
    assert unix_ns_to_ntp(0) == 2_208_988_800 << 32
    assert ntp_to_unix_ns(2_208_988_800 << 32, pivot_unix_ns=unix(2024)) == 0


def test_fraction_is_binary() -> None:
    assert unix_ns_to_ntp(NS // 2) == (2_208_988_800 << 32) | 0x8000_0000
    assert unix_ns_to_ntp(NS // 4) == (2_208_988_800 << 32) | 0x4000_0000
    assert ntp_to_unix_ns((2_208_988_800 << 32) | 0x8000_0000, unix(2000)) == NS // 2
    # 2^-32 s is about 0.23 ns: one nanosecond is 4 fraction units (floor of 4.29).
    assert unix_ns_to_ntp(1) & 0xFFFF_FFFF == 4


def test_known_date() -> None:
    # 2024-01-01 00:00:00 UTC = NTP 3913056000 (124 years, 30 leap days: 1904..2020)
    assert unix_ns_to_ntp(unix(2024)) == 3_913_056_000 << 32
    assert (124 * 365 + 30) * 86400 == 3_913_056_000


def test_era_wrap_instant() -> None:
    assert WRAP_NS // NS == 2_085_978_496
    assert unix_ns_to_ntp(WRAP_NS) == 0
    assert unix_ns_to_ntp(WRAP_NS - NS) == 0xFFFF_FFFF << 32
    assert unix_ns_to_ntp(WRAP_NS + NS // 2) == 0x8000_0000


@pytest.mark.parametrize(
    "pivot",
    [
        WRAP_NS - 86400 * NS,  # the day before the wrap
        WRAP_NS - NS,
        WRAP_NS,
        WRAP_NS + NS,
        WRAP_NS + 86400 * NS,  # the day after
        unix(2000),
        unix(2070),
    ],
)
def test_era_resolution_around_2036(pivot: int) -> None:
    # Era 1 second 0 and era 0 second 2^32-1 are one second apart, whichever side the pivot is.
    assert ntp_to_unix_ns(0, pivot) == WRAP_NS
    assert ntp_to_unix_ns(0xFFFF_FFFF << 32, pivot) == WRAP_NS - NS
    assert ntp_to_unix_ns(10 << 32, pivot) == WRAP_NS + 10 * NS
    assert ntp_to_unix_ns((0xFFFF_FFFF - 9) << 32, pivot) == WRAP_NS - 10 * NS


def test_era_resolution_picks_1900_for_an_early_pivot() -> None:
    # From 1950 the era-0 reading of second 0 (1900) is nearer than era 1 (2036).
    assert ntp_to_unix_ns(0, unix(1950)) == -NTP_UNIX_OFFSET * NS
    assert ntp_to_unix_ns(0, unix(2000)) == WRAP_NS


def test_era_resolution_far_after_the_wrap() -> None:
    # 2100: NTP seconds 2100-01-01 = ts mod 2^32; with a pivot in 2099 it reads as 2100.
    ts = unix_ns_to_ntp(unix(2100))
    assert ts >> 32 == (unix(2100) // NS + NTP_UNIX_OFFSET) % ERA
    assert ntp_to_unix_ns(ts, unix(2099, 6)) == unix(2100)
    # ...and with a 1990 pivot the same wire value is read as 1964 (136 years earlier).
    assert ntp_to_unix_ns(ts, unix(1990)) == unix(2100) - ERA * NS


@settings(max_examples=500)
@given(
    unix_ns=st.integers(unix(1970), unix(2100)),
    delta=st.integers(-60 * YEAR_NS, 60 * YEAR_NS),
)
def test_timestamp_round_trip(unix_ns: int, delta: int) -> None:
    ntp = unix_ns_to_ntp(unix_ns)
    assert 0 <= ntp < 1 << 64
    back = ntp_to_unix_ns(ntp, unix_ns + delta)
    assert abs(back - unix_ns) <= 1


@given(st.integers(0, (1 << 64) - 1), st.integers(unix(1970), unix(2100)))
def test_ntp_to_unix_is_within_half_an_era_of_the_pivot(ntp: int, pivot: int) -> None:
    result = ntp_to_unix_ns(ntp, pivot)
    assert abs(result - pivot) <= (ERA // 2 + 1) * NS
    assert unix_ns_to_ntp(result) >> 32 in {ntp >> 32, ((ntp >> 32) + 1) % ERA}


def test_short_format() -> None:
    assert short_to_seconds(0x0001_0000) == 1.0
    assert short_to_seconds(0x0000_8000) == 0.5
    assert seconds_to_short(1.5) == 0x0001_8000
    assert seconds_to_short(-3.0) == 0
    assert seconds_to_short(1e9) == 0xFFFF_FFFF


# --- header ---------------------------------------------------------------------

u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)
headers = st.builds(
    NtpHeader,
    leap=st.integers(0, 3),
    version=st.integers(0, 7),
    mode=st.integers(0, 7),
    stratum=st.integers(0, 255),
    poll=st.integers(-128, 127),
    precision=st.integers(-128, 127),
    root_delay=u32,
    root_dispersion=u32,
    reference_id=st.binary(min_size=4, max_size=4),
    reference_ts=u64,
    origin_ts=u64,
    receive_ts=u64,
    transmit_ts=u64,
)


@given(headers)
def test_header_round_trip(header: NtpHeader) -> None:
    encoded = header.encode()
    assert len(encoded) == HEADER_LEN == 48
    assert NtpHeader.decode(encoded) == header
    # and trailing bytes do not disturb the header
    assert NtpHeader.decode(encoded + b"\xff" * 20) == header


def test_header_layout() -> None:
    header = NtpHeader(
        leap=3,
        version=4,
        mode=MODE_SERVER,
        stratum=2,
        poll=-6,
        precision=-20,
        root_delay=0x01020304,
        root_dispersion=0x05060708,
        reference_id=b"GPS\x00",
        reference_ts=0x1111111111111111,
        origin_ts=0x2222222222222222,
        receive_ts=0x3333333333333333,
        transmit_ts=0x4444444444444444,
    )
    encoded = header.encode()
    assert encoded[0] == 0b11_100_100
    assert encoded[1:4] == bytes([2, 0xFA, 0xEC])
    assert encoded[4:12] == bytes(range(1, 9))
    assert encoded[12:16] == b"GPS\x00"
    assert encoded[16:48] == b"\x11" * 8 + b"\x22" * 8 + b"\x33" * 8 + b"\x44" * 8


def test_kiss_code() -> None:
    assert NtpHeader(mode=MODE_SERVER, stratum=0, reference_id=b"RATE").kiss_code == "RATE"
    assert NtpHeader(mode=MODE_SERVER, stratum=0, reference_id=b"NTSN").kiss_code == "NTSN"
    assert NtpHeader(mode=MODE_SERVER, stratum=1, reference_id=b"NTSN").kiss_code is None
    assert NtpHeader(mode=MODE_CLIENT, stratum=0, reference_id=b"NTSN").kiss_code is None


@pytest.mark.parametrize("length", [0, 1, 47])
def test_header_too_short(length: int) -> None:
    with pytest.raises(NtpFormatError):
        NtpHeader.decode(bytes(length))
    with pytest.raises(NtpFormatError):
        NtpPacket.decode(bytes(length))


# --- extension fields -------------------------------------------------------------

HEADER = NtpHeader(mode=MODE_CLIENT, transmit_ts=0x0123456789ABCDEF).encode()


def test_extension_field_encoding_pads_to_16_and_to_4() -> None:
    assert encode_extension_field(0x0104, b"") == b"\x01\x04\x00\x10" + bytes(12)
    assert encode_extension_field(0x0104, b"abc") == b"\x01\x04\x00\x10abc" + bytes(9)
    assert encode_extension_field(0x0204, bytes(13)) == b"\x02\x04\x00\x14" + bytes(16)
    assert encode_extension_field(0x0204, b"x" * 32) == b"\x02\x04\x00\x24" + b"x" * 32
    body = b"y" * 33
    encoded = encode_extension_field(0x0204, body)
    assert len(encoded) == 40
    assert encoded[4:37] == body
    assert encoded[37:] == bytes(3)


ef_bodies = st.binary(min_size=0, max_size=120)
fields = st.lists(st.tuples(st.integers(0, 0xFFFF), ef_bodies), max_size=6)


@given(fields)
def test_extension_fields_round_trip(items: list[tuple[int, bytes]]) -> None:
    packet = build_packet(
        NtpHeader.decode(HEADER), (encode_extension_field(t, b) for t, b in items)
    )
    decoded = NtpPacket.decode(packet)
    assert decoded.mac is None
    assert len(decoded.extensions) == len(items)
    offset = HEADER_LEN
    for (ef_type, body), ef, ef_offset in zip(
        items, decoded.extensions, decoded.offsets, strict=True
    ):
        assert ef.type == ef_type
        # the parsed body keeps the padding; the original is its prefix, the rest zeros
        assert ef.body[: len(body)] == body
        assert not any(ef.body[len(body) :])
        length = max(16, (4 + len(body) + 3) & ~3)
        assert len(ef.body) == length - 4
        assert ef_offset == offset
        assert packet[ef_offset : ef_offset + 2] == struct.pack("!H", ef_type)
        offset += length
    assert offset == len(packet)


@given(fields, st.sampled_from([20, 24]), st.data())
def test_packet_round_trip_with_legacy_mac(
    items: list[tuple[int, bytes]], mac_length: int, data: st.DataObject
) -> None:
    # A MAC's key id must not read as the header of a valid extension field.
    key_id = data.draw(
        st.integers(0, 0xFFFF_FFFF).filter(
            lambda k: not (16 <= (k & 0xFFFF) <= mac_length and (k & 0xFFFF) % 4 == 0)
        )
    )
    mac = struct.pack("!I", key_id) + data.draw(
        st.binary(min_size=mac_length - 4, max_size=mac_length - 4)
    )
    header = NtpHeader.decode(HEADER)
    extensions = tuple(
        ExtensionField(t, b + bytes(max(16, (4 + len(b) + 3) & ~3) - 4 - len(b))) for t, b in items
    )
    packet = NtpPacket(header, extensions, mac)
    decoded = NtpPacket.decode(packet.encode())
    assert decoded == packet
    assert decoded.mac == mac


@pytest.mark.parametrize("mac_length", [20, 24])
def test_trailing_mac_is_recognised(mac_length: int) -> None:
    mac = b"\x00\x00\x00\x01" + b"\xaa" * (mac_length - 4)
    decoded = NtpPacket.decode(HEADER + mac)
    assert decoded.extensions == ()
    assert decoded.mac == mac
    ef = encode_extension_field(0x0104, bytes(32))
    decoded = NtpPacket.decode(HEADER + ef + mac)
    assert [e.type for e in decoded.extensions] == [0x0104]
    assert decoded.mac == mac


@pytest.mark.parametrize(
    ("tail", "why"),
    [
        (b"\x01\x04\x00\x0c" + bytes(8), "length 12 < 16"),
        (b"\x01\x04\x00\x08" + bytes(4), "length 8 < 16"),
        (b"\x01\x04\x00\x00" + bytes(12), "length 0"),
        (b"\x01\x04\x00\x12" + bytes(24), "length 18, not a multiple of 4"),
        (b"\x01\x04\x00\x11" + bytes(13), "length 17, not a multiple of 4"),
        (b"\x01\x04\x00\x40" + bytes(24), "length 64 > the 28 bytes left"),
        (b"\x01\x04\x00\x20" + bytes(12), "length 32 > the 16 bytes left"),
        (b"\x01\x04\x00", "3 stray bytes"),
        (b"\x01", "1 stray byte"),
        (b"\x00\x00\x00\x01" + bytes(12), "16-byte tail that is no field (and no MAC)"),
        (b"\x00\x00\x00\x01" + bytes(24), "28-byte tail that is no field (and no MAC)"),
    ],
)
def test_malformed_extension_fields(tail: bytes, why: str) -> None:
    with pytest.raises(NtpFormatError):
        NtpPacket.decode(HEADER + tail)
    # the same breach after a valid field
    with pytest.raises(NtpFormatError):
        NtpPacket.decode(HEADER + encode_extension_field(0x0204, bytes(40)) + tail)


def test_field_longer_than_packet_after_valid_field() -> None:
    good = encode_extension_field(0x0104, bytes(32))
    bad = b"\x02\x04\x01\x00" + bytes(60)  # claims 256 bytes
    with pytest.raises(NtpFormatError):
        NtpPacket.decode(HEADER + good + bad)


def test_parse_extension_fields_returns_offsets() -> None:
    a = encode_extension_field(0x0104, bytes(32))
    b = encode_extension_field(0x0204, bytes(100))
    data = HEADER + a + b
    parsed, offsets, mac = parse_extension_fields(data, HEADER_LEN)
    assert offsets == (48, 48 + len(a))
    assert [f.type for f in parsed] == [0x0104, 0x0204]
    assert mac is None


def test_packet_size_limit() -> None:
    body_len = MAX_PACKET_LEN - HEADER_LEN - 4
    exact = HEADER + encode_extension_field(0x0F04, bytes(body_len))
    assert len(exact) == MAX_PACKET_LEN == 2048
    assert NtpPacket.decode(exact).extensions[0].body == bytes(body_len)
    too_long = HEADER + encode_extension_field(0x0F04, bytes(body_len + 4))
    assert len(too_long) == 2052
    with pytest.raises(NtpFormatError, match="too long"):
        NtpPacket.decode(too_long)
    with pytest.raises(NtpFormatError):
        NtpPacket.decode(bytes(70_000))


def test_truncated_packets() -> None:
    packet = (
        HEADER
        + encode_extension_field(0x0104, bytes(32))
        + encode_extension_field(0x0204, bytes(64))
    )
    NtpPacket.decode(packet)
    for length in range(len(packet)):
        remaining = length - HEADER_LEN
        cut = packet[:length]
        if length < HEADER_LEN:
            with pytest.raises(NtpFormatError):
                NtpPacket.decode(cut)
        elif remaining in (0, 36):  # cut at a field boundary: a shorter, valid packet
            assert len(NtpPacket.decode(cut).extensions) == remaining // 36
        elif remaining in (20, 24) or remaining - 36 in (20, 24):
            assert NtpPacket.decode(cut).mac is not None  # read as a legacy MAC
        else:
            with pytest.raises(NtpFormatError):
                NtpPacket.decode(cut)


# --- fuzzing ----------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=2200))
def test_decode_random_bytes_raises_only_ntp_format_error(data: bytes) -> None:
    try:
        packet = NtpPacket.decode(data)
    except NtpFormatError:
        return
    assert len(data) <= MAX_PACKET_LEN
    assert packet.encode() == data


@st.composite
def plausible_packets(draw: st.DrawFn) -> bytes:
    """A header followed by chunks that look like fields, often with wrong lengths."""
    out = bytearray(draw(st.binary(min_size=48, max_size=48)))
    for _ in range(draw(st.integers(0, 6))):
        length = draw(st.sampled_from([0, 4, 12, 16, 17, 20, 24, 28, 32, 64, 65535]))
        body = draw(st.binary(max_size=80))
        out += struct.pack("!HH", draw(st.sampled_from([0x104, 0x204, 0x304, 0x404])), length)
        out += body
    out += draw(st.binary(max_size=30))
    return bytes(out)


@settings(max_examples=400)
@given(plausible_packets())
def test_decode_plausible_packets_raises_only_ntp_format_error(data: bytes) -> None:
    try:
        packet = NtpPacket.decode(data)
    except NtpFormatError:
        return
    assert packet.encode() == data
