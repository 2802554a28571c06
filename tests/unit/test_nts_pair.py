"""gnomon's NTS client state (``Association``) against gnomon's responders, in memory
(issue 10): cookies from KeResponder, NTP exchanges with NtpResponder, through key
rotation, key expiry and NAKs. No sockets, no clocks: time is passed in."""

from __future__ import annotations

import hashlib
import os

import pytest

from gnomon.client.ntp import fresh_request
from gnomon.errors import AuthenticationError, NtsNakError
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256
from gnomon.proto.nts.client import Association, KeExchange, keys_from_response
from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec, CookieKey
from gnomon.proto.nts.ke import MAX_COOKIES, RecordStream
from gnomon.proto.nts.ke_server import KeResponder
from gnomon.proto.nts.ntp_server import NtpResponder

T0 = 1_700_000_000 * 10**9
DAY = 86_400 * 10**9
KEY1, KEY2, KEY3 = (CookieKey(n, hashlib.sha256(bytes([n])).digest()[:16]) for n in (1, 2, 3))


def exporter(label: bytes, length: int, context: bytes) -> bytes:
    """Both ends' TLS exporter (the same TLS session)."""
    return hashlib.sha512(label + b"|" + context).digest()[:length]


def key_exchange(codec: CookieCodec, aead: int, unix_ns: int) -> Association:
    """NTS-KE between gnomon's client state and KeResponder, bytes in memory."""
    client = KeExchange(aeads=(aead,))
    records = RecordStream(1 << 16).feed(client.request())
    assert records is not None
    server = KeResponder(lambda _now: codec, aeads=(AES_128_GCM_SIV, AES_SIV_CMAC_256))
    response = client.receive_data(
        server.respond(records, exporter, unix_ns=unix_ns, randomness=os.urandom(RANDOM_LEN))
    )
    assert response is not None
    c2s, s2c = keys_from_response(response, exporter)
    return Association(response.aead, c2s, s2c, response.cookies)


def exchange(client: Association, server: NtpResponder, unix_ns: int) -> int:
    """One NTP exchange; the new cookies the client took."""
    request, pending = fresh_request(client)
    reply = server.respond(request, unix_ns, lambda: unix_ns + 20_000)
    assert reply is not None and len(reply) <= len(request)
    sample = client.process_response(reply, pending, sent_ns=unix_ns - 1000, received_ns=unix_ns)
    assert -100_000 < sample.offset_ns < 100_000
    return sample.new_cookies


def key_id(cookie: bytes) -> int:
    return int.from_bytes(cookie[:4], "big")


@pytest.mark.parametrize("aead", [AES_128_GCM_SIV, AES_SIV_CMAC_256])
def test_cookies_are_spent_and_refilled(aead: int) -> None:
    codec = CookieCodec(KEY1)
    client = key_exchange(codec, aead, T0)
    assert client.cookie_count == MAX_COOKIES
    server = NtpResponder(codec, seed=os.urandom(RANDOM_LEN))
    seen = set(client.cookies)
    for n in range(20):
        assert exchange(client, server, T0 + n * 10**9) == 1
        assert client.cookie_count == MAX_COOKIES
        seen.update(client.cookies)
    assert len(seen) == MAX_COOKIES + 20  # never the same cookie twice
    assert server.counters.nts == 20 and server.counters.nak == 0


def test_a_lost_reply_is_made_up_with_placeholders() -> None:
    codec = CookieCodec(KEY1)
    client = key_exchange(codec, AES_128_GCM_SIV, T0)
    server = NtpResponder(codec, seed=os.urandom(RANDOM_LEN))
    for _ in range(3):
        fresh_request(client)  # sent, and the replies never came
    assert client.cookie_count == MAX_COOKIES - 3
    assert exchange(client, server, T0) == 4  # one for the cookie spent, three placeholders
    assert client.cookie_count == MAX_COOKIES


def test_rotation_keeps_old_cookies_working_and_hands_out_new_ones() -> None:
    client = key_exchange(CookieCodec(KEY1), AES_SIV_CMAC_256, T0)
    server = NtpResponder(CookieCodec(KEY2, [KEY1]), seed=os.urandom(RANDOM_LEN))
    for n in range(MAX_COOKIES):
        assert exchange(client, server, T0 + DAY + n) == 1
    assert {key_id(c) for c in client.cookies} == {KEY2.id}
    assert server.counters.nak == 0


def test_an_expired_key_gets_a_nak_and_a_new_key_exchange_recovers() -> None:
    client = key_exchange(CookieCodec(KEY1), AES_128_GCM_SIV, T0)
    expired = CookieCodec(KEY3, [KEY2])  # KEY1 no longer accepted
    server = NtpResponder(expired, seed=os.urandom(RANDOM_LEN))
    request, pending = fresh_request(client)
    reply = server.respond(request, T0 + 2 * DAY, lambda: T0 + 2 * DAY + 1)
    assert reply is not None
    with pytest.raises(NtsNakError):
        client.process_response(reply, pending, sent_ns=T0 + 2 * DAY, received_ns=T0 + 2 * DAY)
    assert server.counters.nak == 1
    assert client.cookie_count == MAX_COOKIES - 1  # the NAK costs the cookie spent only
    fresh = key_exchange(expired, AES_128_GCM_SIV, T0 + 2 * DAY)
    assert exchange(fresh, server, T0 + 2 * DAY) == 1


def test_a_server_holding_other_keys_naks_and_a_forged_reply_is_refused() -> None:
    client = key_exchange(CookieCodec(KEY1), AES_128_GCM_SIV, T0)
    stranger = NtpResponder(CookieCodec(CookieKey(KEY1.id, bytes(16))), seed=bytes(16))
    request, pending = fresh_request(client)
    reply = stranger.respond(request, T0, lambda: T0)
    assert reply is not None
    with pytest.raises(NtsNakError):
        client.process_response(reply, pending, sent_ns=T0, received_ns=T0)
    # a reply authenticated with other keys (a server that is not this session's)
    impostor = Association(AES_128_GCM_SIV, os.urandom(16), os.urandom(16), client.cookies)
    request, pending = fresh_request(client)
    genuine = NtpResponder(CookieCodec(KEY1), seed=bytes(16))
    reply = genuine.respond(request, T0, lambda: T0)
    assert reply is not None
    with pytest.raises(AuthenticationError):
        impostor.process_response(reply, pending, sent_ns=T0, received_ns=T0)
