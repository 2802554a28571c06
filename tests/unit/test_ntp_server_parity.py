"""The responder's per-packet path against a reference reading of the rules (issue 10):
for any packet, NtpResponder drops, NAKs or answers exactly as a plain, field-by-field
parse written from RFC 7822 and RFC 8915 says it should, and the client's parser
(``locate_nts_fields``) rejects exactly the packets whose framing that parse rejects."""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gnomon.client.ntp import fresh_request
from gnomon.errors import AuthenticationError, NtpFormatError
from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS, Aead
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec, CookieKey
from gnomon.proto.nts.fields import locate_nts_fields
from gnomon.proto.nts.ntp_server import NtpResponder

CODEC = CookieCodec(CookieKey(3, bytes(range(16))))
OTHER = CookieCodec(CookieKey(3, bytes(16)))  # same key id, another secret
NOW = 1_700_000_000 * 10**9
UID, COOKIE, PLACEHOLDER, AUTH = 0x0104, 0x0204, 0x0304, 0x0404
_HEAD = struct.Struct("!HH")


def pad4(n: int) -> int:
    return (n + 3) & ~3


def reference_fields(data: bytes, start: int) -> list[tuple[int, int, int]] | None:
    """(type, start, end) of each field, or None: RFC 7822 7.5, read plainly."""
    fields = []
    position = start
    while position < len(data):
        remaining = len(data) - position
        if remaining >= 4:
            ef_type, length = _HEAD.unpack_from(data, position)
            if length >= 16 and length % 4 == 0 and length <= remaining:
                fields.append((ef_type, position, position + length))
                position += length
                continue
        if remaining in (20, 24) and start > 0:  # a legacy MAC (never inside encryption)
            return fields
        return None
    return fields


Located = tuple[tuple[int, int] | None, tuple[int, int] | None, tuple[int, int] | None, list[int]]


def reference_nts(data: bytes) -> Located | None:
    """(unique id, cookie, authenticator) as (start, end), placeholder lengths; None if the
    framing is broken or a unique id or cookie comes twice before the authenticator."""
    fields = reference_fields(data, 48)
    if fields is None:
        return None
    uid = cookie = auth = None
    placeholders = []
    for ef_type, at, end in fields:
        if ef_type == AUTH:
            auth = (at, end)
            break
        if ef_type == UID:
            if uid is not None:
                return None
            uid = (at, end)
        elif ef_type == COOKIE:
            if cookie is not None:
                return None
            cookie = (at, end)
        elif ef_type == PLACEHOLDER:
            placeholders.append(end - at)
    return uid, cookie, auth, placeholders


def reference(data: bytes, codec: CookieCodec, require_nts: bool) -> str:
    """ "drop", "nak", "plain" or "nts": what a server should do with ``data``."""
    if len(data) < 48 or data[0] & 7 != 3 or not 1 <= data[0] >> 3 & 7 <= 4:
        return "drop"
    located = reference_nts(data)
    if located is None:
        return "drop"
    uid, cookie, auth, _ = located
    if auth is None:
        return "drop" if uid or cookie or require_nts else "plain"
    if uid is None or uid[1] - uid[0] - 4 < 32 or cookie is None:
        return "drop"
    keys = codec.open(data[cookie[0] + 4 : cookie[1]])
    if keys is None:
        return "nak"
    aead_id, c2s, _ = keys
    algorithm = ALGORITHMS[aead_id]
    body = data[auth[0] + 4 : auth[1]]
    nonce_len, ciphertext_len = _HEAD.unpack_from(body)
    shortest = 12 if aead_id == AES_128_GCM_SIV else 1
    if (
        not shortest <= nonce_len <= algorithm.max_nonce_length
        or ciphertext_len < 16
        or 4 + max(pad4(nonce_len), min(16, algorithm.max_nonce_length)) + pad4(ciphertext_len)
        > len(body)
    ):
        return "nak"
    nonce = body[4 : 4 + nonce_len]
    ciphertext = body[4 + pad4(nonce_len) : 4 + pad4(nonce_len) + ciphertext_len]
    try:
        plaintext = Aead(aead_id, c2s).decrypt(nonce, ciphertext, data[: auth[0]])
    except AuthenticationError:
        return "nak"
    if reference_fields(plaintext, 0) is None:
        return "nak"
    smallest_reply = 48 + (uid[1] - uid[0]) + 8 + algorithm.nonce_length + 16
    return "drop" if smallest_reply > len(data) else "nts"


def outcome(reply: bytes | None) -> str:
    if reply is None:
        return "drop"
    if reply[1] == 0 and reply[12:16] == b"NTSN":
        return "nak"
    return "plain" if len(reply) == 48 else "nts"


def request(aead: int, placeholders: int, foreign: bool) -> bytes:
    length = ALGORITHMS[aead].key_length
    c2s, s2c = os.urandom(length), os.urandom(length)
    codec = OTHER if foreign else CODEC
    jar = [codec.seal(aead, c2s, s2c, os.urandom(RANDOM_LEN)) for _ in range(8 - placeholders)]
    return fresh_request(Association(aead, c2s, s2c, jar))[0]


def field(ef_type: int, body_len: int) -> bytes:
    return _HEAD.pack(ef_type, 4 + body_len) + os.urandom(body_len)


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("append"), st.sampled_from([1, 2, 3, 4, 12, 16, 20, 24, 28])),
    st.tuples(
        st.just("insert"),
        st.integers(0, 8),
        st.sampled_from([UID, COOKIE, PLACEHOLDER, AUTH, 0x7777]),
        st.sampled_from([0, 4, 12, 16, 28, 32, 64, 100]),
    ),
    st.tuples(st.just("length"), st.integers(0, 8), st.integers(0, 600)),
)


def mutate(packet: bytes, mutation: tuple[object, ...]) -> bytes:
    kind = mutation[0]
    if not packet:
        return packet
    if kind == "truncate":
        return packet[: int(mutation[1])]  # type: ignore[call-overload]
    if kind == "flip":
        at = int(mutation[1]) % len(packet)  # type: ignore[call-overload]
        return packet[:at] + bytes([packet[at] ^ int(mutation[2])]) + packet[at + 1 :]  # type: ignore[call-overload]
    if kind == "append":
        return packet + os.urandom(int(mutation[1]))  # type: ignore[call-overload]
    boundaries = [48]
    fields = reference_fields(packet, 48) or []
    boundaries += [end for _, _, end in fields]
    at = boundaries[int(mutation[1]) % len(boundaries)]  # type: ignore[call-overload]
    if kind == "insert":
        new = field(int(mutation[2]), int(mutation[3]))  # type: ignore[call-overload]
        return packet[:at] + new + packet[at:]
    # "length": rewrite the length of the field starting at ``at``, if any
    if at + 4 > len(packet):
        return packet
    return packet[: at + 2] + struct.pack("!H", int(mutation[2])) + packet[at + 4 :]  # type: ignore[call-overload]


def check(packet: bytes, require_nts: bool) -> None:
    responder = NtpResponder(CODEC, seed=os.urandom(RANDOM_LEN), require_nts=require_nts)
    reply = responder.respond(packet, NOW, lambda: NOW + 1000)
    expected = reference(packet, CODEC, require_nts)
    assert outcome(reply) == expected, (expected, packet.hex())
    assert reply is None or len(reply) <= len(packet)
    if len(packet) >= 48:  # the client's parser: the same framing and NTS field rules
        expected_fields = reference_nts(packet)
        try:
            fields = locate_nts_fields(packet)
        except NtpFormatError:
            assert expected_fields is None
        else:
            assert expected_fields is not None
            uid, cookie, auth, placeholders = expected_fields
            assert fields.unique_id == (packet[uid[0] + 4 : uid[1]] if uid else None)
            assert fields.cookie == (packet[cookie[0] + 4 : cookie[1]] if cookie else None)
            assert fields.authenticator_offset == (auth[0] if auth else None)
            assert fields.authenticator_end == (auth[1] if auth else None)
            assert list(fields.placeholder_lengths) == [n - 4 for n in placeholders]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aead=st.sampled_from([AES_128_GCM_SIV, AES_SIV_CMAC_256]),
    placeholders=st.integers(0, 7),
    foreign=st.booleans(),
    mutations=st.lists(MUTATION, max_size=3),
    require_nts=st.booleans(),
)
def test_responder_rejects_exactly_what_the_reference_rejects(
    aead: int,
    placeholders: int,
    foreign: bool,
    mutations: list[tuple[object, ...]],
    require_nts: bool,
) -> None:
    packet = request(aead, placeholders, foreign)
    for mutation in mutations:
        packet = mutate(packet, mutation)
    check(packet, require_nts)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), first=st.sampled_from([0x23, 0x1B, 0x24, 0xE3]))
def test_random_packets_agree_with_the_reference(data: bytes, first: int) -> None:
    check(bytes([first]) + data, False)


def test_the_mutations_reach_every_outcome() -> None:
    """The property above is not vacuous: its packets hit each of the outcomes."""
    seen = set()
    for aead in (AES_128_GCM_SIV, AES_SIV_CMAC_256):
        good = request(aead, 2, False)
        seen.add(reference(good, CODEC, False))
        seen.add(reference(request(aead, 0, True), CODEC, False))
        seen.add(reference(good[:48], CODEC, False))
        seen.add(reference(good[:-3], CODEC, False))
        seen.add(reference(good[:-1] + bytes([good[-1] ^ 1]), CODEC, False))
    assert seen == {"drop", "nak", "plain", "nts"}
