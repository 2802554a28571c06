"""NTP and NTS request handling (RFC 5905, RFC 8915 5), sans-I/O: NtpResponder."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nts_messages import nts_request, open_reply, plain_request

from gnomon.client.ntp import fresh_request
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec, CookieKey, cookie_length
from gnomon.proto.nts.fields import (
    EF_NTS_AUTHENTICATOR,
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
)
from gnomon.proto.nts.ke import MAX_COOKIES
from gnomon.proto.nts.ntp import (
    HEADER_LEN,
    MODE_SERVER,
    NtpHeader,
    encode_extension_field,
    unix_ns_to_ntp,
)
from gnomon.proto.nts.ntp_server import NtpResponder, TimeSource
from gnomon.proto.wire import pad4
from gnomon.server.keys import KeyRing, MemoryKeyStore, RotationPolicy

RECEIVE = 1_700_000_000_123_456_789
TRANSMIT = RECEIVE + 50_000
SYNCED = TimeSource(leap=0, stratum=2, reference_id=b"\x7f\x00\x00\x01", reference_ts=123 << 32)


def session(codec: CookieCodec, aead: int = AES_128_GCM_SIV) -> tuple[bytes, bytes, bytes]:
    """(C2S, S2C, cookie) as NTS-KE would have handed them out."""
    length = ALGORITHMS[aead].key_length
    c2s, s2c = os.urandom(length), os.urandom(length)
    return c2s, s2c, codec.seal(aead, c2s, s2c, os.urandom(RANDOM_LEN))


def respond(responder: NtpResponder, data: bytes) -> bytes | None:
    return responder.respond(data, RECEIVE, lambda: TRANSMIT)


# --- plain NTP ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4])
def test_plain_request_answered_from_the_time_source(codec: CookieCodec, version: int) -> None:
    responder = NtpResponder(codec, SYNCED, seed=bytes(16))
    request = plain_request(0xDEADBEEF01234567, version=version, poll=7)
    reply = respond(responder, request)
    assert reply is not None and len(reply) == HEADER_LEN
    header = NtpHeader.decode(reply)
    assert header.mode == MODE_SERVER
    assert header.version == version
    assert header.poll == 7
    assert header.origin_ts == 0xDEADBEEF01234567
    # The lowest bit tells receive (1) from transmit (0) timestamps (interleaved mode).
    assert header.receive_ts == unix_ns_to_ntp(RECEIVE) | 1
    assert header.transmit_ts == unix_ns_to_ntp(TRANSMIT) & ~1
    assert (header.leap, header.stratum) == (0, 2)
    assert header.reference_id == SYNCED.reference_id
    assert header.reference_ts == SYNCED.reference_ts
    assert responder.counters.plain == 1


def test_plain_request_unsynchronised_by_default(codec: CookieCodec) -> None:
    header = NtpHeader.decode(respond(NtpResponder(codec, seed=bytes(16)), plain_request()) or b"")
    assert (header.leap, header.stratum) == (3, 16)


def test_time_source_swap_takes_effect(codec: CookieCodec) -> None:
    responder = NtpResponder(codec, seed=bytes(16))
    responder.time_source = SYNCED
    header = NtpHeader.decode(respond(responder, plain_request()) or b"")
    assert (header.leap, header.stratum) == (0, 2)


def test_plain_request_with_unknown_extension_gets_header_only(codec: CookieCodec) -> None:
    request = plain_request() + encode_extension_field(0x7777, bytes(28))
    reply = respond(NtpResponder(codec, seed=bytes(16)), request)
    assert reply is not None and len(reply) == HEADER_LEN


def test_require_nts_drops_plain_but_answers_nts(codec: CookieCodec) -> None:
    responder = NtpResponder(codec, require_nts=True, seed=bytes(16))
    assert respond(responder, plain_request()) is None
    assert respond(responder, plain_request() + encode_extension_field(0x7777, bytes(28))) is None
    assert responder.counters.dropped == 2
    assert responder.counters.plain == 0
    c2s, s2c, cookie = session(codec)
    reply = respond(responder, nts_request(AES_128_GCM_SIV, c2s, cookie))
    assert reply is not None and open_reply(reply, AES_128_GCM_SIV, s2c).authenticated


@pytest.mark.parametrize("mode", [0, 1, 2, 4, 5, 6, 7])
def test_non_client_modes_dropped(codec: CookieCodec, mode: int) -> None:
    responder = NtpResponder(codec, seed=bytes(16))
    request = bytearray(plain_request())
    request[0] = (request[0] & ~7) | mode
    assert respond(responder, bytes(request)) is None
    assert responder.counters.dropped == 1


# --- malformed packets -----------------------------------------------------------------------


def _nts_with_two(ef_type: int, codec: CookieCodec) -> bytes:
    c2s, _, cookie = session(codec)
    packet = nts_request(AES_128_GCM_SIV, c2s, cookie)
    field = encode_extension_field(
        ef_type, os.urandom(32) if ef_type == EF_UNIQUE_IDENTIFIER else cookie
    )
    return packet[:HEADER_LEN] + field + packet[HEADER_LEN:]


MALFORMED = {
    "empty": lambda codec: b"",
    "short": lambda codec: plain_request()[:47],
    "one-extra-byte": lambda codec: plain_request() + b"\x00",
    "ef-length-past-end": lambda codec: (
        plain_request() + struct.pack("!HH", 0x0104, 64) + bytes(28)
    ),
    "ef-length-not-multiple-of-4": lambda codec: (
        plain_request() + struct.pack("!HH", 0x0104, 33) + bytes(29)
    ),
    "ef-too-short": lambda codec: (
        plain_request() + struct.pack("!HH", 0x0104, 8) + bytes(4) + bytes(20)
    ),
    "nts-short-unique-id": lambda codec: (
        lambda c2s, s2c, cookie: nts_request(AES_128_GCM_SIV, c2s, cookie, unique_id=bytes(16))
    )(*session(codec)),
    "nts-no-unique-id": lambda codec: (
        plain_request()
        + encode_extension_field(EF_NTS_COOKIE, session(codec)[2])
        + encode_extension_field(EF_NTS_AUTHENTICATOR, bytes(40))
    ),
}

# NTS fields that cannot be answered: dropped, counted as malformed or dropped.
UNANSWERABLE = {
    "nts-no-authenticator": lambda codec: (
        plain_request()
        + encode_extension_field(EF_UNIQUE_IDENTIFIER, bytes(32))
        + encode_extension_field(EF_NTS_COOKIE, session(codec)[2])
    ),
    "nts-unique-id-only": lambda codec: (
        plain_request() + encode_extension_field(EF_UNIQUE_IDENTIFIER, bytes(32))
    ),
    "nts-cookie-after-authenticator": lambda codec: (
        plain_request()
        + encode_extension_field(EF_UNIQUE_IDENTIFIER, bytes(32))
        + encode_extension_field(EF_NTS_AUTHENTICATOR, bytes(40))
        + encode_extension_field(EF_NTS_COOKIE, session(codec)[2])
    ),
}


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_malformed_packet_dropped_and_counted(codec: CookieCodec, shape: str) -> None:
    responder = NtpResponder(codec, seed=bytes(16))
    assert respond(responder, MALFORMED[shape](codec)) is None
    assert responder.counters.malformed == 1
    assert responder.counters.nts == responder.counters.plain == responder.counters.nak == 0


@pytest.mark.parametrize("shape", sorted(UNANSWERABLE))
def test_unanswerable_nts_request_dropped_and_counted(codec: CookieCodec, shape: str) -> None:
    responder = NtpResponder(codec, seed=bytes(16))
    assert respond(responder, UNANSWERABLE[shape](codec)) is None
    counters = responder.counters
    assert counters.malformed + counters.dropped == 1
    assert counters.nts == counters.plain == counters.nak == 0


@pytest.mark.parametrize("ef_type", [EF_UNIQUE_IDENTIFIER, EF_NTS_COOKIE], ids=["uid", "cookie"])
def test_duplicate_nts_fields_dropped_and_counted(codec: CookieCodec, ef_type: int) -> None:
    responder = NtpResponder(codec, seed=bytes(16))
    assert respond(responder, _nts_with_two(ef_type, codec)) is None
    assert responder.counters.malformed == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=600),
    first=st.sampled_from([0x23, 0x1B, 0xE3, 0x24]),
)
def test_random_bytes_never_raise_nor_amplify(data: bytes, first: int) -> None:
    responder = NtpResponder(CookieCodec(CookieKey(1, bytes(16))), seed=bytes(16))
    request = bytes([first]) + data
    reply = respond(responder, request)
    assert reply is None or len(reply) <= len(request)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from([0x0104, 0x0204, 0x0304, 0x0404, 0x7777]),
            st.integers(0, 200),
        ),
        max_size=6,
    )
)
def test_structured_garbage_never_raises_nor_amplifies(fields: list[tuple[int, int]]) -> None:
    """Well-framed extension fields of NTS types with nonsense bodies."""
    responder = NtpResponder(CookieCodec(CookieKey(1, bytes(16))), seed=bytes(16))
    seen: set[int] = set()
    body = b""
    for ef_type, length in fields:
        if ef_type in (EF_UNIQUE_IDENTIFIER, EF_NTS_COOKIE) and ef_type in seen:
            continue  # duplicates: see test_duplicate_nts_fields_dropped_and_counted
        seen.add(ef_type)
        body += encode_extension_field(ef_type, os.urandom(length))
    request = plain_request() + body
    reply = respond(responder, request)
    assert reply is None or len(reply) <= len(request)


# --- NTS: NAKs ---------------------------------------------------------------------------------


def _assert_nak(reply: bytes | None, request: bytes, unique_id: bytes) -> None:
    assert reply is not None
    assert len(reply) <= len(request)
    parsed = open_reply(reply, AES_128_GCM_SIV, bytes(16))
    header = parsed.header
    assert header.mode == MODE_SERVER
    assert header.stratum == 0
    assert header.reference_id == b"NTSN"
    assert header.kiss_code == "NTSN"
    assert header.origin_ts == NtpHeader.decode(request).transmit_ts
    assert parsed.unique_id == unique_id
    assert parsed.outside_types == [EF_UNIQUE_IDENTIFIER]  # no authenticator, no cookie
    assert not parsed.authenticated


def test_undecryptable_cookie_gets_nak(codec: CookieCodec) -> None:
    other = CookieCodec(CookieKey(8, bytes(16)))
    c2s, _, cookie = session(other)
    unique_id = os.urandom(32)
    request = nts_request(AES_128_GCM_SIV, c2s, cookie, unique_id=unique_id)
    responder = NtpResponder(codec, seed=bytes(16))
    _assert_nak(respond(responder, request), request, unique_id)
    assert responder.counters.nak == 1


def test_tampered_cookie_gets_nak(codec: CookieCodec) -> None:
    c2s, _, cookie = session(codec)
    cookie = cookie[:-1] + bytes([cookie[-1] ^ 1])
    unique_id = os.urandom(32)
    request = nts_request(AES_128_GCM_SIV, c2s, cookie, unique_id=unique_id)
    _assert_nak(respond(NtpResponder(codec, seed=bytes(16)), request), request, unique_id)


def test_bad_authenticator_gets_nak(codec: CookieCodec) -> None:
    _, _, cookie = session(codec)
    unique_id = os.urandom(32)
    request = nts_request(AES_128_GCM_SIV, os.urandom(16), cookie, unique_id=unique_id)
    responder = NtpResponder(codec, seed=bytes(16))
    _assert_nak(respond(responder, request), request, unique_id)
    assert responder.counters.nak == 1


def test_modified_request_gets_nak(codec: CookieCodec) -> None:
    c2s, _, cookie = session(codec)
    unique_id = os.urandom(32)
    request = bytearray(nts_request(AES_128_GCM_SIV, c2s, cookie, unique_id=unique_id))
    request[2] ^= 1  # poll: covered by the authenticator
    _assert_nak(
        respond(NtpResponder(codec, seed=bytes(16)), bytes(request)), bytes(request), unique_id
    )


# --- NTS: cookies and placeholders ----------------------------------------------------------


@pytest.mark.parametrize("aead", [AES_128_GCM_SIV, AES_SIV_CMAC_256])
def test_authenticated_reply_cookies_inside_encryption(codec: CookieCodec, aead: int) -> None:
    c2s, s2c, cookie = session(codec, aead)
    unique_id = os.urandom(32)
    request = nts_request(aead, c2s, cookie, unique_id=unique_id, placeholders=[len(cookie)] * 2)
    responder = NtpResponder(codec, SYNCED, seed=bytes(16))
    reply = respond(responder, request)
    assert reply is not None and len(reply) <= len(request)
    parsed = open_reply(reply, aead, s2c)
    assert parsed.authenticated
    assert parsed.unique_id == unique_id
    assert parsed.outside_types == [EF_UNIQUE_IDENTIFIER, EF_NTS_AUTHENTICATOR]
    assert parsed.header.origin_ts == NtpHeader.decode(request).transmit_ts
    assert (parsed.header.leap, parsed.header.stratum) == (0, 2)
    assert len(parsed.cookies) == 3
    assert len(set(parsed.cookies)) == 3
    for new in parsed.cookies:
        assert len(new) == cookie_length(aead) == len(cookie)
        assert new != cookie
        assert codec.open(new) == (aead, c2s, s2c)
    assert responder.counters.nts == 1


def test_fields_after_the_authenticator_are_ignored(codec: CookieCodec) -> None:
    """RFC 8915 5.6: nothing after the authenticator counts, placeholders included."""
    c2s, s2c, cookie = session(codec)
    request = nts_request(AES_128_GCM_SIV, c2s, cookie) + b"".join(
        encode_extension_field(EF_NTS_COOKIE_PLACEHOLDER, bytes(len(cookie))) for _ in range(3)
    )
    reply = respond(NtpResponder(codec, seed=bytes(16)), request)
    assert reply is not None
    parsed = open_reply(reply, AES_128_GCM_SIV, s2c)
    assert parsed.authenticated
    assert len(parsed.cookies) == 1


@pytest.mark.parametrize(
    ("delta", "count", "expected"),
    [
        (0, 1, 2),  # equal length: one cookie each
        (0, 7, 8),
        (0, 10, 8),  # never more than eight
        (-4, 3, 1),  # shorter than the cookie: nothing extra
        (+4, 3, 1),  # unequal (longer): nothing extra either
    ],
)
def test_placeholder_rules(codec: CookieCodec, delta: int, count: int, expected: int) -> None:
    c2s, s2c, cookie = session(codec)
    request = nts_request(AES_128_GCM_SIV, c2s, cookie, placeholders=[len(cookie) + delta] * count)
    reply = respond(NtpResponder(codec, seed=bytes(16)), request)
    assert reply is not None
    assert len(open_reply(reply, AES_128_GCM_SIV, s2c).cookies) == expected


def test_encrypted_placeholders_count_too(codec: CookieCodec) -> None:
    c2s, s2c, cookie = session(codec)
    request = nts_request(
        AES_128_GCM_SIV,
        c2s,
        cookie,
        placeholders=[len(cookie)],
        encrypted_placeholders=[len(cookie)] * 2,
    )
    reply = respond(NtpResponder(codec, seed=bytes(16)), request)
    assert reply is not None
    assert len(open_reply(reply, AES_128_GCM_SIV, s2c).cookies) == 4


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aead=st.sampled_from([AES_128_GCM_SIV, AES_SIV_CMAC_256]),
    uid_len=st.integers(32, 300),
    placeholders=st.lists(st.integers(12, 120), max_size=10),
    encrypted=st.lists(st.integers(12, 120), max_size=4),
    siv_nonce_len=st.integers(1, 40),
    cookie_ok=st.booleans(),
    auth_ok=st.booleans(),
)
def test_no_amplification(
    aead: int,
    uid_len: int,
    placeholders: list[int],
    encrypted: list[int],
    siv_nonce_len: int,
    cookie_ok: bool,
    auth_ok: bool,
) -> None:
    codec = CookieCodec(CookieKey(1, bytes(16)))
    c2s, s2c, cookie = session(codec if cookie_ok else CookieCodec(CookieKey(2, bytes(16))), aead)
    if not auth_ok:
        c2s = os.urandom(len(c2s))
    # sometimes exactly the cookie's length, so cookies do get added
    placeholders = [len(cookie) if n % 3 == 0 else n for n in placeholders]
    encrypted = [len(cookie) if n % 2 == 0 else n for n in encrypted]
    nonce = os.urandom(12 if aead == AES_128_GCM_SIV else siv_nonce_len)
    request = nts_request(
        aead,
        c2s,
        cookie,
        unique_id=os.urandom(uid_len),
        placeholders=placeholders,
        encrypted_placeholders=encrypted,
        nonce=nonce,
    )
    responder = NtpResponder(codec, seed=bytes(16))
    reply = respond(responder, request)
    if reply is None:
        assert len(request) > 2048  # only what no legitimate client sends may go unanswered
        return
    assert len(reply) <= len(request)
    parsed = open_reply(reply, aead, s2c)
    if cookie_ok and auth_ok:
        assert parsed.authenticated
        # bodies are padded to a multiple of four: 65 zero bytes and 68 look alike
        earned = 1 + sum(pad4(n) == len(cookie) for n in placeholders + encrypted)
        assert 1 <= len(parsed.cookies) <= min(earned, MAX_COOKIES)
    else:
        assert parsed.header.kiss_code == "NTSN"


# --- key rotation -------------------------------------------------------------------------------

T0 = 1_700_000_001.0  # 60-second periods: T0 is one second into its period


def _exchange(codec_at_t0: CookieCodec, codec_now: CookieCodec) -> str:
    c2s, s2c, cookie = session(codec_at_t0)
    request, _ = fresh_request(Association(AES_128_GCM_SIV, c2s, s2c, [cookie]))
    reply = respond(NtpResponder(codec_now, seed=bytes(16)), request)
    assert reply is not None
    parsed = open_reply(reply, AES_128_GCM_SIV, s2c)
    if parsed.authenticated:
        assert all(codec_now.open(c) is not None for c in parsed.cookies)
        assert all(c[:4] == codec_now.current_id.to_bytes(4, "big") for c in parsed.cookies)
        return "ok"
    assert parsed.header.kiss_code == "NTSN"
    return "nak"


@pytest.mark.parametrize(
    ("keep_old", "periods_later", "expected"),
    [
        (2, 0, "ok"),
        (2, 1, "ok"),  # previous key
        (2, 2, "ok"),  # oldest kept
        (2, 3, "nak"),  # older than keep_old
        (0, 1, "nak"),
        (7, 7, "ok"),
        (7, 8, "nak"),
        (2, -1, "ok"),  # a fleet member one period behind already has the next key
    ],
)
def test_cookie_accepted_while_its_key_is_kept(
    keep_old: int, periods_later: int, expected: str
) -> None:
    store = MemoryKeyStore()
    ring = KeyRing(store, RotationPolicy(period=60, keep_old=keep_old))
    if periods_later < 0:
        # the lagging ring shares the store but looks at the clock one period earlier
        lagging = KeyRing(store, RotationPolicy(period=60, keep_old=keep_old))
        now = lagging.start(T0 + 60 * periods_later)
        assert _exchange(ring.start(T0), now) == expected
        return
    at_t0 = ring.start(T0)
    assert _exchange(at_t0, ring.start(T0 + 60 * periods_later)) == expected
