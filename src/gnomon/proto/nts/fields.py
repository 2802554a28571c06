"""NTS extension fields for NTPv4 (RFC 8915 section 5) and the authenticator."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import AuthenticationError, NtpFormatError
from ..wire import Reader, pad4
from .aead import TAG_LENGTH, Aead
from .ntp import EF_HEADER, ExtensionField, parse_extension_fields

EF_UNIQUE_IDENTIFIER = 0x0104
EF_NTS_COOKIE = 0x0204
EF_NTS_COOKIE_PLACEHOLDER = 0x0304
EF_NTS_AUTHENTICATOR = 0x0404

MIN_UNIQUE_ID_LEN = 32
UNIQUE_ID_LEN = 32
MAX_UNIQUE_ID_LEN = 1024  # nothing legitimate sends more; bounds what a reply echoes
MIN_NONCE_LEN = 16  # N_REQ of RFC 8915 section 5.6, capped at the algorithm's maximum

_AUTH_HEADER = struct.Struct("!HH")


def encode_authenticator(
    aead: Aead, nonce: bytes, associated: bytes, plaintext: bytes = b""
) -> bytes:
    """The NTS Authenticator and Encrypted Extension Fields field.

    ``associated`` is the packet up to this field; ``plaintext`` the encoded
    extension fields to encrypt.
    """
    ciphertext = aead.encrypt(nonce, plaintext, associated)
    required = min(MIN_NONCE_LEN, aead.algorithm.max_nonce_length)
    padded_nonce = pad4(len(nonce))
    additional = max(0, required - padded_nonce)
    body = b"".join(
        (
            _AUTH_HEADER.pack(len(nonce), len(ciphertext)),
            nonce,
            bytes(padded_nonce - len(nonce)),
            ciphertext,
            bytes(pad4(len(ciphertext)) - len(ciphertext) + additional),
        )
    )
    return EF_HEADER.pack(EF_NTS_AUTHENTICATOR, 4 + len(body)) + body


def open_authenticator(aead: Aead, packet: bytes, ef_offset: int, body: bytes) -> bytes:
    """Verify an authenticator field found at ``ef_offset`` and return the plaintext.

    Raises AuthenticationError when the field is malformed or does not verify.
    """
    reader = Reader(body, error=AuthenticationError)
    nonce_len, ciphertext_len = _AUTH_HEADER.unpack(reader.take(4, "authenticator header"))
    algorithm = aead.algorithm
    if not 1 <= nonce_len <= algorithm.max_nonce_length:
        raise AuthenticationError(f"authenticator nonce of {nonce_len} bytes")
    if ciphertext_len < TAG_LENGTH:
        raise AuthenticationError(f"authenticator ciphertext of {ciphertext_len} bytes")
    nonce = reader.take(pad4(nonce_len), "authenticator nonce")[:nonce_len]
    ciphertext = reader.take(pad4(ciphertext_len), "authenticator ciphertext")[:ciphertext_len]
    # RFC 8915 5.6: a nonce shorter than N_REQ is followed by padding making up the difference.
    required = min(MIN_NONCE_LEN, algorithm.max_nonce_length)
    if 4 + max(pad4(nonce_len), required) + pad4(ciphertext_len) > len(body):
        raise AuthenticationError("authenticator lacks the padding of a short nonce")
    return aead.decrypt(nonce, ciphertext, packet[:ef_offset])


def parse_encrypted_fields(plaintext: bytes) -> tuple[ExtensionField, ...]:
    """The extension fields inside a decrypted authenticator."""
    fields, _, mac = parse_extension_fields(plaintext, 0)
    if mac is not None:
        raise NtpFormatError("malformed encrypted extension fields")
    return fields


@dataclass(frozen=True, slots=True)
class NtsFields:
    """The NTS fields of a packet, located, not yet verified."""

    unique_id: bytes | None
    cookie: bytes | None
    placeholder_lengths: tuple[int, ...]
    authenticator_offset: int | None
    authenticator_body: bytes | None


def locate_nts_fields(fields: tuple[ExtensionField, ...], offsets: tuple[int, ...]) -> NtsFields:
    """Find the NTS fields, keeping only what the authenticator covers.

    Fields after the authenticator are not authenticated and are ignored
    (RFC 8915 section 5.6). Duplicated unique ids or cookies are malformed.
    """
    unique_id: bytes | None = None
    cookie: bytes | None = None
    placeholders: list[int] = []
    for ef, offset in zip(fields, offsets, strict=True):
        if ef.type == EF_NTS_AUTHENTICATOR:
            return NtsFields(unique_id, cookie, tuple(placeholders), offset, ef.body)
        if ef.type == EF_UNIQUE_IDENTIFIER:
            if unique_id is not None:
                raise NtpFormatError("two Unique Identifier fields")
            unique_id = ef.body
        elif ef.type == EF_NTS_COOKIE:
            if cookie is not None:
                raise NtpFormatError("two NTS Cookie fields")
            cookie = ef.body
        elif ef.type == EF_NTS_COOKIE_PLACEHOLDER:
            placeholders.append(len(ef.body))
    return NtsFields(unique_id, cookie, tuple(placeholders), None, None)
