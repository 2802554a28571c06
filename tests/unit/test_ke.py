"""NTS-KE records and messages (gnomon.proto.nts.ke, RFC 8915 section 4)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.errors import GnomonError, KeProtocolError, KeServerError, NegotiationError
from gnomon.proto.nts.ke import (
    CRITICAL,
    MAX_MESSAGE_LEN,
    ErrorCode,
    KeRequestError,
    Record,
    RecordStream,
    RecordType,
    build_request,
    encode_records,
    parse_message,
    parse_request,
    parse_response,
    u16_list,
)

EOM = Record(RecordType.END_OF_MESSAGE, critical=True)
NPN0 = Record(RecordType.NEXT_PROTOCOL, u16_list([0]), critical=True)


def aead_record(*ids: int) -> Record:
    return Record(RecordType.AEAD_ALGORITHM, u16_list(ids), critical=True)


def cookie(n: int, length: int = 64) -> Record:
    return Record(RecordType.NEW_COOKIE, bytes([n]) * length)


def good_response(aead: int = 15, cookies: int = 8, extra: Sequence[Record] = ()) -> list[Record]:
    return [NPN0, aead_record(aead), *extra, *(cookie(i) for i in range(cookies))]


def message(records: Sequence[Record]) -> bytes:
    return encode_records([*records, EOM])


# --- records ----------------------------------------------------------------------


def test_record_encoding_and_critical_bit() -> None:
    assert Record(5, b"abc").encode() == b"\x00\x05\x00\x03abc"
    assert Record(5, b"abc", critical=True).encode() == b"\x80\x05\x00\x03abc"
    assert EOM.encode() == b"\x80\x00\x00\x00"
    assert Record(1024, b"").encode() == b"\x04\x00\x00\x00"
    assert CRITICAL == 0x8000
    with pytest.raises(ValueError):
        Record(5, bytes(0x10000)).encode()


records_strategy = st.lists(
    st.builds(
        Record,
        type=st.integers(1, 0x7FFF),
        body=st.binary(max_size=300),
        critical=st.booleans(),
    ),
    max_size=12,
)


@given(records_strategy)
def test_records_round_trip(records: list[Record]) -> None:
    assert parse_message(message(records)) == tuple(records)


@given(records_strategy, st.data())
def test_stream_chunking_does_not_matter(records: list[Record], data: st.DataObject) -> None:
    encoded = message(records)
    whole = RecordStream().feed(encoded)
    assert whole == tuple(records)

    stream = RecordStream()
    results = [stream.feed(encoded[i : i + 1]) for i in range(len(encoded))]
    assert results[-1] == whole
    assert all(r is None for r in results[:-1])
    assert stream.complete

    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(encoded) - 1)), max_size=20)))
    pieces = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    stream = RecordStream()
    results = [stream.feed(p) for p in pieces if p]
    assert results[-1] == whole
    assert all(r is None for r in results[:-1])


def test_stream_returns_none_until_end_of_message() -> None:
    stream = RecordStream()
    assert stream.feed(NPN0.encode()) is None
    assert not stream.complete
    assert stream.feed(b"") is None
    assert stream.feed(EOM.encode()) == (NPN0,)
    assert stream.complete
    # further empty reads give the same answer; data raises
    assert stream.feed(b"") == (NPN0,)
    with pytest.raises(KeProtocolError):
        stream.feed(b"\x00")


def test_records_after_end_of_message_in_the_same_read() -> None:
    with pytest.raises(KeProtocolError):
        RecordStream().feed(EOM.encode() + NPN0.encode())
    with pytest.raises(KeProtocolError):
        RecordStream().feed(NPN0.encode() + EOM.encode() + b"\x00")


def test_end_of_message_with_a_body() -> None:
    with pytest.raises(KeProtocolError, match="body"):
        RecordStream().feed(NPN0.encode() + b"\x80\x00\x00\x02ab")


def test_message_length_limit_in_one_read() -> None:
    assert MAX_MESSAGE_LEN == 16384
    filler_len = MAX_MESSAGE_LEN - 4 - 4  # one record header, and End of Message
    exact = Record(3000, bytes(filler_len)).encode() + EOM.encode()
    assert len(exact) == MAX_MESSAGE_LEN
    assert RecordStream().feed(exact) == (Record(3000, bytes(filler_len)),)
    too_long = Record(3000, bytes(filler_len + 1)).encode() + EOM.encode()
    with pytest.raises(KeProtocolError, match="longer"):
        RecordStream().feed(too_long)


def test_incomplete_record_cannot_grow_past_the_limit() -> None:
    stream = RecordStream()
    stream.feed(b"\x00\x05\xff\xff")  # announces a 65535-byte body
    with pytest.raises(KeProtocolError):
        for _ in range(20):
            stream.feed(bytes(1000))


def test_message_length_limit_applies_when_fed_in_pieces() -> None:
    msg = Record(1000, bytes(96)).encode() * 250 + EOM.encode()  # 25004 bytes
    stream = RecordStream()
    with pytest.raises(KeProtocolError):
        for i in range(0, len(msg), 1000):
            stream.feed(msg[i : i + 1000])


def test_parse_message_requires_end_of_message() -> None:
    with pytest.raises(KeProtocolError):
        parse_message(NPN0.encode())


# --- parse_response -------------------------------------------------------------------


def test_good_response() -> None:
    response = parse_response(good_response(30), (30, 15))
    assert response.aead == 30
    assert response.cookies == tuple(bytes([i]) * 64 for i in range(8))
    assert response.server is None and response.port is None
    assert not response.compliant_gcm_siv
    assert response.warnings == ()


def test_response_with_server_port_and_1024() -> None:
    extra = [
        Record(RecordType.NTPV4_SERVER, b"ntp1.example.net"),
        Record(RecordType.NTPV4_PORT, struct.pack("!H", 1123)),
        Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER),
    ]
    response = parse_response(good_response(30, extra=extra), (30, 15))
    assert response.server == "ntp1.example.net"
    assert response.port == 1123
    assert response.compliant_gcm_siv


@pytest.mark.parametrize("name", [b"192.0.2.1", b"2001:db8::1", b"a.b.c", b"time.example."])
def test_server_names_accepted(name: bytes) -> None:
    extra = [Record(RecordType.NTPV4_SERVER, name)]
    assert parse_response(good_response(extra=extra), (15,)).server == name.decode()


@pytest.mark.parametrize("code", [0, 1, 2, 77])
def test_error_record_raises_server_error(code: int) -> None:
    records = [Record(RecordType.ERROR, struct.pack("!H", code), critical=True)]
    with pytest.raises(KeServerError) as info:
        parse_response(records, (15,))
    assert info.value.code == code
    # even in an otherwise valid response
    with pytest.raises(KeServerError):
        parse_response([*good_response(), *records], (15,))


def test_error_record_with_bad_body() -> None:
    with pytest.raises(KeProtocolError):
        parse_response([Record(RecordType.ERROR, b"\x00", critical=True)], (15,))


def test_unknown_critical_record() -> None:
    with pytest.raises(KeProtocolError, match="critical"):
        parse_response(good_response(extra=[Record(0x1234, b"x", critical=True)]), (15,))


def test_unknown_non_critical_record_is_ignored() -> None:
    response = parse_response(good_response(extra=[Record(0x1234, b"xyz")]), (15,))
    assert response.aead == 15 and len(response.cookies) == 8


def test_repeated_unknown_non_critical_records_are_ignored() -> None:
    extra = [Record(0x1234, b"a"), Record(0x1234, b"b")]
    response = parse_response(good_response(extra=extra), (15,))
    assert len(response.cookies) == 8


def test_warning_is_collected() -> None:
    extra = [
        Record(RecordType.WARNING, struct.pack("!H", 7)),
        Record(RecordType.WARNING, struct.pack("!H", 9)),
    ]
    assert parse_response(good_response(extra=extra), (15,)).warnings == (7, 9)
    with pytest.raises(KeProtocolError):
        parse_response(good_response(extra=[Record(RecordType.WARNING, b"\x01")]), (15,))


def test_no_next_protocol() -> None:
    with pytest.raises(KeProtocolError, match="Next Protocol"):
        parse_response(good_response()[1:], (15,))


def test_empty_next_protocol_is_a_negotiation_failure() -> None:
    records = good_response()
    records[0] = Record(RecordType.NEXT_PROTOCOL, b"", critical=True)
    with pytest.raises(NegotiationError):
        parse_response(records, (15,))


@pytest.mark.parametrize("protocols", [[1], [0x8000], [0, 1], [1, 0]])
def test_protocol_other_than_ntpv4(protocols: list[int]) -> None:
    records = good_response()
    records[0] = Record(RecordType.NEXT_PROTOCOL, u16_list(protocols), critical=True)
    with pytest.raises(KeProtocolError):
        parse_response(records, (15,))


def test_odd_length_lists() -> None:
    records = good_response()
    records[0] = Record(RecordType.NEXT_PROTOCOL, b"\x00\x00\x00", critical=True)
    with pytest.raises(KeProtocolError):
        parse_response(records, (15,))
    records = good_response()
    records[1] = Record(RecordType.AEAD_ALGORITHM, b"\x00", critical=True)
    with pytest.raises(KeProtocolError):
        parse_response(records, (15,))


def test_empty_aead_record_is_a_negotiation_failure() -> None:
    records = good_response()
    records[1] = Record(RecordType.AEAD_ALGORITHM, b"", critical=True)
    with pytest.raises(NegotiationError):
        parse_response(records, (15, 30))


def test_missing_aead_record_is_a_negotiation_failure() -> None:
    records = good_response()
    del records[1]
    with pytest.raises(NegotiationError):
        parse_response(records, (15, 30))


@pytest.mark.parametrize(("chosen", "offered"), [(30, (15,)), (15, (30,)), (17, (15, 30))])
def test_aead_not_offered(chosen: int, offered: tuple[int, ...]) -> None:
    with pytest.raises(KeProtocolError, match="did not offer"):
        parse_response(good_response(chosen), offered)


def test_two_aeads_chosen() -> None:
    records = good_response()
    records[1] = aead_record(15, 30)
    with pytest.raises(KeProtocolError):
        parse_response(records, (15, 30))


@pytest.mark.parametrize("length", [0, 1, 15, 257, 1000])
def test_bad_cookie_length(length: int) -> None:
    with pytest.raises(KeProtocolError, match="cookie"):
        parse_response([*good_response(cookies=3), cookie(9, length)], (15,))


@pytest.mark.parametrize("length", [16, 100, 256])
def test_cookie_length_bounds_accepted(length: int) -> None:
    assert parse_response([*good_response(cookies=0), cookie(1, length)], (15,)).cookies == (
        b"\x01" * length,
    )


def test_nine_cookies() -> None:
    with pytest.raises(KeProtocolError, match="more than 8"):
        parse_response(good_response(cookies=9), (15,))


def test_no_cookie() -> None:
    with pytest.raises(KeProtocolError, match="no cookie"):
        parse_response(good_response(cookies=0), (15,))


@pytest.mark.parametrize(
    "duplicate",
    [
        Record(RecordType.NTPV4_SERVER, b"a.example"),
        Record(RecordType.NTPV4_PORT, b"\x00\x7b"),
        NPN0,
        aead_record(15),
        Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER),
    ],
)
def test_duplicate_records(duplicate: Record) -> None:
    with pytest.raises(KeProtocolError, match="duplicate"):
        parse_response(good_response(extra=[duplicate, duplicate]), (15,))


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"a" * 256,
        b"has space.example",
        b"tab\t.example",
        b"nul\x00.example",
        "n\u00e4me.example".encode(),
        b"\xff\xfe",
        b"a..b",
        b".example",
        b"x" * 64 + b".example",
    ],
)
def test_bad_server_name(name: bytes) -> None:
    extra = [Record(RecordType.NTPV4_SERVER, name)]
    with pytest.raises(KeProtocolError):
        parse_response(good_response(extra=extra), (15,))


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x00\x7b\x00"])
def test_port_record_of_wrong_length(body: bytes) -> None:
    extra = [Record(RecordType.NTPV4_PORT, body)]
    with pytest.raises(KeProtocolError, match="Port"):
        parse_response(good_response(extra=extra), (15,))


def test_record_1024_sets_compliant_flag() -> None:
    plain = parse_response(good_response(30), (30,))
    flagged = parse_response(
        good_response(30, extra=[Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER)]), (30,)
    )
    assert (plain.compliant_gcm_siv, flagged.compliant_gcm_siv) == (False, True)


# --- build_request ----------------------------------------------------------------


def test_build_request_default_shape() -> None:
    records = parse_message(build_request([30, 15]))
    assert records == (
        Record(RecordType.NEXT_PROTOCOL, b"\x00\x00", critical=True),
        Record(RecordType.AEAD_ALGORITHM, b"\x00\x1e\x00\x0f", critical=True),
        Record(RecordType.COMPLIANT_AES_128_GCM_SIV_EXPORTER, b"", critical=False),
    )
    raw = build_request([30, 15])
    assert raw.startswith(b"\x80\x01\x00\x02\x00\x00\x80\x04\x00\x04\x00\x1e\x00\x0f")
    assert raw.endswith(b"\x80\x00\x00\x00")


def test_build_request_order_is_kept() -> None:
    records = parse_message(build_request([15, 17, 30, 16]))
    assert records[1].body == u16_list([15, 17, 30, 16])


def test_build_request_without_gcm_siv_has_no_1024() -> None:
    records = parse_message(build_request([15]))
    assert [r.type for r in records] == [RecordType.NEXT_PROTOCOL, RecordType.AEAD_ALGORITHM]


def test_build_request_with_server_and_port() -> None:
    records = parse_message(build_request([15], server="ntp.example", port=4123))
    by_type = {r.type: r for r in records}
    assert by_type[RecordType.NTPV4_SERVER].body == b"ntp.example"
    assert by_type[RecordType.NTPV4_PORT].body == b"\x10\x1b"
    assert not by_type[RecordType.NTPV4_SERVER].critical


@pytest.mark.parametrize("aeads", [[], [99], [15, 2]])
def test_build_request_rejects_bad_aead_lists(aeads: list[int]) -> None:
    with pytest.raises(ValueError):
        build_request(aeads)


# --- parse_request (server side) -------------------------------------------------------


def test_parse_request_of_build_request() -> None:
    request = parse_request(parse_message(build_request([30, 15], server="x.example", port=9)))
    assert request.protocols == (0,)
    assert request.aeads == (30, 15)
    assert request.server == "x.example"
    assert request.port == 9
    assert request.compliant_gcm_siv


def test_parse_request_without_1024() -> None:
    assert not parse_request(parse_message(build_request([15]))).compliant_gcm_siv


@pytest.mark.parametrize("missing", [RecordType.NEXT_PROTOCOL, RecordType.AEAD_ALGORITHM])
def test_parse_request_missing_records(missing: RecordType) -> None:
    records = [r for r in parse_message(build_request([15])) if r.type != missing]
    with pytest.raises(KeRequestError) as info:
        parse_request(records)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_parse_request_empty_protocol_list() -> None:
    records = [Record(RecordType.NEXT_PROTOCOL, b"", critical=True), aead_record(15)]
    with pytest.raises(KeRequestError) as info:
        parse_request(records)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_parse_request_unknown_critical() -> None:
    records = [NPN0, aead_record(15), Record(0x4321, b"", critical=True)]
    with pytest.raises(KeRequestError) as info:
        parse_request(records)
    assert info.value.code == ErrorCode.UNRECOGNIZED_CRITICAL_RECORD


def test_parse_request_unknown_non_critical_is_ignored() -> None:
    assert parse_request([NPN0, aead_record(15), Record(0x4321, b"zz")]).aeads == (15,)


@pytest.mark.parametrize(
    "record",
    [
        Record(RecordType.NEW_COOKIE, b"c" * 64),
        Record(RecordType.ERROR, b"\x00\x01", critical=True),
        Record(RecordType.WARNING, b"\x00\x01", critical=True),
    ],
)
def test_parse_request_client_sends_server_records(record: Record) -> None:
    with pytest.raises(KeRequestError) as info:
        parse_request([NPN0, aead_record(15), record])
    assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "record",
    [
        Record(RecordType.NTPV4_PORT, b"\x01"),
        Record(RecordType.NTPV4_SERVER, b"bad name"),
        Record(RecordType.AEAD_ALGORITHM, b"\x00", critical=True),
        NPN0,  # a duplicate
    ],
)
def test_parse_request_malformed_records_are_bad_requests(record: Record) -> None:
    with pytest.raises(KeRequestError) as info:
        parse_request([NPN0, aead_record(15), record])
    assert info.value.code == ErrorCode.BAD_REQUEST


# --- fuzzing --------------------------------------------------------------------------

interesting_types = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 1024, 0x1234, 0x7FFF])
fuzz_records = st.lists(
    st.builds(
        Record,
        type=interesting_types,
        body=st.one_of(
            st.binary(max_size=40),
            st.sampled_from([b"", b"\x00\x00", b"\x00\x0f", b"\x00\x1e", b"\x00\x0f\x00\x1e"]),
            st.binary(min_size=16, max_size=20),
            st.from_regex(rb"\A[a-z0-9.:]{0,20}\Z"),
        ),
        critical=st.booleans(),
    ),
    max_size=14,
)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_gnomon_errors(data: bytes) -> None:
    stream = RecordStream()
    try:
        records = stream.feed(data)
        if records is not None:
            parse_response(records, (30, 15))
    except GnomonError:
        pass


@settings(max_examples=500)
@given(fuzz_records)
def test_random_records_raise_only_gnomon_errors(records: list[Record]) -> None:
    try:
        response = parse_response(records, (30, 15))
    except GnomonError:
        return
    assert response.aead in (30, 15)
    assert 1 <= len(response.cookies) <= 8


@settings(max_examples=300)
@given(fuzz_records)
def test_parse_request_raises_only_request_errors(records: list[Record]) -> None:
    try:
        request = parse_request(records)
    except KeRequestError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNRECOGNIZED_CRITICAL_RECORD)
        return
    assert request.protocols
