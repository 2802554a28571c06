"""An in-memory NTS-protected NTP server for unit tests, with knobs to misbehave.

It is built from gnomon.proto's own parts (packet decoding, NTS field lookup,
the authenticator) but keeps its own rules about what a response holds, so a
test can make it send anything from a textbook answer to a forgery.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from gnomon.proto.nts.aead import ALGORITHMS, Aead
from gnomon.proto.nts.fields import (
    EF_NTS_COOKIE,
    EF_UNIQUE_IDENTIFIER,
    encode_authenticator,
    locate_nts_fields,
    open_authenticator,
    parse_encrypted_fields,
)
from gnomon.proto.nts.ntp import (
    MODE_CLIENT,
    MODE_SERVER,
    NtpHeader,
    NtpPacket,
    encode_extension_field,
)

_UNSET = object()


@dataclass(frozen=True)
class ParsedRequest:
    """What the client sent, after the authenticator was verified with the C2S key."""

    raw: bytes
    header: NtpHeader
    unique_id: bytes
    cookie: bytes
    placeholder_lengths: tuple[int, ...]
    encrypted_fields: tuple[int, ...]  # types of fields inside the authenticator

    @property
    def placeholders(self) -> int:
        return len(self.placeholder_lengths)


class FakeServer:
    """Answers NTS requests with keys shared with the client under test."""

    def __init__(self, aead_id: int, c2s: bytes, s2c: bytes, *, cookie_length: int = 100) -> None:
        self.aead_id = aead_id
        self.c2s = Aead(aead_id, c2s)
        self.s2c = Aead(aead_id, s2c)
        self.cookie_length = cookie_length
        self.requests: list[ParsedRequest] = []
        self.issued: list[bytes] = []
        self._serial = itertools.count(1)
        self._nonces = itertools.count(1)

    # --- requests ---------------------------------------------------------

    def parse_request(self, data: bytes) -> ParsedRequest:
        packet = NtpPacket.decode(data)
        if packet.header.mode != MODE_CLIENT:
            raise AssertionError(f"client sent mode {packet.header.mode}")
        fields = locate_nts_fields(data)
        if fields.authenticator_offset is None or fields.authenticator_end is None:
            raise AssertionError("request has no authenticator")
        if fields.authenticator_offset != packet.offsets[-1]:
            raise AssertionError("the authenticator is not the last field")
        plaintext = open_authenticator(
            self.c2s, data, fields.authenticator_offset, fields.authenticator_end
        )
        if fields.unique_id is None or fields.cookie is None:
            raise AssertionError("request lacks a unique id or a cookie")
        parsed = ParsedRequest(
            raw=data,
            header=packet.header,
            unique_id=fields.unique_id,
            cookie=fields.cookie,
            placeholder_lengths=fields.placeholder_lengths,
            encrypted_fields=tuple(ef.type for ef in parse_encrypted_fields(plaintext)),
        )
        self.requests.append(parsed)
        return parsed

    def new_cookie(self, length: int | None = None) -> bytes:
        length = self.cookie_length if length is None else length
        serial = next(self._serial)
        value = b"NEW" + serial.to_bytes(4) + bytes([serial & 0xFF]) * max(0, length - 7)
        value = value[:length]
        self.issued.append(value)
        return value

    def next_nonce(self) -> bytes:
        length = ALGORITHMS[self.aead_id].nonce_length
        return next(self._nonces).to_bytes(length)

    # --- responses --------------------------------------------------------

    def respond(
        self,
        request: bytes,
        *,
        receive_ts: int = 0x0123_4567_89AB_CDEF,
        transmit_ts: int = 0x0123_4567_89AC_0000,
        cookies: Sequence[bytes] | None = None,
        extra_cookies: int = 0,
        unique_id: object = _UNSET,
        origin_ts: int | None = None,
        mode: int = MODE_SERVER,
        leap: int = 0,
        version: int = 4,
        stratum: int = 1,
        poll: int = 4,
        precision: int = -20,
        root_delay: int = 0x0000_0100,
        root_dispersion: int = 0x0000_0200,
        reference_id: bytes = b"GPS\x00",
        clear_fields: Sequence[bytes] = (),
        encrypted_fields: Sequence[bytes] = (),
        fields_after: Sequence[bytes] = (),
        authenticate: bool = True,
        nonce: bytes | None = None,
        s2c: Aead | None = None,
    ) -> bytes:
        """A response to ``request``, by default a correct one.

        ``cookies``: the cookies to encrypt (default: one per placeholder plus
        one, plus ``extra_cookies``). ``clear_fields`` go, already encoded,
        between the unique id and the authenticator; ``encrypted_fields`` are
        encrypted after the cookies; ``fields_after`` follow the authenticator.
        """
        parsed = self.parse_request(request)
        if cookies is None:
            cookies = [self.new_cookie() for _ in range(parsed.placeholders + 1 + extra_cookies)]
        header = NtpHeader(
            leap=leap,
            version=version,
            mode=mode,
            stratum=stratum,
            poll=poll,
            precision=precision,
            root_delay=root_delay,
            root_dispersion=root_dispersion,
            reference_id=reference_id,
            reference_ts=receive_ts,
            origin_ts=parsed.header.transmit_ts if origin_ts is None else origin_ts,
            receive_ts=receive_ts,
            transmit_ts=transmit_ts,
        )
        uid = parsed.unique_id if unique_id is _UNSET else unique_id
        parts = [header.encode()]
        if uid is not None:
            assert isinstance(uid, bytes)
            parts.append(encode_extension_field(EF_UNIQUE_IDENTIFIER, uid))
        parts.extend(clear_fields)
        associated = b"".join(parts)
        if not authenticate:
            return associated + b"".join(fields_after)
        plaintext = b"".join(
            [*(encode_extension_field(EF_NTS_COOKIE, c) for c in cookies), *encrypted_fields]
        )
        authenticator = encode_authenticator(
            s2c or self.s2c, nonce or self.next_nonce(), associated, plaintext
        )
        return associated + authenticator + b"".join(fields_after)

    def nak(self, request: bytes, **knobs: object) -> bytes:
        """An NTS NAK: stratum 0, kiss code NTSN, the unique id echoed, no authenticator."""
        knobs = {
            "stratum": 0,
            "reference_id": b"NTSN",
            "authenticate": False,
            "receive_ts": 0,
            "transmit_ts": 0,
            "cookies": [],
            **knobs,
        }
        return self.respond(request, **knobs)  # type: ignore[arg-type]
