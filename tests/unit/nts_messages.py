"""NTS messages built and read by hand for the sans-I/O tests (and the server tests,
through tests/server/helpers.py): NTS-KE records, NTS requests field by field, replies
opened with the client's parsing functions."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gnomon.proto.nts.aead import ALGORITHMS, Aead
from gnomon.proto.nts.fields import (
    EF_NTS_COOKIE,
    EF_NTS_COOKIE_PLACEHOLDER,
    EF_UNIQUE_IDENTIFIER,
    encode_authenticator,
    locate_nts_fields,
    open_authenticator,
    parse_encrypted_fields,
)
from gnomon.proto.nts.ke import Record, RecordStream, RecordType, encode_records, u16_list
from gnomon.proto.nts.ntp import MODE_CLIENT, NtpHeader, NtpPacket, encode_extension_field


def npn(*protocols: int, critical: bool = True) -> Record:
    return Record(RecordType.NEXT_PROTOCOL, u16_list(protocols), critical)


def aead_record(*ids: int, critical: bool = True) -> Record:
    return Record(RecordType.AEAD_ALGORITHM, u16_list(ids), critical)


def compliant_record() -> Record:
    return Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER)


def message(*records: Record) -> bytes:
    """The records followed by a critical End of Message."""
    return encode_records([*records, Record(RecordType.END_OF_MESSAGE, critical=True)])


def raw_record(raw_type: int, body: bytes) -> bytes:
    """A record with an arbitrary 16-bit type field (critical bit included)."""
    return raw_type.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def parse_response_bytes(data: bytes) -> tuple[Record, ...]:
    records = RecordStream(1 << 20).feed(data)
    assert records is not None, "response without End of Message"
    return records


def fake_exporter(label: bytes, length: int, context: bytes) -> bytes:
    """A deterministic stand-in for the TLS exporter (sans-I/O tests)."""
    return hashlib.sha512(label + b"|" + context).digest()[:length]


def records_of(records: Iterable[Record], kind: int) -> list[Record]:
    return [r for r in records if r.type == kind]


def u16s(body: bytes) -> list[int]:
    return [int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2)]


def error_code(records: Sequence[Record]) -> int | None:
    errors = records_of(records, RecordType.ERROR)
    if not errors:
        return None
    assert len(errors) == 1
    return u16s(errors[0].body)[0]


def plain_request(transmit: int = 0x1122334455667788, *, version: int = 4, poll: int = 6) -> bytes:
    return NtpHeader(version=version, mode=MODE_CLIENT, poll=poll, transmit_ts=transmit).encode()


def nts_request(
    aead_id: int,
    c2s: bytes,
    cookie: bytes,
    *,
    unique_id: bytes | None = None,
    placeholders: Sequence[int] = (),
    encrypted_placeholders: Sequence[int] = (),
    nonce: bytes | None = None,
    transmit: int = 0x0102030405060708,
) -> bytes:
    """An NTS request built field by field: placeholders are body lengths."""
    unique_id = os.urandom(32) if unique_id is None else unique_id
    algorithm = ALGORITHMS[aead_id]
    nonce = os.urandom(algorithm.nonce_length) if nonce is None else nonce
    head = b"".join(
        [
            NtpHeader(mode=MODE_CLIENT, transmit_ts=transmit).encode(),
            encode_extension_field(EF_UNIQUE_IDENTIFIER, unique_id),
            encode_extension_field(EF_NTS_COOKIE, cookie),
            *(encode_extension_field(EF_NTS_COOKIE_PLACEHOLDER, bytes(n)) for n in placeholders),
        ]
    )
    inner = b"".join(
        encode_extension_field(EF_NTS_COOKIE_PLACEHOLDER, bytes(n)) for n in encrypted_placeholders
    )
    return head + encode_authenticator(Aead(aead_id, c2s), nonce, head, inner)


@dataclass
class NtsReply:
    header: NtpHeader
    unique_id: bytes | None
    outside_types: list[int]  # extension field types outside the encrypted part
    cookies: list[bytes]  # from the encrypted part
    authenticated: bool


def open_reply(reply: bytes, aead_id: int, s2c: bytes) -> NtsReply:
    """Parse a reply; checks its authenticator when it has one."""
    packet = NtpPacket.decode(reply)
    fields = locate_nts_fields(reply)
    outside = [ef.type for ef in packet.extensions]
    cookies: list[bytes] = []
    authenticated = False
    if fields.authenticator_offset is not None:
        assert fields.authenticator_end is not None
        plaintext = open_authenticator(
            Aead(aead_id, s2c), reply, fields.authenticator_offset, fields.authenticator_end
        )
        cookies = [ef.body for ef in parse_encrypted_fields(plaintext) if ef.type == EF_NTS_COOKIE]
        authenticated = True
    return NtsReply(packet.header, fields.unique_id, outside, cookies, authenticated)
