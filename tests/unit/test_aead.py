"""AEAD algorithms and NTS key derivation (gnomon.proto.nts.aead).

The AES-SIV vectors are RFC 5297 appendix A, the AES-128-GCM-SIV vectors RFC
8452 appendix C.1. A small reference S2V/SIV written here from RFC 5297
section 2 is checked against both RFC 5297 vectors, then used to pin down
how :class:`Aead` lays out its associated-data vector (RFC 8915 section 5.6:
the packet first, the nonce last).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV, AESSIV

from gnomon.errors import AuthenticationError
from gnomon.proto.nts.aead import (
    AES_128_GCM_SIV,
    AES_SIV_CMAC_256,
    AES_SIV_CMAC_384,
    AES_SIV_CMAC_512,
    ALGORITHMS,
    C2S,
    EXPORTER_LABEL,
    S2C,
    Aead,
    derive_keys,
    exporter_context,
)
from gnomon.proto.nts.client import keys_from_response
from gnomon.proto.nts.ke import KeResponse


def h(text: str) -> bytes:
    """Hex as RFC test vectors print it (blanks and line breaks allowed)."""
    return bytes.fromhex("".join(text.split()))


# --- RFC 5297 appendix A ------------------------------------------------------

A1_KEY = h("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff")
A1_AD = h("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627")
A1_PLAINTEXT = h("11223344 55667788 99aabbcc ddee")
A1_OUTPUT = h(
    """85632d07 c6e8f37f 950acd32 0a2ecc93
       40c02b96 90c4dc04 daef7f6a fe5c"""
)
A1_CMAC_ZERO = h("0e04dfaf c1efbf04 01405828 59bf073a")

A2_KEY = h("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f")
A2_AD1 = h(
    """00112233 44556677 8899aabb ccddeeff
       deaddada deaddada ffeeddcc bbaa9988
       77665544 33221100"""
)
A2_AD2 = h("10203040 50607080 90a0")
A2_NONCE = h("09f91102 9d74e35b d84156c5 635688c0")
A2_PLAINTEXT = h(
    """74686973 20697320 736f6d65 20706c61
       696e7465 78742074 6f20656e 63727970
       74207573 696e6720 5349562d 414553"""
)
A2_OUTPUT = h(
    """7bdb6e3b 432667eb 06f4d14b ff2fbd0f
       cb900f2f ddbe4043 26601965 c889bf17
       dba77ceb 094fa663 b7a3f748 ba8af829
       ea64ad54 4a272e9c 485b62a3 fd5c0d"""
)


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _dbl(block: bytes) -> bytes:
    value = int.from_bytes(block) << 1
    if value >> 128:
        value ^= 0x87
    return (value & ((1 << 128) - 1)).to_bytes(16)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def reference_siv_encrypt(key: bytes, plaintext: bytes, components: list[bytes]) -> bytes:
    """RFC 5297 section 2.4/2.6, straight from the text: IV || CTR(K2, Q, P)."""
    k1, k2 = key[: len(key) // 2], key[len(key) // 2 :]
    d = _cmac(k1, bytes(16))
    for component in components:
        d = _xor(_dbl(d), _cmac(k1, component))
    if len(plaintext) >= 16:
        t = plaintext[:-16] + _xor(plaintext[-16:], d)
    else:
        padded = plaintext + b"\x80" + bytes(15 - len(plaintext))
        t = _xor(_dbl(d), padded)
    iv = _cmac(k1, t)
    q = (int.from_bytes(iv) & ~((1 << 63) | (1 << 31))).to_bytes(16)
    encryptor = Cipher(algorithms.AES(k2), modes.CTR(q)).encryptor()
    return iv + encryptor.update(plaintext) + encryptor.finalize()


def test_reference_siv_matches_rfc5297_a1() -> None:
    assert _cmac(A1_KEY[:16], bytes(16)) == A1_CMAC_ZERO
    assert reference_siv_encrypt(A1_KEY, A1_PLAINTEXT, [A1_AD]) == A1_OUTPUT


def test_reference_siv_matches_rfc5297_a2() -> None:
    assert reference_siv_encrypt(A2_KEY, A2_PLAINTEXT, [A2_AD1, A2_AD2, A2_NONCE]) == A2_OUTPUT


def test_cryptography_aessiv_rfc5297_a1() -> None:
    siv = AESSIV(A1_KEY)
    assert siv.encrypt(A1_PLAINTEXT, [A1_AD]) == A1_OUTPUT
    assert siv.decrypt(A1_OUTPUT, [A1_AD]) == A1_PLAINTEXT


def test_cryptography_aessiv_rfc5297_a2_nonce_is_the_last_component() -> None:
    siv = AESSIV(A2_KEY)
    assert siv.encrypt(A2_PLAINTEXT, [A2_AD1, A2_AD2, A2_NONCE]) == A2_OUTPUT
    assert siv.decrypt(A2_OUTPUT, [A2_AD1, A2_AD2, A2_NONCE]) == A2_PLAINTEXT
    # Any other order is a different S2V input and a different output.
    assert siv.encrypt(A2_PLAINTEXT, [A2_NONCE, A2_AD1, A2_AD2]) != A2_OUTPUT
    assert siv.encrypt(A2_PLAINTEXT, [A2_AD1, A2_AD2]) != A2_OUTPUT


def test_aead15_with_rfc5297_a2_key_puts_packet_first_and_nonce_last() -> None:
    """Aead(15) is AES-SIV with the vector [associated data, nonce]."""
    aead = Aead(AES_SIV_CMAC_256, A2_KEY)
    sealed = aead.encrypt(A2_NONCE, A2_PLAINTEXT, A2_AD1)
    assert sealed == reference_siv_encrypt(A2_KEY, A2_PLAINTEXT, [A2_AD1, A2_NONCE])
    assert sealed != reference_siv_encrypt(A2_KEY, A2_PLAINTEXT, [A2_NONCE, A2_AD1])
    assert sealed == AESSIV(A2_KEY).encrypt(A2_PLAINTEXT, [A2_AD1, A2_NONCE])
    assert aead.decrypt(A2_NONCE, sealed, A2_AD1) == A2_PLAINTEXT
    # Output layout: the 16-byte SIV first, then a ciphertext as long as the plaintext.
    assert len(sealed) == 16 + len(A2_PLAINTEXT)


def test_aead15_with_rfc5297_a1_key_and_empty_plaintext() -> None:
    """An NTS request encrypts nothing: the SIV alone authenticates the packet."""
    aead = Aead(AES_SIV_CMAC_256, A1_KEY)
    sealed = aead.encrypt(b"\x01" * 16, b"", A1_AD)
    assert sealed == reference_siv_encrypt(A1_KEY, b"", [A1_AD, b"\x01" * 16])
    assert len(sealed) == 16
    assert aead.decrypt(b"\x01" * 16, sealed, A1_AD) == b""


@pytest.mark.parametrize(
    ("aead_id", "key_length"),
    [(AES_SIV_CMAC_256, 32), (AES_SIV_CMAC_384, 48), (AES_SIV_CMAC_512, 64)],
)
def test_siv_family_matches_reference(aead_id: int, key_length: int) -> None:
    key = bytes(range(key_length))
    nonce = bytes(range(100, 116))
    packet = bytes(range(200)) * 2
    plaintext = b"\x02\x04\x00\x14" + b"cookie!!" * 2
    sealed = Aead(aead_id, key).encrypt(nonce, plaintext, packet)
    assert sealed == reference_siv_encrypt(key, plaintext, [packet, nonce])


# --- RFC 8452 appendix C.1: AEAD_AES_128_GCM_SIV --------------------------------

GCM_SIV_VECTORS = [
    # (key, nonce, aad, plaintext, result): C.1 cases 1, 2, 14 and 18
    (
        "01000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "",
        "dc20e2d83f25705bb49e439eca56de25",
    ),
    (
        "01000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "0100000000000000",
        "b5d839330ac7b786578782fff6013b815b287c22493a364c",
    ),
    (
        "01000000000000000000000000000000",
        "030000000000000000000000",
        "010000000000000000000000",
        "02000000",
        "a8fe3e8707eb1f84fb28f8cb73de8e99e2f48a14",
    ),
    (
        "36864200e0eaf5284d884a0e77d31646",
        "bae8e37fc83441b16034566b",
        "46bb91c3c5",
        "7a806c",
        "af60eb711bd85bc1e4d3e0a462e074eea428a8",
    ),
]


@pytest.mark.parametrize(("key", "nonce", "aad", "plaintext", "result"), GCM_SIV_VECTORS)
def test_aead30_rfc8452_vectors(
    key: str, nonce: str, aad: str, plaintext: str, result: str
) -> None:
    aead = Aead(AES_128_GCM_SIV, h(key))
    assert aead.encrypt(h(nonce), h(plaintext), h(aad)) == h(result)
    assert aead.decrypt(h(nonce), h(result), h(aad)) == h(plaintext)
    # and the same through cryptography directly (ciphertext || tag)
    assert AESGCMSIV(h(key)).encrypt(h(nonce), h(plaintext), h(aad)) == h(result)


# --- tampering ------------------------------------------------------------------


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    return bytes(changed)


@pytest.mark.parametrize("aead_id", sorted(ALGORITHMS))
def test_tampering_raises_authentication_error(aead_id: int) -> None:
    algorithm = ALGORITHMS[aead_id]
    aead = Aead(aead_id, bytes(range(algorithm.key_length)))
    nonce = bytes(range(7, 7 + algorithm.nonce_length))
    associated = b"the NTP packet up to the authenticator" * 3
    plaintext = b"encrypted extension fields"
    sealed = aead.encrypt(nonce, plaintext, associated)
    assert aead.decrypt(nonce, sealed, associated) == plaintext
    for index in range(len(sealed)):
        for bit in (0, 7):
            with pytest.raises(AuthenticationError):
                aead.decrypt(nonce, _flip(sealed, index, bit), associated)
    for index in (0, len(associated) // 2, len(associated) - 1):
        with pytest.raises(AuthenticationError):
            aead.decrypt(nonce, sealed, _flip(associated, index))
    for index in range(len(nonce)):
        with pytest.raises(AuthenticationError):
            aead.decrypt(_flip(nonce, index), sealed, associated)
    with pytest.raises(AuthenticationError):
        aead.decrypt(nonce, sealed[:-1], associated)
    with pytest.raises(AuthenticationError):
        aead.decrypt(nonce, sealed + b"\x00", associated)
    with pytest.raises(AuthenticationError):
        aead.decrypt(nonce, sealed, associated + b"\x00")
    other = Aead(aead_id, bytes(reversed(range(algorithm.key_length))))
    with pytest.raises(AuthenticationError):
        other.decrypt(nonce, sealed, associated)


def test_aead15_decrypt_of_too_short_ciphertext_is_an_authentication_error() -> None:
    aead = Aead(AES_SIV_CMAC_256, bytes(32))
    with pytest.raises(AuthenticationError):
        aead.decrypt(bytes(16), bytes(15), b"packet")


@pytest.mark.parametrize(
    ("aead_id", "bad_length"),
    [
        (AES_SIV_CMAC_256, 16),
        (AES_SIV_CMAC_256, 31),
        (AES_SIV_CMAC_256, 64),
        (AES_SIV_CMAC_384, 32),
        (AES_SIV_CMAC_512, 48),
        (AES_128_GCM_SIV, 32),
        (AES_128_GCM_SIV, 15),
        (AES_128_GCM_SIV, 0),
    ],
)
def test_wrong_key_length_raises_value_error(aead_id: int, bad_length: int) -> None:
    with pytest.raises(ValueError, match="key"):
        Aead(aead_id, bytes(bad_length))


@pytest.mark.parametrize("aead_id", [0, 1, 18, 31, 65535])
def test_unsupported_algorithm_raises_value_error(aead_id: int) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Aead(aead_id, bytes(32))


# --- exporter contexts and key derivation (RFC 8915 section 5.1) ---------------------


def test_exporter_label() -> None:
    assert EXPORTER_LABEL == b"EXPORTER-network-time-security"


@pytest.mark.parametrize(
    ("aead_id", "direction", "compliant", "expected"),
    [
        (15, C2S, True, b"\x00\x00\x00\x0f\x00"),
        (15, S2C, True, b"\x00\x00\x00\x0f\x01"),
        (15, C2S, False, b"\x00\x00\x00\x0f\x00"),  # only AEAD 30 has a non-compliant form
        (30, C2S, True, b"\x00\x00\x00\x1e\x00"),
        (30, S2C, True, b"\x00\x00\x00\x1e\x01"),
        (30, C2S, False, b"\x00\x00\x00\x0f\x00"),  # chrony's original context: 15, not 30
        (30, S2C, False, b"\x00\x00\x00\x0f\x01"),
        (17, S2C, True, b"\x00\x00\x00\x11\x01"),
        (17, C2S, False, b"\x00\x00\x00\x11\x00"),
        (16, S2C, False, b"\x00\x00\x00\x10\x01"),
    ],
)
def test_exporter_context_bytes(
    aead_id: int, direction: int, compliant: bool, expected: bytes
) -> None:
    assert exporter_context(aead_id, direction, compliant=compliant) == expected


def test_c2s_is_zero_and_s2c_is_one() -> None:
    assert (C2S, S2C) == (0, 1)


class FakeExporter:
    """Records every call; returns distinct bytes per (label, length, context)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, int, bytes]] = []

    def __call__(self, label: bytes, length: int, context: bytes) -> bytes:
        self.calls.append((label, length, context))
        seed = context[-1:] + context[2:4]
        return (seed * length)[:length]


@pytest.mark.parametrize(
    ("aead_id", "compliant", "key_length", "context_id"),
    [
        (15, True, 32, b"\x00\x0f"),
        (16, True, 48, b"\x00\x10"),
        (17, True, 64, b"\x00\x11"),
        (30, True, 16, b"\x00\x1e"),
        (30, False, 16, b"\x00\x0f"),
    ],
)
def test_derive_keys_asks_the_exporter_for_each_direction(
    aead_id: int, compliant: bool, key_length: int, context_id: bytes
) -> None:
    exporter = FakeExporter()
    c2s, s2c = derive_keys(exporter, aead_id, compliant=compliant)
    assert exporter.calls == [
        (EXPORTER_LABEL, key_length, b"\x00\x00" + context_id + b"\x00"),
        (EXPORTER_LABEL, key_length, b"\x00\x00" + context_id + b"\x01"),
    ]
    assert c2s == exporter(EXPORTER_LABEL, key_length, exporter.calls[0][2])
    assert s2c == exporter(EXPORTER_LABEL, key_length, exporter.calls[1][2])
    assert c2s != s2c
    assert len(c2s) == len(s2c) == key_length


def test_derive_keys_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError):
        derive_keys(FakeExporter(), 99)


@pytest.mark.parametrize(
    ("aead_id", "echoed_1024", "context_id"),
    [
        (30, True, 30),  # the server echoed record 1024: RFC 8915 context
        (30, False, 15),  # it did not: chrony's original context
        (15, False, 15),
        (15, True, 15),
    ],
)
def test_keys_from_response_picks_the_context_the_server_uses(
    aead_id: int, echoed_1024: bool, context_id: int
) -> None:
    exporter = FakeExporter()
    response = KeResponse(aead=aead_id, cookies=(b"c" * 64,), compliant_gcm_siv=echoed_1024)
    keys_from_response(response, exporter)
    contexts = [context for _, _, context in exporter.calls]
    assert contexts == [
        bytes([0, 0, 0, context_id, 0]),
        bytes([0, 0, 0, context_id, 1]),
    ]
    assert {length for _, length, _ in exporter.calls} == {ALGORITHMS[aead_id].key_length}
