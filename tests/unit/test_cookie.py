"""The server's cookie format (proto/nts/cookie.py): round trips, what a cookie shows to an
observer (issue 16: nothing about when it was made), the former format's cookies, and the
randomness the caller must supply."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from hashlib import blake2b

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.client.ntp import fresh_request
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.cookie import (
    RANDOM_LEN,
    CookieCodec,
    CookieKey,
    cookie_length,
)
from gnomon.proto.nts.ke import (
    MAX_COOKIES,
    Record,
    RecordStream,
    RecordType,
    encode_records,
    u16_list,
)
from gnomon.proto.nts.ke_server import KeResponder
from gnomon.proto.nts.ntp_server import NtpResponder

KEY = CookieKey(0x01020304, bytes(range(16)))
MINUTE = 60 * 10**9
T0 = 1_700_000_000 * 10**9


def keys_for(aead: int) -> tuple[bytes, bytes]:
    length = ALGORITHMS[aead].key_length
    return os.urandom(length), os.urandom(length)


def legacy_cookie(key: CookieKey, unix_ns: int, aead: int, c2s: bytes, s2c: bytes) -> bytes:
    """A cookie in the format before issue 16, built from its specification:
    key id (4) || epoch (2, the minute of sealing) || N (12) || AES-GCM(K_epoch, N, P, head)."""
    epoch = (unix_ns // MINUTE & 0xFFFF).to_bytes(2, "big")
    head = key.id.to_bytes(4, "big") + epoch
    gcm_key = blake2b(epoch, key=key.secret, digest_size=16, person=b"gnomon-ck-enc").digest()
    nonce = os.urandom(12)
    plain = aead.to_bytes(2, "big") + c2s + s2c
    return head + nonce + AESGCM(gcm_key).encrypt(nonce, plain, head)


def equal_pairs(cookies: Sequence[bytes]) -> list[int]:
    """For each position after the key id: how many pairs of cookies hold the same byte."""
    pairs = []
    for position in range(4, len(cookies[0])):
        counts: dict[int, int] = {}
        for cookie in cookies:
            counts[cookie[position]] = counts.get(cookie[position], 0) + 1
        pairs.append(sum(n * (n - 1) // 2 for n in counts.values()))
    return pairs


def beyond_chance(cookies: Sequence[bytes]) -> bool:
    """Whether some position holds equal bytes in more pairs of cookies than uniform random
    bytes would (probability below 1e-12 per position: about Poisson with mean pairs / 256),
    or all positions together do (mean + 7 standard deviations)."""
    pairs = equal_pairs(cookies)
    mean = len(cookies) * (len(cookies) - 1) / 2 / 256
    k, tail = 0, math.exp(-mean)  # tail: P(X = k), summed from k up: a bound on P(X >= k)
    while tail * 2 > 1e-12:
        k += 1
        tail *= mean / k
    total = mean * len(pairs)
    return max(pairs) >= k or sum(pairs) > total + 7 * math.sqrt(total) + 7


def fake_exporter(label: bytes, length: int, context: bytes) -> bytes:
    return hashlib.sha512(label + b"|" + context).digest()[:length]


def ke_cookies(responder: KeResponder, unix_ns: int, randomness: bytes) -> list[bytes]:
    request = encode_records(
        [
            Record(RecordType.NEXT_PROTOCOL, u16_list([0]), True),
            Record(RecordType.AEAD_ALGORITHM, u16_list([AES_128_GCM_SIV]), True),
            Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER),
            Record(RecordType.END_OF_MESSAGE, critical=True),
        ]
    )
    records = RecordStream(1 << 16).feed(request)
    assert records is not None
    response = responder.respond(records, fake_exporter, unix_ns=unix_ns, randomness=randomness)
    parsed = RecordStream(1 << 16).feed(response)
    assert parsed is not None
    return [r.body for r in parsed if r.type == RecordType.NEW_COOKIE]


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize(("aead", "length"), [(AES_128_GCM_SIV, 68), (AES_SIV_CMAC_256, 100)])
def test_cookies_open_to_what_was_sealed(aead: int, length: int) -> None:
    codec = CookieCodec(KEY)
    c2s, s2c = keys_for(aead)
    cookies = codec.seal_many(aead, c2s, s2c, MAX_COOKIES, os.urandom(RANDOM_LEN))
    assert len(set(cookies)) == MAX_COOKIES
    for cookie in cookies:
        assert len(cookie) == length == cookie_length(aead)
        assert cookie[:4] == KEY.id.to_bytes(4, "big")
        assert codec.open(cookie) == (aead, c2s, s2c)
        assert codec.open(cookie) == (aead, c2s, s2c)  # the GCM key is cached now


def test_cookies_open_under_an_accepted_key_only() -> None:
    old = CookieKey(6, os.urandom(16))
    c2s, s2c = keys_for(AES_128_GCM_SIV)
    cookie = CookieCodec(old).seal(AES_128_GCM_SIV, c2s, s2c, os.urandom(RANDOM_LEN))
    assert CookieCodec(KEY, [old]).open(cookie) == (AES_128_GCM_SIV, c2s, s2c)
    assert CookieCodec(KEY).open(cookie) is None  # unknown key id
    assert CookieCodec(CookieKey(6, os.urandom(16))).open(cookie) is None  # same id, other secret


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 67), flip=st.integers(1, 255))
def test_any_changed_byte_makes_a_cookie_useless(position: int, flip: int) -> None:
    codec = CookieCodec(KEY)
    c2s, s2c = keys_for(AES_128_GCM_SIV)
    cookie = bytearray(codec.seal(AES_128_GCM_SIV, c2s, s2c, os.urandom(RANDOM_LEN)))
    cookie[position] ^= flip
    assert codec.open(bytes(cookie)) is None


def test_short_and_empty_cookies_are_useless() -> None:
    codec = CookieCodec(KEY)
    cookie = codec.seal(AES_128_GCM_SIV, *keys_for(AES_128_GCM_SIV), os.urandom(RANDOM_LEN))
    for length in range(len(cookie)):
        assert codec.open(cookie[:length]) is None


def test_sealing_takes_the_callers_randomness() -> None:
    """Nothing in proto/ reads a random source: the same input seals the same cookies (and
    nothing else leaks: that is the documented misuse behaviour), other input others."""
    codec = CookieCodec(KEY)
    c2s, s2c = keys_for(AES_SIV_CMAC_256)
    r = os.urandom(RANDOM_LEN)
    first = codec.seal_many(AES_SIV_CMAC_256, c2s, s2c, MAX_COOKIES, r)
    assert CookieCodec(KEY).seal_many(AES_SIV_CMAC_256, c2s, s2c, MAX_COOKIES, r) == first
    other = codec.seal_many(AES_SIV_CMAC_256, c2s, s2c, MAX_COOKIES, os.urandom(RANDOM_LEN))
    assert not set(first) & set(other)
    # the same r with another plaintext: unrelated cookies
    other_keys = codec.seal_many(AES_SIV_CMAC_256, *keys_for(AES_SIV_CMAC_256), MAX_COOKIES, r)
    assert not beyond_chance([first[0], other_keys[0]])
    with pytest.raises(ValueError, match="random bytes"):
        codec.seal(AES_SIV_CMAC_256, c2s, s2c, b"short")


def test_a_reply_seals_its_nonce_and_cookies_from_one_unique_input() -> None:
    codec = CookieCodec(KEY)
    c2s, s2c = keys_for(AES_128_GCM_SIV)
    plain = AES_128_GCM_SIV.to_bytes(2, "big") + c2s + s2c
    unique = os.urandom(16)
    for count in range(MAX_COOKIES + 1):  # more than one BLAKE2b block from 4 cookies on
        nonce, fields = codec.seal_reply(plain, count, 16, unique)
        assert (nonce, fields) == CookieCodec(KEY).seal_reply(plain, count, 16, unique)
        assert len(nonce) == 16
        step = 4 + cookie_length(AES_128_GCM_SIV)
        assert len(fields) == count * step
        cookies = [fields[at + 4 : at + step] for at in range(0, len(fields), step)]
        assert len(set(cookies)) == count
        assert all(codec.open(c) == (AES_128_GCM_SIV, c2s, s2c) for c in cookies)


# --- what an observer sees (issue 16) -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    minutes=st.lists(st.integers(0, 10**6), min_size=16, max_size=16, unique=True),
    randomness=st.lists(
        st.binary(min_size=RANDOM_LEN, max_size=RANDOM_LEN), min_size=16, max_size=16, unique=True
    ),
    key_id=st.integers(0, (1 << 32) - 1),
)
def test_cookies_share_no_byte_after_the_key_id_beyond_chance(
    minutes: list[int], randomness: list[bytes], key_id: int
) -> None:
    """Cookies of NTS-KE responses made in different minutes, and the 8 cookies of one
    response, look independent after the key id: no position holds equal bytes more often
    than uniform random bytes would. (Same session keys each time, the worst case.)"""
    codec = CookieCodec(CookieKey(key_id, bytes(16)))
    responder = KeResponder(lambda _unix_ns: codec)
    responses = [
        ke_cookies(responder, T0 + minute * MINUTE + minute % 7 * 10**9, r)
        for minute, r in zip(minutes, randomness, strict=True)
    ]
    for cookies in responses:
        assert len(cookies) == MAX_COOKIES
        assert all(c[:4] == key_id.to_bytes(4, "big") for c in cookies)
        assert not beyond_chance(cookies)
    across_minutes = [cookies[n % MAX_COOKIES] for n, cookies in enumerate(responses)]
    assert not beyond_chance(across_minutes)


def test_the_statistic_sees_the_former_formats_minute() -> None:
    """The check above is not vacuous: it flags the former format, whose minute is in
    clear, for the cookies of one response and for 16 minutes of one day alike."""
    c2s, s2c = keys_for(AES_128_GCM_SIV)
    one_response = [legacy_cookie(KEY, T0, AES_128_GCM_SIV, c2s, s2c) for _ in range(8)]
    assert beyond_chance(one_response)
    minutes = [
        legacy_cookie(KEY, T0 + n * 61 * MINUTE, AES_128_GCM_SIV, c2s, s2c) for n in range(16)
    ]
    assert beyond_chance(minutes)


# --- the former format ----------------------------------------------------------------------


@pytest.mark.parametrize("aead", [AES_128_GCM_SIV, AES_SIV_CMAC_256])
def test_former_format_cookies_open_while_their_key_is_accepted(aead: int) -> None:
    c2s, s2c = keys_for(aead)
    previous = CookieKey(KEY.id - 1, os.urandom(16))
    for key, minute in [(KEY, 0), (KEY, 1439), (previous, 77)]:
        cookie = legacy_cookie(key, T0 + minute * MINUTE, aead, c2s, s2c)
        codec = CookieCodec(KEY, [previous])
        assert codec.open(cookie) == (aead, c2s, s2c)
        assert codec.open(cookie) == (aead, c2s, s2c)  # its minute's key is cached now
        # Once the key is no longer accepted, nor in force, the cookie is useless (NAK).
        later = CookieCodec(CookieKey(KEY.id + 1, os.urandom(16)))
        assert later.open(cookie) is None
        tampered = cookie[:-1] + bytes([cookie[-1] ^ 1])
        assert codec.open(tampered) is None


def test_forged_cookies_under_a_known_key_are_useless() -> None:
    codec = CookieCodec(KEY)
    prefix = KEY.id.to_bytes(4, "big")
    for _ in range(200):
        assert codec.open(prefix + os.urandom(64)) is None


def test_a_client_holding_former_format_cookies_is_answered_and_upgraded() -> None:
    """Across the upgrade: gnomon's client spends a cookie of the former format, the
    responder answers it and hands back cookies of the current one."""
    c2s, s2c = keys_for(AES_128_GCM_SIV)
    jar = [legacy_cookie(KEY, T0 - n * MINUTE, AES_128_GCM_SIV, c2s, s2c) for n in range(8)]
    client = Association(AES_128_GCM_SIV, c2s, s2c, jar)
    codec = CookieCodec(KEY)
    responder = NtpResponder(codec, seed=os.urandom(RANDOM_LEN))
    for _ in range(3):
        request, pending = fresh_request(client)
        reply = responder.respond(request, T0, lambda: T0 + 1000)
        assert reply is not None
        sample = client.process_response(reply, pending, sent_ns=T0, received_ns=T0 + 2000)
        assert sample.new_cookies == 1
    assert responder.counters.nts == 3 and responder.counters.nak == 0
    fresh = client.cookies[-3:]
    assert all(codec.open(c) == (AES_128_GCM_SIV, c2s, s2c) for c in fresh)
