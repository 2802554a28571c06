"""Hostile input: malformed messages, hostile servers, and fuzzing of every Roughtime parser.

Only gnomon's own errors may come out, no response may be accepted unless it
verifies, and nothing a peer sends makes a parser allocate beyond its input.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roughtime_helpers import MIDPOINT, make_server, vector

from gnomon.errors import (
    GnomonError,
    RoughtimeFormatError,
    RoughtimeVerificationError,
)
from gnomon.proto.roughtime import DropReason, Request, build_request, verify_response
from gnomon.proto.roughtime import message as m
from gnomon.proto.roughtime.chain import verify_report
from gnomon.proto.roughtime.client import ClientRequest, parse_client_request
from gnomon.proto.roughtime.delegation import Delegation
from gnomon.proto.roughtime.merkle import root_from_path
from gnomon.proto.roughtime.serverlist import parse_server_list

SERVER, PUBLIC = make_server()


def exchange(size: int = 1024, versions: tuple[int, ...] = (1,)) -> tuple[ClientRequest, bytes]:
    request = build_request(os.urandom(32), versions, PUBLIC, size=size)
    admitted = SERVER.parse_request(request.packet)
    assert isinstance(admitted, Request)
    return request, SERVER.respond([admitted], MIDPOINT, 3)[0]


def rebuild(response: bytes, **changes: bytes) -> bytes:
    """The response with top-level tags replaced (names as keyword arguments)."""
    values = dict(m.decode(m.unframe(response)))
    for name, value in changes.items():
        values[m.tag(name)] = value
    return m.frame(m.encode(values))


def rebuild_srep(response: bytes, resign: bool = False, **changes: bytes) -> bytes:
    """The response with SREP fields replaced; ``resign``: signed again by the online key,
    as a server that really sends those values would."""
    srep = dict(m.decode(m.decode(m.unframe(response))[m.SREP]))
    for name, value in changes.items():
        srep[m.tag(name)] = value
    encoded = m.encode(srep)
    if not resign:
        return rebuild(response, SREP=encoded)
    signature = SERVER.online_key.sign(b"Roughtime v1 response signature\x00" + encoded)
    return rebuild(response, SREP=encoded, SIG=signature)


# --- the codec ----------------------------------------------------------------------


def raw_message(tags: list[int], offsets: list[int], body: bytes) -> bytes:
    count = len(tags)
    return struct.pack(f"<{2 * count}I", count, *offsets, *tags) + body


def test_offsets_past_the_end_are_refused() -> None:
    with pytest.raises(RoughtimeFormatError):
        m.decode(raw_message([m.NONC, m.TYPE], [64], bytes(32)))


def test_unaligned_and_descending_offsets_are_refused() -> None:
    with pytest.raises(RoughtimeFormatError):
        m.decode(raw_message([m.NONC, m.TYPE], [2], bytes(8)))
    with pytest.raises(RoughtimeFormatError):
        m.decode(raw_message([m.SIG, m.NONC, m.TYPE], [8, 4], bytes(12)))


def test_duplicate_and_unsorted_tags_are_refused() -> None:
    with pytest.raises(RoughtimeFormatError, match="order"):
        m.decode(raw_message([m.NONC, m.NONC], [4], bytes(8)))
    with pytest.raises(RoughtimeFormatError, match="order"):
        m.decode(raw_message([m.TYPE, m.NONC], [4], bytes(8)))


def test_tags_sort_as_little_endian_numbers_not_ascii() -> None:
    # ASCII order would put NONC before SIG; as uint32 LE values SIG (0x00474953) comes first
    encoded = m.encode({m.NONC: bytes(32), m.SIG: bytes(64)})
    assert list(m.decode(encoded)) == [m.SIG, m.NONC]
    with pytest.raises(RoughtimeFormatError):
        m.decode(raw_message([m.NONC, m.SIG], [32], bytes(96)))


def test_too_many_tags_are_refused_before_reading_them() -> None:
    with pytest.raises(RoughtimeFormatError, match="tags"):
        m.decode(struct.pack("<I", 65) + bytes(1024))
    with pytest.raises(RoughtimeFormatError):
        m.decode(struct.pack("<I", 0xFFFFFFFF) + bytes(8))


def test_framing_must_hold_exactly_the_message() -> None:
    packet = m.frame(m.encode({m.NONC: bytes(32)}))
    assert m.unframe(packet)
    with pytest.raises(RoughtimeFormatError):
        m.unframe(packet + b"\x00" * 4)
    with pytest.raises(RoughtimeFormatError):
        m.unframe(b"ROUGHTIX" + packet[8:])


# --- hostile servers ----------------------------------------------------------------


def test_huge_path_is_refused() -> None:
    request, response = exchange(size=4096)
    with pytest.raises(RoughtimeFormatError, match="PATH"):
        verify_response(request, rebuild(response, PATH=bytes(32 * 33)), PUBLIC)
    with pytest.raises(RoughtimeFormatError, match="PATH"):
        root_from_path(bytes(32), 0, bytes(32 * 1000))


def test_vers_of_1000_entries_is_refused() -> None:
    request, response = exchange(size=4096)
    vers = b"".join(m.u32(v) for v in range(1000))
    with pytest.raises(RoughtimeFormatError):
        verify_response(request, rebuild_srep(response, VERS=vers), PUBLIC)
    with pytest.raises(RoughtimeFormatError, match="at most 32"):
        m.Message({m.VERS: vers}).u32_list(m.VERS, 32)


def test_response_larger_than_the_request_is_refused() -> None:
    request, response = exchange()
    padded = rebuild(response, ZZZZ=bytes(1024 - len(response) + 4))
    assert len(padded) > len(request.packet)
    with pytest.raises(RoughtimeFormatError, match="larger"):
        verify_response(request, padded, PUBLIC)


def test_leftover_index_bits_are_refused() -> None:
    request, response = exchange()
    with pytest.raises(RoughtimeVerificationError, match="INDX"):
        verify_response(request, rebuild(response, INDX=m.u32(1)), PUBLIC)


@pytest.mark.parametrize(
    ("where", "name", "value", "error"),
    [
        ("top", "TYPE", m.u32(0), RoughtimeFormatError),
        ("top", "NONC", bytes(32), RoughtimeVerificationError),
        ("srep", "RADI", m.u32(3600), RoughtimeVerificationError),
        ("srep", "MIDP", m.u64(MIDPOINT + 10**6), RoughtimeVerificationError),
        ("srep", "VER", m.u32(0x8000000B), RoughtimeVerificationError),
        ("srep", "VERS", m.u32(0x8000000C), RoughtimeVerificationError),
        ("srep", "ROOT", bytes(32), RoughtimeVerificationError),
        ("top", "SIG", bytes(64), RoughtimeVerificationError),
    ],
)
def test_each_field_is_checked(where: str, name: str, value: bytes, error: type) -> None:
    request, response = exchange()
    changed = (rebuild if where == "top" else rebuild_srep)(response, **{name: value})
    with pytest.raises(error):
        verify_response(request, changed, PUBLIC)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RADI", m.u32(0), "RADI is 0"),
        ("MIDP", m.u64(MIDPOINT + 2 * 86400), "outside the delegation"),
        ("VERS", m.u32(0x8000000C), "not in the server's VERS"),
        ("ROOT", bytes(32), "Merkle path"),
    ],
)
def test_signed_but_wrong_values_are_refused(name: str, value: bytes, message: str) -> None:
    request, response = exchange()
    assert verify_response(request, rebuild_srep(response, resign=True), PUBLIC)
    with pytest.raises(RoughtimeVerificationError, match=message):
        verify_response(request, rebuild_srep(response, resign=True, **{name: value}), PUBLIC)


def test_version_not_offered_is_refused() -> None:
    request, response = exchange(versions=(1,))
    narrowed = ClientRequest(request.packet, request.nonce, (0x8000000C,), PUBLIC)
    with pytest.raises(RoughtimeVerificationError, match="not offered"):
        verify_response(narrowed, response, PUBLIC)


# --- fuzzing: only gnomon errors, and the server's admission never raises ------------


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutations(base: bytes) -> st.SearchStrategy[bytes]:
    def mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(data)
        for position, value in edits:
            out[position % len(out)] = value
        return bytes(out[: max(0, len(out) - cut)])

    return st.builds(
        mutate,
        st.just(base),
        st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8),
        st.sampled_from([0, 0, 0, 1, 4, 12, 100]),
    )


_REQUEST, _RESPONSE = exchange()


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutations(_RESPONSE)))
def test_fuzz_verify_response(data: bytes) -> None:
    try:
        reply = verify_response(_REQUEST, data, PUBLIC)
    except GnomonError:
        return
    assert reply.midpoint == MIDPOINT  # only a response that truly verifies gets through


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutations(_REQUEST.packet)))
def test_fuzz_server_admission_never_raises(data: bytes) -> None:
    outcome = SERVER.parse_request(data)
    assert isinstance(outcome, Request | DropReason)
    if isinstance(outcome, Request):
        assert len(SERVER.respond([outcome], MIDPOINT, 3)[0]) <= len(data)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_decode_and_client_request(data: bytes) -> None:
    for parse in (m.decode, m.unframe, parse_client_request, m.frame_length):
        with contextlib.suppress(GnomonError):
            parse(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "servers",
                    "responses",
                    "publicKey",
                    "request",
                    "response",
                    "rand",
                    "addresses",
                    "address",
                    "protocol",
                    "version",
                    "name",
                    "format",
                    "delegations",
                    "signatures",
                    "mint",
                    "maxt",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_fuzz_json_documents(document: object) -> None:
    text = json.dumps(document)
    for parse in (parse_server_list, verify_report, Delegation.from_json):
        with contextlib.suppress(GnomonError):
            parse(text)


def test_fuzz_corpus_includes_real_reports() -> None:
    report = json.dumps(vector("draft19_appendix_b_malfeasance_report.json"))
    assert not verify_report(report).consistent


_APPENDIX_B = vector("draft19_appendix_b_malfeasance_report.json")


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2),
    st.sampled_from(["publicKey", "rand", "request", "response"]),
    st.integers(0, 1 << 16),
    st.integers(1, 255),
)
def test_any_flipped_byte_makes_a_report_prove_nothing(
    entry: int, field: str, position: int, flip: int
) -> None:
    import base64
    import copy

    document = copy.deepcopy(_APPENDIX_B)
    target = document["responses"][entry]
    if field not in target:
        field = "request"
    raw = bytearray(base64.b64decode(target[field]))
    raw[position % len(raw)] ^= flip
    target[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(GnomonError):
        verify_report(json.dumps(document))
