"""NTS extension fields for NTPv4 (RFC 8915 section 5) and the authenticator."""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from ..._frozen import Frozen
from ...errors import AuthenticationError, NtpFormatError
from ..wire import pad4
from .aead import MIN_NONCE_LEN, TAG_LENGTH, Aead
from .ntp import HEADER_LEN, ExtensionField, parse_extension_fields
from .scan import (
    EF_HEADER,
    EF_NTS_AUTHENTICATOR,
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    PROBLEMS,
    scan_fields,
)

__all__ = [
    "EF_NTS_AUTHENTICATOR",
    "EF_NTS_COOKIE",
    "EF_NTS_COOKIE_PLACEHOLDER",
    "EF_UNIQUE_IDENTIFIER",
    "MAX_UNIQUE_ID_LEN",
    "MIN_NONCE_LEN",
    "MIN_UNIQUE_ID_LEN",
    "UNIQUE_ID_LEN",
    "NtsFields",
    "encode_authenticator",
    "locate_nts_fields",
    "open_authenticator",
    "parse_encrypted_fields",
]

MIN_UNIQUE_ID_LEN = 32
UNIQUE_ID_LEN = 32
MAX_UNIQUE_ID_LEN = 1024  # nothing legitimate sends more; bounds what a reply echoes

_AUTH_HEADER = struct.Struct("!HH")
_unpack_auth_header = _AUTH_HEADER.unpack_from


def encode_authenticator(
    aead: Aead, nonce: bytes, associated: bytes, plaintext: bytes = b""
) -> bytes:
    """The NTS Authenticator and Encrypted Extension Fields field.

    ``associated`` is the packet up to this field; ``plaintext`` the encoded
    extension fields to encrypt.
    """
    ciphertext = aead.encrypt(nonce, plaintext, associated)
    required = aead.algorithm.required_nonce_space
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


def open_authenticator(aead: Aead, packet: bytes, auth_at: int, auth_end: int) -> bytes:
    """Verify the authenticator field at ``packet[auth_at:auth_end]`` (as located by
    :func:`.scan.scan_fields`) and return its plaintext (RFC 8915 5.6).

    The field holds nonce and ciphertext lengths, then each padded to four bytes,
    a nonce shorter than N_REQ followed by padding making up the difference, all
    within the field. Raises AuthenticationError when it is malformed or does not
    verify.
    """
    nonce_len, ciphertext_len = _unpack_auth_header(packet, auth_at + 4)
    shortest, longest, required = aead.nonce_limits
    nonce_at = auth_at + 8
    padded_nonce = (nonce_len + 3) & ~3
    if (
        not shortest <= nonce_len <= longest
        or ciphertext_len < TAG_LENGTH
        or nonce_at
        + (padded_nonce if padded_nonce > required else required)
        + ((ciphertext_len + 3) & ~3)
        > auth_end
    ):
        raise AuthenticationError(_authenticator_problem(aead, nonce_len, ciphertext_len))
    ciphertext_at = nonce_at + padded_nonce
    try:
        return aead.open(
            packet[nonce_at : nonce_at + nonce_len],
            packet[ciphertext_at : ciphertext_at + ciphertext_len],
            packet[:auth_at],
        )
    except InvalidTag:
        raise AuthenticationError("authenticator does not verify") from None


def _authenticator_problem(aead: Aead, nonce_len: int, ciphertext_len: int) -> str:
    algorithm = aead.algorithm
    if not algorithm.min_nonce_length <= nonce_len <= algorithm.max_nonce_length:
        return f"authenticator nonce of {nonce_len} bytes for {algorithm.name}"
    if ciphertext_len < TAG_LENGTH:
        return f"authenticator ciphertext of {ciphertext_len} bytes"
    if pad4(nonce_len) < algorithm.required_nonce_space:
        return "authenticator lacks the padding of a short nonce"
    return "truncated authenticator"


def parse_encrypted_fields(plaintext: bytes) -> tuple[ExtensionField, ...]:
    """The extension fields inside a decrypted authenticator."""
    fields, _, mac = parse_extension_fields(plaintext, 0)
    if mac is not None:
        raise NtpFormatError("malformed encrypted extension fields")
    return fields


class NtsFields(Frozen):
    """The NTS fields of a packet, located, not yet verified."""

    __slots__ = __match_args__ = (
        "unique_id",
        "cookie",
        "placeholder_lengths",
        "authenticator_offset",
        "authenticator_end",
    )
    unique_id: bytes | None
    cookie: bytes | None
    placeholder_lengths: tuple[int, ...]  # of their bodies
    authenticator_offset: int | None
    authenticator_end: int | None

    def __init__(
        self,
        unique_id: bytes | None,
        cookie: bytes | None,
        placeholder_lengths: tuple[int, ...],
        authenticator_offset: int | None,
        authenticator_end: int | None,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "unique_id", unique_id)
        set_field(self, "cookie", cookie)
        set_field(self, "placeholder_lengths", placeholder_lengths)
        set_field(self, "authenticator_offset", authenticator_offset)
        set_field(self, "authenticator_end", authenticator_end)


def locate_nts_fields(packet: bytes) -> NtsFields:
    """The NTS fields of a whole packet, keeping only what the authenticator covers
    (the rules are :func:`.scan.scan_fields`'s). NtpFormatError if it is malformed."""
    problem, end, uid_at, uid_end, cookie_at, cookie_end, auth_at, auth_end, placeholders = (
        scan_fields(packet, HEADER_LEN)
    )
    if problem:
        raise NtpFormatError(PROBLEMS[problem].format(end))
    return NtsFields(
        packet[uid_at + 4 : uid_end] if uid_at >= 0 else None,
        packet[cookie_at + 4 : cookie_end] if cookie_at >= 0 else None,
        tuple(n - 4 for n in placeholders or ()),
        auth_at if auth_at >= 0 else None,
        auth_end if auth_at >= 0 else None,
    )
