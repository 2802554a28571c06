"""NTS-KE request handling (RFC 8915 section 4), sans-I/O: KeResponder with bytes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nts_messages import (
    aead_record,
    compliant_record,
    error_code,
    fake_exporter,
    message,
    npn,
    parse_response_bytes,
    raw_record,
    records_of,
    u16s,
)

from gnomon.proto.nts.aead import AES_128_GCM_SIV, AES_SIV_CMAC_256, ALGORITHMS, derive_keys
from gnomon.proto.nts.cookie import RANDOM_LEN, CookieCodec
from gnomon.proto.nts.ke import MAX_COOKIES, ErrorCode, Record, RecordType
from gnomon.proto.nts.ke_server import KeResponder

END = raw_record(0x8000, b"")


def respond(codec: CookieCodec, request: bytes, **kwargs: object) -> tuple[Record, ...]:
    responder = KeResponder(lambda _unix_ns: codec, **kwargs)  # type: ignore[arg-type]
    response = responder.respond(
        parse_response_bytes(request), fake_exporter, unix_ns=0, randomness=os.urandom(RANDOM_LEN)
    )
    return parse_response_bytes(response)


def chosen_aead(records: tuple[Record, ...]) -> list[int]:
    (aead,) = records_of(records, RecordType.AEAD_ALGORITHM)
    return u16s(aead.body)


GOOD = (npn(0), aead_record(AES_128_GCM_SIV, AES_SIV_CMAC_256), compliant_record())


def test_good_request_is_answered(codec: CookieCodec) -> None:
    records = respond(codec, message(*GOOD))
    assert error_code(records) is None
    assert [u16s(r.body) for r in records_of(records, RecordType.NEXT_PROTOCOL)] == [[0]]
    assert chosen_aead(records) == [AES_128_GCM_SIV]


# --- Error records ------------------------------------------------------------------


def test_unrecognized_critical_record_gets_error_0(codec: CookieCodec) -> None:
    request = message(*GOOD)[:-4] + raw_record(0x8000 | 0x1234, b"xx") + END
    records = respond(codec, request)
    assert error_code(records) == ErrorCode.UNRECOGNIZED_CRITICAL_RECORD
    assert not records_of(records, RecordType.NEW_COOKIE)


def test_unrecognized_noncritical_record_is_ignored(codec: CookieCodec) -> None:
    request = message(*GOOD)[:-4] + raw_record(0x1234, b"xx") + END
    records = respond(codec, request)
    assert error_code(records) is None
    assert len(records_of(records, RecordType.NEW_COOKIE)) == MAX_COOKIES


def test_repeated_unrecognized_noncritical_record_is_ignored(codec: CookieCodec) -> None:
    """RFC 8915 4: unrecognized non-critical records are ignored, repeated or not."""
    request = message(*GOOD)[:-4] + raw_record(0x1234, b"a") + raw_record(0x1234, b"b") + END
    assert error_code(respond(codec, request)) is None


@pytest.mark.parametrize(
    "records",
    [
        pytest.param((aead_record(AES_SIV_CMAC_256),), id="no-next-protocol"),
        pytest.param((npn(0),), id="no-aead-record"),
        pytest.param((npn(0), npn(0), aead_record(AES_SIV_CMAC_256)), id="duplicate-npn"),
        pytest.param(
            (npn(0), aead_record(AES_SIV_CMAC_256), aead_record(AES_SIV_CMAC_256)),
            id="duplicate-aead",
        ),
        pytest.param(
            (npn(0), aead_record(AES_SIV_CMAC_256), Record(RecordType.NEW_COOKIE, bytes(64))),
            id="client-sends-new-cookie",
        ),
        pytest.param(
            (npn(0), aead_record(AES_SIV_CMAC_256), Record(RecordType.ERROR, b"\x00\x01", True)),
            id="client-sends-error",
        ),
        pytest.param(
            (npn(0), aead_record(AES_SIV_CMAC_256), Record(RecordType.WARNING, b"\x00\x01", True)),
            id="client-sends-warning",
        ),
        pytest.param((npn(0), Record(RecordType.AEAD_ALGORITHM, b"\x00", True)), id="odd-aead"),
        pytest.param(
            (Record(RecordType.NEXT_PROTOCOL, b"\x00", True), aead_record(15)), id="odd-npn"
        ),
    ],
)
def test_bad_request_gets_error_1(codec: CookieCodec, records: tuple[Record, ...]) -> None:
    response = respond(codec, message(*records))
    assert error_code(response) == ErrorCode.BAD_REQUEST
    assert not records_of(response, RecordType.NEW_COOKIE)
    # An error response carries nothing but the Error record.
    assert [r.type for r in response] == [RecordType.ERROR]
    assert response[0].critical


# --- AEAD negotiation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "offered", "expected"),
    [
        ((30, 15), (15, 30), 30),  # server preference wins over the client's order
        ((30, 15), (30, 15), 30),
        ((30, 15), (15,), 15),
        ((30, 15), (17, 15), 15),  # never one the server does not run
        ((15, 30), (30, 15), 15),
        ((15, 30), (30,), 30),
        ((17, 16, 15), (15, 16), 16),
    ],
)
def test_aead_chosen_by_server_preference(
    codec: CookieCodec, server: tuple[int, ...], offered: tuple[int, ...], expected: int
) -> None:
    request = message(npn(0), aead_record(*offered), compliant_record())
    records = respond(codec, request, aeads=server)
    assert chosen_aead(records) == [expected]


@pytest.mark.parametrize(
    ("server", "offered", "expected"),
    [
        ((30, 15), (30, 15), 15),  # chrony without record 1024 offers 15 beside 30
        ((30, 15), (15, 30), 15),
        ((30, 16, 15), (30, 15, 16), 16),  # the next by server preference
        ((30, 15), (30,), 30),  # 30 alone: the RFC's exporter context
        ((30, 15), (30, 17), 30),  # 17 is not one the server runs
        ((15, 30), (30, 15), 15),
    ],
)
def test_aead_30_without_record_1024_only_when_nothing_else_is_offered(
    codec: CookieCodec, server: tuple[int, ...], offered: tuple[int, ...], expected: int
) -> None:
    records = respond(codec, message(npn(0), aead_record(*offered)), aeads=server)
    assert chosen_aead(records) == [expected]


@settings(max_examples=150, deadline=None)
@given(
    server=st.lists(st.sampled_from(sorted(ALGORITHMS)), min_size=1, max_size=4, unique=True),
    offered=st.lists(st.integers(0, 40), min_size=0, max_size=6),
)
def test_aead_never_one_the_client_did_not_offer(server: list[int], offered: list[int]) -> None:
    from gnomon.proto.nts.cookie import CookieKey

    codec = CookieCodec(CookieKey(1, bytes(16)))
    records = respond(codec, message(npn(0), aead_record(*offered)), aeads=tuple(server))
    assert error_code(records) is None
    chosen = chosen_aead(records)
    common = [a for a in server if a in offered]
    if common:
        # without record 1024, AES-128-GCM-SIV only when nothing else is in common
        assert chosen == [common[1] if common[0] == AES_128_GCM_SIV and common[1:] else common[0]]
        assert len(records_of(records, RecordType.NEW_COOKIE)) == MAX_COOKIES
    else:
        assert chosen == []
        assert not records_of(records, RecordType.NEW_COOKIE)


def test_nothing_in_common_gets_empty_aead_record(codec: CookieCodec) -> None:
    records = respond(codec, message(npn(0), aead_record(16, 17)))
    assert error_code(records) is None
    (aead,) = records_of(records, RecordType.AEAD_ALGORITHM)
    assert aead.body == b""
    assert aead.critical
    assert not records_of(records, RecordType.NEW_COOKIE)
    assert not records_of(records, RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER)


def test_empty_aead_list_gets_empty_aead_record(codec: CookieCodec) -> None:
    records = respond(codec, message(npn(0), aead_record()))
    assert chosen_aead(records) == []
    assert not records_of(records, RecordType.NEW_COOKIE)


def test_unknown_next_protocol_gets_empty_npn(codec: CookieCodec) -> None:
    records = respond(codec, message(npn(7), aead_record(15)))
    (protocol,) = records_of(records, RecordType.NEXT_PROTOCOL)
    assert protocol.body == b""
    assert not records_of(records, RecordType.NEW_COOKIE)


# --- cookies -------------------------------------------------------------------------


@pytest.mark.parametrize("aead", [AES_128_GCM_SIV, AES_SIV_CMAC_256])
def test_eight_cookies_that_open_to_the_session_keys(codec: CookieCodec, aead: int) -> None:
    records = respond(codec, message(npn(0), aead_record(aead), compliant_record()))
    cookies = [r.body for r in records_of(records, RecordType.NEW_COOKIE)]
    assert len(cookies) == MAX_COOKIES
    assert len(set(cookies)) == MAX_COOKIES  # fresh nonce per cookie
    keys = derive_keys(fake_exporter, aead, compliant=True)
    for cookie in cookies:
        assert codec.open(cookie) == (aead, *keys)


# --- record 1024 and the exporter context ---------------------------------------------


@pytest.mark.parametrize(
    ("server", "offered", "send_1024", "echo"),
    [
        ((30, 15), (30, 15), True, True),
        ((30, 15), (30,), True, True),
        ((30, 15), (30,), False, False),  # client did not ask: no echo
        ((30, 15), (15,), True, False),  # 30 not chosen: no echo
        ((15, 30), (30, 15), True, False),  # server prefers 15: no echo
    ],
)
def test_record_1024_echoed_only_when_sent_and_30_chosen(
    codec: CookieCodec,
    server: tuple[int, ...],
    offered: tuple[int, ...],
    send_1024: bool,
    echo: bool,
) -> None:
    extra = (compliant_record(),) if send_1024 else ()
    records = respond(codec, message(npn(0), aead_record(*offered), *extra), aeads=server)
    assert bool(records_of(records, RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER)) == echo


@pytest.mark.parametrize("send_1024", [True, False])
def test_gcm_siv_keys_use_the_compliant_context_with_or_without_1024(
    codec: CookieCodec, send_1024: bool
) -> None:
    """RFC 8915 5.1 (issue 11): a client offering only AES-128-GCM-SIV without record 1024
    gets keys from the context the RFC defines, not chrony's former one."""
    extra = (compliant_record(),) if send_1024 else ()
    records = respond(codec, message(npn(0), aead_record(AES_128_GCM_SIV), *extra))
    assert chosen_aead(records) == [AES_128_GCM_SIV]
    cookie = records_of(records, RecordType.NEW_COOKIE)[0].body
    opened = codec.open(cookie)
    assert opened is not None
    compliant = derive_keys(fake_exporter, AES_128_GCM_SIV, compliant=True)
    legacy = derive_keys(fake_exporter, AES_128_GCM_SIV, compliant=False)
    assert compliant != legacy
    assert opened[1:] == compliant


def test_siv_keys_use_compliant_context_even_without_1024(codec: CookieCodec) -> None:
    records = respond(codec, message(npn(0), aead_record(AES_SIV_CMAC_256)))
    opened = codec.open(records_of(records, RecordType.NEW_COOKIE)[0].body)
    assert opened is not None
    assert opened[1:] == derive_keys(fake_exporter, AES_SIV_CMAC_256, compliant=True)


# --- Server and Port Negotiation ----------------------------------------------------------


def test_server_and_port_records_when_configured(codec: CookieCodec) -> None:
    records = respond(codec, message(*GOOD), ntp_server="ntp1.example.net", ntp_port=10123)
    (server,) = records_of(records, RecordType.NTPV4_SERVER)
    (port,) = records_of(records, RecordType.NTPV4_PORT)
    assert server.body == b"ntp1.example.net"
    assert u16s(port.body) == [10123]


def test_no_server_or_port_records_unless_configured(codec: CookieCodec) -> None:
    records = respond(codec, message(*GOOD))
    assert not records_of(records, RecordType.NTPV4_SERVER)
    assert not records_of(records, RecordType.NTPV4_PORT)


def test_client_server_and_port_requests_are_accepted(codec: CookieCodec) -> None:
    request = message(
        *GOOD,
        Record(RecordType.NTPV4_SERVER, b"time.example.org"),
        Record(RecordType.NTPV4_PORT, (123).to_bytes(2, "big")),
    )
    records = respond(codec, request)
    assert error_code(records) is None
    assert len(records_of(records, RecordType.NEW_COOKIE)) == MAX_COOKIES
