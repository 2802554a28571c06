"""The NTS client state machines (gnomon.proto.nts.client, gnomon.client.ntp.UdpExchange),
driven against the in-memory FakeServer."""

from __future__ import annotations

import calendar
import os
import struct

import pytest
from fakeserver import FakeServer

from gnomon.client.ntp import Timing, UdpExchange, fresh_request
from gnomon.errors import (
    AuthenticationError,
    KeProtocolError,
    KeServerError,
    KissOfDeathError,
    NoCookiesError,
    NtpFormatError,
    NtsNakError,
    ProtocolError,
    QueryTimeoutError,
    ResponseMismatchError,
)
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS, Aead
from gnomon.proto.nts.client import Association, KeExchange, PendingRequest, Sample
from gnomon.proto.nts.fields import (
    EF_NTS_AUTHENTICATOR,
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    encode_authenticator,
)
from gnomon.proto.nts.ke import Record, RecordType, build_request, encode_records, u16_list
from gnomon.proto.nts.ntp import MODE_CLIENT, NtpPacket, encode_extension_field, unix_ns_to_ntp

NS = 1_000_000_000
T1 = calendar.timegm((2025, 6, 1, 12, 0, 0, 0, 0, 0)) * NS + 123_456_789
AEADS = [AES_SIV_CMAC_256, AES_128_GCM_SIV]


def make_pair(
    aead_id: int, cookies: int = 8, cookie_length: int = 100
) -> tuple[Association, FakeServer]:
    key_length = ALGORITHMS[aead_id].key_length
    c2s = bytes(range(1, key_length + 1))
    s2c = bytes(range(101, key_length + 101))
    jar = [bytes([0xC0 + i]) * cookie_length for i in range(cookies)]
    return Association(aead_id, c2s, s2c, jar), FakeServer(
        aead_id, c2s, s2c, cookie_length=cookie_length
    )


def times(offset: int, out: int, back: int, processing: int) -> tuple[int, int, int, int]:
    t2 = T1 + offset + out
    t3 = t2 + processing
    t4 = t3 - offset + back
    return T1, t2, t3, t4


def exchange(
    association: Association,
    server: FakeServer,
    t: tuple[int, int, int, int] | None = None,
    **knobs: object,
) -> tuple[bytes, PendingRequest, bytes]:
    """One request and the server's response to it (not yet processed)."""
    _t1, t2, t3, _ = t or times(0, 1_000_000, 1_000_000, 10_000)
    request, pending = fresh_request(association)
    knobs.setdefault("receive_ts", unix_ns_to_ntp(t2))
    knobs.setdefault("transmit_ts", unix_ns_to_ntp(t3))
    response = server.respond(request, **knobs)  # type: ignore[arg-type]
    return request, pending, response


def process(association: Association, response: bytes, pending: PendingRequest) -> Sample:
    _, _, _, t4 = times(0, 1_000_000, 1_000_000, 10_000)
    return association.process_response(response, pending, sent_ns=T1, received_ns=t4)


# --- the good path -----------------------------------------------------------------


@pytest.mark.parametrize("aead_id", AEADS)
@pytest.mark.parametrize(
    ("offset", "out", "back", "processing", "expected_offset", "expected_delay"),
    [
        (1_500_000_000, 10_000_000, 10_000_000, 1_000_000, 1_500_000_000, 20_000_000),
        (-2_345_678_901, 3_000_001, 5_000_003, 17, -2_345_678_901 - 1_000_001, 8_000_004),
        (0, 250_000, 250_000, 5_000_000_000, 0, 500_000),
        (86_400 * NS * 365, 1_000, 3_000, 0, 86_400 * NS * 365 - 1_000, 4_000),
    ],
)
def test_good_response_gives_exact_offset_and_delay(
    aead_id: int,
    offset: int,
    out: int,
    back: int,
    processing: int,
    expected_offset: int,
    expected_delay: int,
) -> None:
    association, server = make_pair(aead_id)
    t1, t2, t3, t4 = times(offset, out, back, processing)
    request, pending = fresh_request(association)
    response = server.respond(
        request,
        receive_ts=unix_ns_to_ntp(t2),
        transmit_ts=unix_ns_to_ntp(t3),
        stratum=2,
        leap=1,
        poll=6,
        precision=-23,
        reference_id=b"\xc0\x00\x02\x01",
        root_delay=0x0001_8000,
        root_dispersion=0x0000_4000,
    )
    sample = association.process_response(response, pending, sent_ns=t1, received_ns=t4)
    assert sample.offset_ns == expected_offset
    assert sample.delay_ns == expected_delay
    assert sample.receive_ns == t2
    assert sample.transmit_ns == t3
    assert (sample.stratum, sample.leap, sample.poll, sample.precision) == (2, 1, 6, -23)
    assert sample.version == 4
    assert sample.reference_id == b"\xc0\x00\x02\x01"
    assert sample.root_delay == 1.5
    assert sample.root_dispersion == 0.25
    assert sample.new_cookies == 1
    assert association.cookie_count == 8


def test_offset_across_the_2036_era_wrap() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    wrap = calendar.timegm((2036, 2, 7, 6, 28, 16, 0, 0, 0)) * NS
    t1 = wrap - 400_000_000  # the client sends in era 0...
    t2 = t1 + 3 * NS + 500_000_000  # ...the server's timestamps are in era 1
    t3 = t2 + 1_000
    t4 = t1 + 1_000_000_000
    request, pending = fresh_request(association)
    response = server.respond(
        request, receive_ts=unix_ns_to_ntp(t2), transmit_ts=unix_ns_to_ntp(t3)
    )
    assert unix_ns_to_ntp(t2) >> 32 == 3  # wire seconds wrapped to a small number
    sample = association.process_response(response, pending, sent_ns=t1, received_ns=t4)
    assert sample.receive_ns == t2
    assert sample.offset_ns == ((t2 - t1) + (t3 - t4)) // 2
    assert abs(sample.offset_ns - 3 * NS) < NS


@pytest.mark.parametrize("aead_id", AEADS)
@pytest.mark.parametrize("jar", range(1, 9))
def test_cookies_refilled_to_eight(aead_id: int, jar: int) -> None:
    association, server = make_pair(aead_id, cookies=jar)
    before = association.cookies
    _request, pending, response = exchange(association, server)
    parsed = server.requests[-1]
    assert parsed.cookie == before[0]
    assert parsed.placeholders == pending.placeholders == 8 - jar
    sample = process(association, response, pending)
    assert sample.new_cookies == 8 - jar + 1
    assert association.cookie_count == 8
    # the old cookies first, in order, then the new ones in the order received
    assert association.cookies == before[1:] + tuple(server.issued)


@pytest.mark.parametrize("cookie_length", [16, 64, 100, 104, 168, 256])
def test_placeholder_length_equals_the_cookie_used(cookie_length: int) -> None:
    association, server = make_pair(AES_128_GCM_SIV, cookies=3, cookie_length=cookie_length)
    request, _pending = fresh_request(association)
    parsed = server.parse_request(request)
    assert len(parsed.cookie) == cookie_length
    assert parsed.placeholder_lengths == (cookie_length,) * 5  # 8 - 3
    # and each placeholder field is exactly as long as the cookie field
    packet = NtpPacket.decode(request)
    lengths = {
        ef.type: 4 + len(ef.body)
        for ef in packet.extensions
        if ef.type in (EF_NTS_COOKIE, EF_NTS_COOKIE_PLACEHOLDER)
    }
    assert lengths[EF_NTS_COOKIE] == lengths[EF_NTS_COOKIE_PLACEHOLDER]


@pytest.mark.parametrize("aead_id", AEADS)
def test_request_shape(aead_id: int) -> None:
    association, server = make_pair(aead_id, cookies=5)
    request, pending = association.build_request(
        unique_id=os.urandom(32),
        nonce=os.urandom(ALGORITHMS[aead_id].nonce_length),
        transmit_ts=0x1122334455667788,
    )
    packet = NtpPacket.decode(request)
    assert packet.header.mode == MODE_CLIENT
    assert packet.header.version == 4
    assert packet.header.transmit_ts == 0x1122334455667788 == pending.transmit_ts
    # nothing else in the header gives the client away
    assert packet.header.origin_ts == packet.header.receive_ts == packet.header.reference_ts == 0
    types = [ef.type for ef in packet.extensions]
    assert types == [EF_UNIQUE_IDENTIFIER, EF_NTS_COOKIE] + [EF_NTS_COOKIE_PLACEHOLDER] * 3 + [
        EF_NTS_AUTHENTICATOR
    ]
    assert packet.mac is None
    parsed = server.parse_request(request)  # verifies with the C2S key
    assert parsed.unique_id == pending.unique_id
    assert parsed.encrypted_fields == ()
    # the request is not sealed with the S2C key
    with pytest.raises(AuthenticationError):
        FakeServer(aead_id, association.s2c, association.s2c).parse_request(request)


def test_unique_ids_are_fresh_and_32_bytes() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    seen_ids = set()
    seen_transmit = set()
    for _ in range(8):
        request, pending = fresh_request(association)
        assert len(pending.unique_id) == 32
        assert server.parse_request(request).unique_id == pending.unique_id
        seen_ids.add(pending.unique_id)
        seen_transmit.add(pending.transmit_ts)
    assert len(seen_ids) == 8
    assert len(seen_transmit) == 8  # the transmit timestamp is random too
    with pytest.raises(NoCookiesError):
        fresh_request(association)


def test_cookies_are_used_first_in_first_out() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=4)
    original = association.cookies
    sent = []
    for _ in range(3):
        request, pending = fresh_request(association)
        sent.append(server.parse_request(request).cookie)
    assert sent == list(original[:3])
    assert association.cookies == original[3:]
    # the new cookies queue behind the remaining old one
    request, pending = fresh_request(association)
    assert server.parse_request(request).cookie == original[3]
    response = server.respond(request)
    association.process_response(response, pending, sent_ns=T1, received_ns=T1 + 1)
    assert association.cookies == tuple(server.issued)
    request, _ = fresh_request(association)
    assert server.parse_request(request).cookie == server.issued[0]


# --- responses that must be refused ---------------------------------------------------


@pytest.mark.parametrize("aead_id", AEADS)
@pytest.mark.parametrize("unique_id", [b"\x00" * 32, b"x" * 64, None])
def test_wrong_unique_id(aead_id: int, unique_id: bytes | None) -> None:
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server, unique_id=unique_id)
    with pytest.raises(ResponseMismatchError):
        process(association, response, pending)
    assert association.cookie_count == 7


def test_unique_id_with_a_flipped_bit() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    uid = bytes([pending.unique_id[0] ^ 1]) + pending.unique_id[1:]
    response = server.respond(request, unique_id=uid)
    with pytest.raises(ResponseMismatchError):
        process(association, response, pending)


@pytest.mark.parametrize("aead_id", AEADS)
def test_wrong_origin(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    request, pending = fresh_request(association)
    response = server.respond(request, origin_ts=pending.transmit_ts ^ 1)
    with pytest.raises(ResponseMismatchError):
        process(association, response, pending)
    response = server.respond(request, origin_ts=0)
    with pytest.raises(ResponseMismatchError):
        process(association, response, pending)


def test_response_to_another_request_is_a_mismatch() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    first, pending_first = fresh_request(association)
    _second, pending_second = fresh_request(association)
    response_to_first = server.respond(first)
    with pytest.raises(ResponseMismatchError):
        process(association, response_to_first, pending_second)
    assert process(association, response_to_first, pending_first).new_cookies == 1


def _flip(data: bytes, index: int, bit: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    return bytes(changed)


@pytest.mark.parametrize("aead_id", AEADS)
def test_every_bit_flip_is_refused(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server)
    assert process(association, response, pending).new_cookies == 1  # untouched: accepted
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server)
    packet = NtpPacket.decode(response)
    auth_offset = packet.offsets[-1]
    nonce_length = ALGORITHMS[aead_id].nonce_length
    nonce_start = auth_offset + 8
    sealed = range(nonce_start, len(response))  # nonce and ciphertext (no padding here)
    assert len(response) == nonce_start + nonce_length + 16 + 104
    # bytes whose change can only be caught by the authenticator
    covered_by_tag_only = {*range(1, 24), *range(32, 48), *sealed}
    nonce_length_field = {auth_offset + 4, auth_offset + 5}
    for index in range(len(response)):
        if aead_id == AES_128_GCM_SIV and index in nonce_length_field:
            continue  # see test_gcm_siv_short_nonce_in_response_is_an_authentication_error
        for bit in range(8):
            flipped = _flip(response, index, bit)
            if index in covered_by_tag_only or (index == 0 and bit >= 3):
                with pytest.raises(AuthenticationError):
                    process(association, flipped, pending)
            else:
                with pytest.raises(ProtocolError):
                    process(association, flipped, pending)
    assert association.cookie_count == 7


@pytest.mark.parametrize("aead_id", AEADS)
def test_response_sealed_with_the_wrong_key(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server, s2c=server.c2s)
    with pytest.raises(AuthenticationError):
        process(association, response, pending)


@pytest.mark.parametrize("nonce_length", [1, 4, 8, 11])
def test_gcm_siv_short_nonce_in_response_is_an_authentication_error(nonce_length: int) -> None:
    association, server = make_pair(AES_128_GCM_SIV)
    request, pending = fresh_request(association)
    response = server.respond(request)
    packet = NtpPacket.decode(response)
    auth_offset = packet.offsets[-1]
    forged = bytearray(response)
    forged[auth_offset + 4 : auth_offset + 6] = struct.pack("!H", nonce_length)
    with pytest.raises(AuthenticationError):
        process(association, bytes(forged), pending)


def test_cookies_outside_the_encrypted_part_are_ignored() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=4)
    clear = server.new_cookie()
    after = [server.new_cookie() for _ in range(3)]
    _, pending, response = exchange(
        association,
        server,
        cookies=[],
        clear_fields=[encode_extension_field(EF_NTS_COOKIE, clear)],
        fields_after=[encode_extension_field(EF_NTS_COOKIE, c) for c in after],
    )
    sample = process(association, response, pending)
    assert sample.new_cookies == 0
    assert association.cookie_count == 3
    assert clear not in association.cookies
    assert not set(after) & set(association.cookies)


def test_clear_cookies_do_not_displace_encrypted_ones() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=8)
    clear = server.new_cookie()
    encrypted = server.new_cookie()
    _, pending, response = exchange(
        association,
        server,
        cookies=[encrypted],
        clear_fields=[encode_extension_field(EF_NTS_COOKIE, clear)],
    )
    assert process(association, response, pending).new_cookies == 1
    assert association.cookies[-1] == encrypted
    assert clear not in association.cookies


@pytest.mark.parametrize(("jar", "sent", "taken"), [(8, 5, 1), (3, 9, 6), (1, 12, 8)])
def test_more_cookies_than_asked_for(jar: int, sent: int, taken: int) -> None:
    association, server = make_pair(AES_128_GCM_SIV, cookies=jar)
    request, pending = fresh_request(association)
    new = [server.new_cookie() for _ in range(sent)]
    response = server.respond(request, cookies=new)
    assert process(association, response, pending).new_cookies == taken
    assert association.cookie_count == 8
    assert association.cookies[-taken:] == tuple(new[:taken])


def test_cookies_taken_are_bounded_by_the_request_not_by_the_jar() -> None:
    """With two requests out, the first answer may refill only what the first one asked."""
    association, server = make_pair(AES_SIV_CMAC_256, cookies=8)
    first, pending_first = fresh_request(association)  # 0 placeholders
    fresh_request(association)  # 1 placeholder; the jar holds 6
    response = server.respond(first, extra_cookies=4)
    assert process(association, response, pending_first).new_cookies == 1
    assert association.cookie_count == 7
    assert association.cookies[-1] == server.issued[0]


def test_bad_cookie_sizes_inside_the_encrypted_part_are_ignored() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=6)  # 3 cookies asked for
    good = server.new_cookie()
    _, pending, response = exchange(association, server, cookies=[b"", b"\xab" * 300, good])
    sample = process(association, response, pending)
    assert sample.new_cookies == 1
    assert association.cookies[-1] == good
    assert association.cookie_count == 6
    assert all(16 <= len(c) <= 256 for c in association.cookies)


def test_short_cookie_inside_the_encrypted_part_is_ignored() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=7)  # 2 asked for
    good = server.new_cookie(16)
    _, pending, response = exchange(association, server, cookies=[b"\x01" * 12, good])
    assert process(association, response, pending).new_cookies == 1
    assert association.cookies[-1] == good


@pytest.mark.parametrize("aead_id", AEADS)
def test_nts_nak(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    request, pending = fresh_request(association)
    remaining = association.cookies
    with pytest.raises(NtsNakError):
        process(association, server.nak(request), pending)
    assert association.cookies == remaining
    assert association.cookie_count == 7


def test_nak_for_another_request_is_a_mismatch() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    with pytest.raises(ResponseMismatchError):
        process(association, server.nak(request, unique_id=b"\x55" * 32), pending)
    with pytest.raises(ResponseMismatchError):
        process(association, server.nak(request, unique_id=None), pending)


def test_unauthenticated_rate_kiss_is_an_authentication_error() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    response = server.respond(
        request, stratum=0, reference_id=b"RATE", authenticate=False, cookies=[]
    )
    with pytest.raises(AuthenticationError):
        process(association, response, pending)


def test_unauthenticated_ordinary_response_is_an_authentication_error() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    _, pending, response = exchange(association, server, authenticate=False)
    with pytest.raises(AuthenticationError):
        process(association, response, pending)


@pytest.mark.parametrize("aead_id", AEADS)
def test_authenticated_rate_kiss(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server, stratum=0, reference_id=b"RATE")
    with pytest.raises(KissOfDeathError) as info:
        process(association, response, pending)
    assert info.value.code == "RATE"
    assert association.cookie_count == 7  # cookies in a kiss are not taken


@pytest.mark.parametrize("mode", [0, 1, 2, 3, 5, 6, 7])
def test_packet_not_in_server_mode_is_a_mismatch(mode: int) -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    _, pending, response = exchange(association, server, mode=mode)
    with pytest.raises(ResponseMismatchError):
        process(association, response, pending)


def test_own_request_reflected_is_a_mismatch() -> None:
    association, _ = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    with pytest.raises(ResponseMismatchError):
        process(association, request, pending)


@pytest.mark.parametrize("which", ["transmit_ts", "receive_ts"])
def test_zero_timestamp(which: str) -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    _, pending, response = exchange(association, server, **{which: 0})
    with pytest.raises(NtpFormatError):
        process(association, response, pending)


@pytest.mark.parametrize("version", [0, 5, 7])
def test_bad_version(version: int) -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    _, pending, response = exchange(association, server, version=version)
    with pytest.raises(NtpFormatError):
        process(association, response, pending)


def test_version_3_is_accepted() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    _, pending, response = exchange(association, server, version=3)
    assert process(association, response, pending).version == 3


def test_fields_after_the_authenticator_are_ignored() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=8)
    after = [
        encode_extension_field(EF_NTS_COOKIE, b"\x77" * 100),
        encode_extension_field(0x7777, b"junk"),
        encode_extension_field(EF_UNIQUE_IDENTIFIER, b"\x00" * 32),
        encode_extension_field(EF_NTS_AUTHENTICATOR, b"\x00" * 40),
    ]
    _, pending, response = exchange(association, server, fields_after=after)
    sample = process(association, response, pending)
    assert sample.new_cookies == 1
    assert b"\x77" * 100 not in association.cookies


def test_unknown_fields_inside_and_before_the_authenticator_are_tolerated() -> None:
    association, server = make_pair(AES_SIV_CMAC_256, cookies=8)
    _, pending, response = exchange(
        association,
        server,
        clear_fields=[encode_extension_field(0x7F04, b"clear")],
        encrypted_fields=[encode_extension_field(0x7E04, b"secret")],
    )
    assert process(association, response, pending).new_cookies == 1


def test_two_unique_ids_are_malformed() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    response = server.respond(
        request, clear_fields=[encode_extension_field(EF_UNIQUE_IDENTIFIER, pending.unique_id)]
    )
    with pytest.raises(NtpFormatError):
        process(association, response, pending)


def test_malformed_encrypted_fields() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    response = server.respond(request, cookies=[], encrypted_fields=[b"\x02\x04\x00\x08abcd"])
    with pytest.raises(NtpFormatError):
        process(association, response, pending)


@pytest.mark.parametrize("aead_id", AEADS)
def test_truncated_response(aead_id: int) -> None:
    association, server = make_pair(aead_id)
    _, pending, response = exchange(association, server)
    for length in range(48):
        with pytest.raises(NtpFormatError):
            process(association, response[:length], pending)
    # cut inside the authenticator's ciphertext
    with pytest.raises(NtpFormatError):
        process(association, response[:-5], pending)
    for length in range(48, len(response)):
        with pytest.raises((NtpFormatError, AuthenticationError, ResponseMismatchError)):
            process(association, response[:length], pending)
    assert association.cookie_count == 7


def test_legacy_mac_instead_of_authenticator() -> None:
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    response = server.respond(request, authenticate=False) + b"\x00\x00\x00\x01" + bytes(16)
    with pytest.raises(AuthenticationError):
        process(association, response, pending)


def test_authenticator_of_a_short_nonce_needs_padding() -> None:
    """RFC 8915 5.6: a nonce under 16 bytes is followed by padding up to 16 (for SIV)."""
    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    reference = server.respond(request, nonce=b"\x09" * 8)  # encode_authenticator pads it
    packet = NtpPacket.decode(reference)
    assert len(packet.extensions[-1].body) == 4 + 16 + 16 + 104
    assert process(association, reference, pending).new_cookies == 1

    association, server = make_pair(AES_SIV_CMAC_256)
    request, pending = fresh_request(association)
    header_and_uid = server.respond(request, authenticate=False)
    cookie = encode_extension_field(EF_NTS_COOKIE, server.new_cookie())
    sealed = Aead(AES_SIV_CMAC_256, association.s2c).encrypt(b"\x09" * 8, cookie, header_and_uid)
    body = struct.pack("!HH", 8, len(sealed)) + b"\x09" * 8 + sealed  # no extra padding
    forged = header_and_uid + struct.pack("!HH", EF_NTS_AUTHENTICATOR, 4 + len(body)) + body
    with pytest.raises(AuthenticationError, match="padding"):
        process(association, forged, pending)


# --- UdpExchange ------------------------------------------------------------------------

TIMING = Timing(timeout=5.0, retransmit=1.0, nak_grace=0.5)
START = 1000.0


def start(aead_id: int = AES_SIV_CMAC_256, cookies: int = 8) -> tuple[UdpExchange, FakeServer]:
    association, server = make_pair(aead_id, cookies=cookies)
    return UdpExchange(association, TIMING, START), server


def send(ex: UdpExchange, now: float, sent_ns: int = T1) -> bytes:
    packet = ex.on_timer(now)
    assert packet is not None
    ex.sent(sent_ns)
    return packet


def test_udp_first_request_at_once_and_retransmission() -> None:
    ex, server = start()
    first = send(ex, START)
    assert ex.wake_at() == START + 1.0
    assert ex.on_timer(START + 0.999) is None
    second = send(ex, START + 1.0, T1 + NS)
    assert ex.wake_at() == START + 2.0
    a, b = server.parse_request(first), server.parse_request(second)
    assert a.unique_id != b.unique_id
    assert a.cookie != b.cookie  # every retransmission spends a new cookie
    assert ex.association.cookie_count == 6


def test_udp_late_answer_to_the_first_request_is_accepted() -> None:
    ex, server = start()
    first = send(ex, START)
    second = send(ex, START + 1.0, T1 + NS)
    _, t2, t3, t4 = times(0, 1_000_000, 1_000_000, 0)
    response = server.respond(first, receive_ts=unix_ns_to_ntp(t2), transmit_ts=unix_ns_to_ntp(t3))
    sample = ex.on_datagram(response, t4, START + 1.5)
    assert sample is not None
    assert sample.delay_ns == 2_000_000  # measured against the first request's send time
    assert server.parse_request(second).placeholders == 1


def test_udp_ignores_garbage_and_forgeries_then_times_out() -> None:
    ex, server = start()
    request = send(ex, START)
    assert ex.on_datagram(b"garbage", T1, START + 0.1) is None
    assert ex.on_datagram(bytes(48), T1, START + 0.1) is None
    forged = server.respond(request, s2c=server.c2s)
    assert ex.on_datagram(forged, T1, START + 0.2) is None
    assert ex.on_datagram(request, T1, START + 0.2) is None  # its own request reflected
    for step in range(1, 5):
        send(ex, START + step)
    assert ex.on_timer(START + 4.5) is None
    assert ex.wake_at() == START + 5.0
    with pytest.raises(QueryTimeoutError, match="authenticator"):
        ex.on_timer(START + 5.0)


def test_udp_deadline_without_any_answer() -> None:
    ex, _ = start()
    send(ex, START)
    for step in range(1, 5):
        send(ex, START + step)
    with pytest.raises(QueryTimeoutError):
        ex.on_timer(START + 5.0)
    with pytest.raises(QueryTimeoutError):
        ex.on_timer(START + 60.0)


def test_udp_nak_then_genuine_answer_within_grace() -> None:
    ex, server = start()
    request = send(ex, START)
    assert ex.on_datagram(server.nak(request), T1, START + 0.2) is None
    assert ex.wake_at() == pytest.approx(START + 0.7)
    assert ex.on_timer(START + 0.6) is None
    sample = ex.on_datagram(server.respond(request), T1 + 5_000_000, START + 0.65)
    assert sample is not None
    assert sample.new_cookies == 1


def test_udp_nak_and_nothing_else() -> None:
    ex, server = start()
    request = send(ex, START + 0.0)
    assert ex.on_datagram(server.nak(request), T1, START + 0.9) is None
    # no retransmission during the grace, even though the retransmit time passes
    assert ex.on_timer(START + 1.0) is None
    assert ex.on_timer(START + 1.39) is None
    with pytest.raises(NtsNakError):
        ex.on_timer(START + 1.4)
    assert ex.association.cookie_count == 7


def test_udp_nak_grace_is_cut_by_the_deadline() -> None:
    ex, server = start()
    request = send(ex, START)
    for step in range(1, 5):
        send(ex, START + step)
    assert ex.on_datagram(server.nak(request), T1, START + 4.8) is None
    assert ex.wake_at() == START + 5.0
    with pytest.raises(NtsNakError):
        ex.on_timer(START + 5.0)


def test_udp_out_of_cookies_waits_for_the_outstanding_request() -> None:
    ex, server = start(cookies=1)
    request = send(ex, START)
    assert ex.on_timer(START + 1.0) is None  # nothing left to retransmit with
    assert ex.wake_at() == START + 5.0
    sample = ex.on_datagram(server.respond(request), T1 + 1_000, START + 2.0)
    assert sample is not None
    assert ex.association.cookie_count == 8


def test_udp_with_no_cookie_at_all_fails_at_once() -> None:
    ex, _ = start(cookies=0)
    with pytest.raises(NoCookiesError):
        ex.on_timer(START)


def test_udp_survives_a_gcm_siv_response_with_a_short_nonce() -> None:
    ex, server = start(AES_128_GCM_SIV)
    request = send(ex, START)
    response = server.respond(request)
    auth_offset = NtpPacket.decode(response).offsets[-1]
    forged = bytearray(response)
    forged[auth_offset + 4 : auth_offset + 6] = b"\x00\x08"
    assert ex.on_datagram(bytes(forged), T1, START + 0.1) is None


# --- KeExchange ---------------------------------------------------------------------------


def ke_response(aead: int = 30, cookies: int = 8, with_1024: bool = True) -> bytes:
    records = [
        Record(RecordType.NEXT_PROTOCOL, u16_list([0]), critical=True),
        Record(RecordType.AEAD_ALGORITHM, u16_list([aead]), critical=True),
    ]
    if with_1024:
        records.append(Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER))
    records += [Record(RecordType.NEW_COOKIE, bytes([i]) * 64) for i in range(cookies)]
    records.append(Record(RecordType.END_OF_MESSAGE, critical=True))
    return encode_records(records)


def test_ke_exchange_request() -> None:
    exchange_ = KeExchange((15,), server="ntp.example", port=123)
    assert exchange_.request() == build_request([15], server="ntp.example", port=123)
    assert KeExchange().request() == build_request([30, 15])


def test_ke_exchange_one_byte_chunks() -> None:
    ke = KeExchange()
    data = ke_response()
    results = [ke.receive_data(data[i : i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    response = results[-1]
    assert response is not None
    assert response.aead == 30
    assert response.compliant_gcm_siv
    assert response.cookies == tuple(bytes([i]) * 64 for i in range(8))
    ke.connection_closed()  # complete: closing is fine


def test_ke_exchange_closed_before_end_of_message() -> None:
    ke = KeExchange()
    data = ke_response()
    assert ke.receive_data(data[:-4]) is None
    with pytest.raises(KeProtocolError):
        ke.connection_closed()
    with pytest.raises(KeProtocolError):
        KeExchange().connection_closed()


def test_ke_exchange_rejects_an_aead_not_offered() -> None:
    with pytest.raises(KeProtocolError):
        KeExchange((15,)).receive_data(ke_response(aead=30))


def test_ke_exchange_server_error() -> None:
    data = encode_records(
        [
            Record(RecordType.ERROR, b"\x00\x01", critical=True),
            Record(RecordType.END_OF_MESSAGE, critical=True),
        ]
    )
    with pytest.raises(KeServerError) as info:
        KeExchange().receive_data(data)
    assert info.value.code == 1


def test_ke_to_ntp_end_to_end_with_derived_keys() -> None:
    """KeExchange's response, keys from a fake exporter, then a good NTP exchange."""
    from gnomon.proto.nts.client import keys_from_response

    ke = KeExchange()
    response = ke.receive_data(ke_response(aead=30, with_1024=False))
    assert response is not None

    def exporter(label: bytes, length: int, context: bytes) -> bytes:
        assert label == b"EXPORTER-network-time-security"
        return bytes((sum(context) * 7 + i) % 256 for i in range(length))

    c2s, s2c = keys_from_response(response, exporter)
    association = Association(response.aead, c2s, s2c, response.cookies)
    server = FakeServer(30, c2s, s2c, cookie_length=64)
    request, pending = fresh_request(association)
    sample = association.process_response(
        server.respond(request), pending, sent_ns=T1, received_ns=T1 + 1_000
    )
    assert sample.new_cookies == 1
    assert association.cookie_count == 8


def test_encode_authenticator_layout() -> None:
    aead = Aead(AES_128_GCM_SIV, bytes(16))
    field = encode_authenticator(aead, b"\x01" * 12, b"assoc", b"")
    assert field[:4] == struct.pack("!HH", EF_NTS_AUTHENTICATOR, len(field))
    assert field[4:8] == struct.pack("!HH", 12, 16)
    assert field[8:20] == b"\x01" * 12
    assert len(field) == 4 + 4 + 12 + 16
    aead = Aead(AES_SIV_CMAC_256, bytes(32))
    field = encode_authenticator(aead, b"\x01" * 5, b"assoc", b"\x00" * 3)
    # 5-byte nonce padded to 8, 19-byte ciphertext padded to 20, plus 8 more to reach 16
    assert field[4:8] == struct.pack("!HH", 5, 19)
    assert len(field) == 4 + 4 + 8 + 20 + 8
    assert len(field) % 4 == 0
