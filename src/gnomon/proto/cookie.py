"""The server's cookie format (in the style of RFC 8915 section 6).

    cookie = key id (4) || nonce (12) || AES-128-GCM-SIV(master key, nonce,
             aead id (2) || reserved (2) || C2S key || S2C key)

The key id is authenticated as associated data, so a cookie cannot be moved
to another key. Cookies are 68 bytes for AES-128-GCM-SIV sessions and 100
for AES-SIV-CMAC-256, like chrony's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from .aead import ALGORITHMS

MASTER_KEY_LEN = 16
NONCE_LEN = 12
_KEY_ID = struct.Struct("!I")
_PLAIN_HEADER = struct.Struct("!HH")
OVERHEAD = _KEY_ID.size + NONCE_LEN + 16 + _PLAIN_HEADER.size


def cookie_length(aead_id: int) -> int:
    return OVERHEAD + 2 * ALGORITHMS[aead_id].key_length


@dataclass(frozen=True, slots=True)
class CookieKey:
    """One master key: ``id`` names it inside every cookie it seals."""

    id: int
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != MASTER_KEY_LEN or not 0 <= self.id < 1 << 32:
            raise ValueError("a cookie key is a 32-bit id and a 16-byte secret")


class CookieCodec:
    """Seals cookies under the current key; opens those of any accepted key."""

    def __init__(self, current: CookieKey, accepted: Iterable[CookieKey] = ()) -> None:
        self._ciphers: dict[int, AESGCMSIV] = {}
        for key in (current, *accepted):
            self._ciphers[key.id] = AESGCMSIV(key.secret)
        self.current_id = current.id
        self._current = self._ciphers[current.id]
        self._current_prefix = _KEY_ID.pack(current.id)

    @property
    def key_ids(self) -> frozenset[int]:
        return frozenset(self._ciphers)

    def seal(self, aead_id: int, c2s: bytes, s2c: bytes, nonce: bytes | None = None) -> bytes:
        return self.seal_many(aead_id, c2s, s2c, os.urandom(NONCE_LEN) if nonce is None else nonce)[
            0
        ]

    def seal_many(self, aead_id: int, c2s: bytes, s2c: bytes, nonces: bytes) -> list[bytes]:
        """One cookie per 12 bytes of ``nonces`` (random bytes the caller drew at once)."""
        plaintext = _PLAIN_HEADER.pack(aead_id, 0) + c2s + s2c
        prefix = self._current_prefix
        encrypt = self._current.encrypt
        cookies = []
        for start in range(0, len(nonces) - NONCE_LEN + 1, NONCE_LEN):
            nonce = nonces[start : start + NONCE_LEN]
            cookies.append(prefix + nonce + encrypt(nonce, plaintext, prefix))
        return cookies

    def open(self, cookie: bytes) -> tuple[int, bytes, bytes] | None:
        """(aead id, C2S, S2C), or None for a cookie this server cannot use."""
        if len(cookie) < OVERHEAD:
            return None
        cipher = self._ciphers.get(_KEY_ID.unpack_from(cookie)[0])
        if cipher is None:
            return None
        try:
            plaintext = cipher.decrypt(cookie[4:16], cookie[16:], cookie[:4])
        except InvalidTag:
            return None
        aead_id = _PLAIN_HEADER.unpack_from(plaintext)[0]
        algorithm = ALGORITHMS.get(aead_id)
        if algorithm is None or len(plaintext) != 4 + 2 * algorithm.key_length:
            return None
        split = 4 + algorithm.key_length
        return aead_id, plaintext[4:split], plaintext[split:]
