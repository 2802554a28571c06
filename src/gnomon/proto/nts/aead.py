"""AEAD algorithms by IANA id, and NTS key derivation (RFC 8915 section 5.1)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

try:
    # The classes `cryptography.hazmat.primitives.ciphers.aead` re-exports, taken where
    # it takes them: importing that module runs the `ciphers` package (the classic
    # ciphers, modes, the decrepit ones), 7% of a query's start-up from cached cookies.
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    AESGCMSIV = _rust_openssl.aead.AESGCMSIV
    AESSIV = _rust_openssl.aead.AESSIV
except (ImportError, AttributeError):  # a cryptography that keeps them elsewhere
    from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV, AESSIV

from ..._frozen import Frozen
from ...errors import AuthenticationError

AES_SIV_CMAC_256 = 15
AES_SIV_CMAC_384 = 16
AES_SIV_CMAC_512 = 17
AES_128_GCM_SIV = 30

NEXT_PROTOCOL_NTPV4 = 0
EXPORTER_LABEL = b"EXPORTER-network-time-security"
_CONTEXT = struct.Struct("!HHB")
C2S = 0
S2C = 1


MIN_NONCE_LEN = 16  # N_REQ of RFC 8915 section 5.6, capped at the algorithm's maximum


class AeadAlgorithm(Frozen):
    __match_args__ = (
        "id",
        "name",
        "key_length",
        "nonce_length",
        "max_nonce_length",
        "min_nonce_length",
    )
    __slots__ = (*__match_args__, "required_nonce_space")
    id: int
    name: str
    key_length: int
    nonce_length: int  # the nonce this implementation sends
    max_nonce_length: int  # the longest nonce the algorithm takes (N_MAX)
    min_nonce_length: int  # the shortest it takes
    # N_REQ (RFC 8915 5.6): the room an authenticator gives its nonce, padding included,
    # at least: 16 bytes, or N_MAX if that is less.
    required_nonce_space: int

    def __init__(
        self,
        id: int,
        name: str,
        key_length: int,
        nonce_length: int,
        max_nonce_length: int,
        min_nonce_length: int,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "id", id)
        set_field(self, "name", name)
        set_field(self, "key_length", key_length)
        set_field(self, "nonce_length", nonce_length)
        set_field(self, "max_nonce_length", max_nonce_length)
        set_field(self, "min_nonce_length", min_nonce_length)
        set_field(self, "required_nonce_space", min(MIN_NONCE_LEN, max_nonce_length))


ALGORITHMS: dict[int, AeadAlgorithm] = {
    a.id: a
    for a in (
        AeadAlgorithm(AES_SIV_CMAC_256, "AEAD_AES_SIV_CMAC_256", 32, 16, 1 << 16, 1),
        AeadAlgorithm(AES_SIV_CMAC_384, "AEAD_AES_SIV_CMAC_384", 48, 16, 1 << 16, 1),
        AeadAlgorithm(AES_SIV_CMAC_512, "AEAD_AES_SIV_CMAC_512", 64, 16, 1 << 16, 1),
        AeadAlgorithm(AES_128_GCM_SIV, "AEAD_AES_128_GCM_SIV", 16, 12, 12, 12),
    )
}
TAG_LENGTH = 16  # both families append or prepend a 16-byte tag


def algorithm(aead_id: int) -> AeadAlgorithm:
    try:
        return ALGORITHMS[aead_id]
    except KeyError:
        raise ValueError(f"unsupported AEAD algorithm {aead_id}") from None


def aead_name(aead_id: int) -> str:
    known = ALGORITHMS.get(aead_id)
    return known.name if known else f"AEAD {aead_id}"


class Aead:
    """One key of one algorithm, with a uniform encrypt/decrypt signature.

    Building the underlying cipher costs more than one encryption, so keep an
    ``Aead`` for as long as its key lives. ``encrypt``/``decrypt`` take
    ``(nonce, data, associated)`` whatever the algorithm; the per-packet paths
    (:mod:`.fields`' authenticator opener and appender) call ``cipher`` directly,
    in the argument order ``siv`` says: AES-SIV (RFC 5297) takes the nonce as the
    last associated-data component, ``cipher.encrypt(data, [associated, nonce])``;
    AES-GCM-SIV takes ``cipher.encrypt(nonce, data, associated)``.
    """

    __slots__ = ("algorithm", "cipher", "decrypt", "encrypt", "nonce_limits", "siv")

    encrypt: Callable[[bytes, bytes, bytes], bytes]
    decrypt: Callable[[bytes, bytes, bytes], bytes]  # raises AuthenticationError
    cipher: AESSIV | AESGCMSIV
    siv: bool
    # (shortest, longest, N_REQ): the nonce lengths the algorithm takes and the room an
    # authenticator must give its nonce (RFC 8915 5.6).
    nonce_limits: tuple[int, int, int]

    def __init__(self, aead_id: int, key: bytes) -> None:
        self.algorithm = algorithm(aead_id)
        self.nonce_limits = (
            self.algorithm.min_nonce_length,
            self.algorithm.max_nonce_length,
            self.algorithm.required_nonce_space,
        )
        if len(key) != self.algorithm.key_length:
            expected = self.algorithm.key_length
            raise ValueError(f"{self.algorithm.name} takes a {expected}-byte key, not {len(key)}")
        self.siv = aead_id != AES_128_GCM_SIV
        if not self.siv:
            gcm = self.cipher = AESGCMSIV(key)

            def gcm_decrypt(nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
                if len(nonce) != 12:  # the only nonce length AES-GCM-SIV takes
                    raise AuthenticationError(f"AES-GCM-SIV nonce of {len(nonce)} bytes")
                try:
                    return gcm.decrypt(nonce, ciphertext, associated)
                except InvalidTag:
                    raise AuthenticationError("authenticator does not verify") from None

            self.encrypt = gcm.encrypt  # the same signature: no wrapper
            self.decrypt = gcm_decrypt
        else:
            siv = self.cipher = AESSIV(key)

            def siv_encrypt(nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
                return siv.encrypt(plaintext, [associated, nonce])

            def siv_decrypt(nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
                try:
                    return siv.decrypt(ciphertext, [associated, nonce])
                except InvalidTag:
                    raise AuthenticationError("authenticator does not verify") from None

            self.encrypt = siv_encrypt
            self.decrypt = siv_decrypt


Exporter = Callable[[bytes, int, bytes], bytes]
"""``exporter(label, length, context)``: the TLS exporter of the NTS-KE connection."""


def exporter_context(aead_id: int, direction: int, *, compliant: bool = True) -> bytes:
    """The exporter context for one direction (RFC 8915 section 5.1).

    chrony before record 1024 put AEAD 15 in the context when it negotiated
    AES-128-GCM-SIV; ``compliant=False`` reproduces that for interoperability.
    """
    context_id = aead_id if compliant or aead_id != AES_128_GCM_SIV else AES_SIV_CMAC_256
    return _CONTEXT.pack(NEXT_PROTOCOL_NTPV4, context_id, direction)


def derive_keys(exporter: Exporter, aead_id: int, *, compliant: bool = True) -> tuple[bytes, bytes]:
    """(client-to-server key, server-to-client key) from the TLS exporter."""
    length = algorithm(aead_id).key_length
    c2s = exporter(EXPORTER_LABEL, length, exporter_context(aead_id, C2S, compliant=compliant))
    s2c = exporter(EXPORTER_LABEL, length, exporter_context(aead_id, S2C, compliant=compliant))
    return c2s, s2c
