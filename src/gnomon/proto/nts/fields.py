"""NTS extension fields for NTPv4 (RFC 8915 section 5) and the authenticator."""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from ..._frozen import Frozen
from ...errors import AuthenticationError, NtpFormatError
from ..wire import pad4
from .aead import MIN_NONCE_LEN, TAG_LENGTH, Aead
from .ntp import HEADER_LEN, ExtensionField, parse_extension_fields
from .scan import (
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
    "AuthenticatorAppender",
    "AuthenticatorOpener",
    "NtsFields",
    "authenticator_appender",
    "authenticator_opener",
    "encode_authenticator",
    "locate_nts_fields",
    "open_authenticator",
    "parse_encrypted_fields",
]

MIN_UNIQUE_ID_LEN = 32
UNIQUE_ID_LEN = 32
MAX_UNIQUE_ID_LEN = 1024  # nothing legitimate sends more; bounds what a reply echoes

_AUTH_HEADER = struct.Struct("!HH")  # nonce length, ciphertext length
_unpack_auth_header = _AUTH_HEADER.unpack_from
_AUTH_FIELD_HEAD = struct.Struct("!HHHH")  # field type and length, then _AUTH_HEADER


# ``open_authenticator(packet, auth_at, auth_end) -> plaintext`` and
# ``append_authenticator(nonce, plaintext, associated) -> associated + field``, for one key.
AuthenticatorOpener = Callable[[bytes, int, int], bytes]
AuthenticatorAppender = Callable[[bytes, bytes, bytes], bytes]


def authenticator_appender(aead: Aead) -> AuthenticatorAppender:
    """``append(nonce, plaintext, associated)``: ``associated`` (the packet up to the
    field) followed by the NTS Authenticator and Encrypted Extension Fields field that
    encrypts ``plaintext`` (encoded extension fields) under ``aead`` (RFC 8915 5.6).

    The nonce and the ciphertext are each padded to four bytes, and a nonce shorter
    than N_REQ is followed, after the ciphertext, by the padding that makes up the
    difference. Built once per key: the server's reply path calls it per packet.
    """
    encrypt: Callable[..., bytes] = aead.cipher.encrypt  # in the order ``siv`` says
    siv = aead.siv
    required = aead.nonce_limits[2]
    pack = _AUTH_FIELD_HEAD.pack

    def append(nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
        if siv:
            ciphertext = encrypt(plaintext, [associated, nonce])
        else:
            ciphertext = encrypt(nonce, plaintext, associated)
        nonce_len = len(nonce)
        ciphertext_len = len(ciphertext)
        if nonce_len & 3 or ciphertext_len & 3 or nonce_len < required:
            nonce_pad = -nonce_len & 3
            tail_pad = (-ciphertext_len & 3) + max(0, required - nonce_len - nonce_pad)
            field_len = 8 + nonce_len + nonce_pad + ciphertext_len + tail_pad
            head = pack(EF_NTS_AUTHENTICATOR, field_len, nonce_len, ciphertext_len)
            return b"".join(
                (associated, head, nonce, bytes(nonce_pad), ciphertext, bytes(tail_pad))
            )
        # No padding (a server's reply: its nonce is the algorithm's, its plaintext fields)
        head = pack(EF_NTS_AUTHENTICATOR, 8 + nonce_len + ciphertext_len, nonce_len, ciphertext_len)
        return b"".join((associated, head, nonce, ciphertext))

    return append


def encode_authenticator(
    aead: Aead, nonce: bytes, associated: bytes, plaintext: bytes = b""
) -> bytes:
    """The NTS Authenticator and Encrypted Extension Fields field alone
    (see :func:`authenticator_appender`)."""
    return authenticator_appender(aead)(nonce, plaintext, associated)[len(associated) :]


def authenticator_opener(aead: Aead) -> AuthenticatorOpener:
    """``open(packet, auth_at, auth_end)``: verify the authenticator field at
    ``packet[auth_at:auth_end]`` (as located by :func:`.scan.scan_fields`) under
    ``aead`` and return its plaintext (RFC 8915 5.6).

    The field holds nonce and ciphertext lengths, then each padded to four bytes,
    a nonce shorter than N_REQ followed by padding making up the difference, all
    within the field. Raises AuthenticationError when it is malformed or does not
    verify. Built once per key: the server's request path calls it per packet.
    """
    decrypt: Callable[..., bytes] = aead.cipher.decrypt  # in the order ``siv`` says
    siv = aead.siv
    shortest, longest, required = aead.nonce_limits
    unpack = _unpack_auth_header

    def open_(packet: bytes, auth_at: int, auth_end: int) -> bytes:
        nonce_len, ciphertext_len = unpack(packet, auth_at + 4)
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
            if siv:
                return decrypt(
                    packet[ciphertext_at : ciphertext_at + ciphertext_len],
                    [packet[:auth_at], packet[nonce_at : nonce_at + nonce_len]],
                )
            return decrypt(
                packet[nonce_at : nonce_at + nonce_len],
                packet[ciphertext_at : ciphertext_at + ciphertext_len],
                packet[:auth_at],
            )
        except InvalidTag:
            raise AuthenticationError("authenticator does not verify") from None

    return open_


def open_authenticator(aead: Aead, packet: bytes, auth_at: int, auth_end: int) -> bytes:
    """:func:`authenticator_opener` for one packet."""
    return authenticator_opener(aead)(packet, auth_at, auth_end)


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
