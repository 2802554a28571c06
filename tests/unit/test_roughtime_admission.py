"""The server's admission fast path decides exactly as the general decoder does.

``RoughtimeServer.parse_request`` reads the common request shapes by position and
hands every other datagram to ``_parse_general`` (the codec's rules). Hypothesis
generates requests of every shape (SRV ours, another's or none, TYPE or not, 1 to
40 versions, extra tags, sizes around 1024) and mutates them where the rules live
(framing, count, offsets, tags, values): both paths must give the same outcome.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roughtime_helpers import make_server

from gnomon.proto.roughtime import DropReason, Request
from gnomon.proto.roughtime import message as m
from gnomon.proto.roughtime.merkle import build_tree, leaf_hash, root_from_path

SERVER, PUBLIC = make_server()
OTHER = make_server(seed=7)[1]
PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VERSIONS = [1, 0x8000000C, 0x8000000B, 0x80000008, 0, 2, 0xFFFFFFFF]
TAGS = [m.VER, m.SRV, m.NONC, m.TYPE, m.ZZZZ, m.PAD_GOOGLE, m.tag("ABCD"), m.SIG, m.PATH]


def often(draw: Any, usual: Any, *others: Any) -> Any:
    """``usual`` about four times in five, else one of ``others``."""
    return usual if draw(st.integers(0, 4)) else draw(st.sampled_from(others))


@st.composite
def requests(draw: Any) -> bytes:
    """A framed request of a common or nearly common shape, each part usually valid."""
    values: dict[int, bytes] = {}
    versions = draw(st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=40))
    ver = often(draw, b"".join(m.u32(v) for v in versions), None, b"", bytes(132))
    if ver is not None:
        values[m.VER] = ver
    values[m.NONC] = often(draw, bytes(range(32)), b"", bytes(28), bytes(36), bytes(64))
    srv = often(draw, SERVER.srv, hashlib.sha512(b"\xff" + OTHER).digest()[:32], bytes(4))
    if draw(st.booleans()):
        values[m.SRV] = srv
    kind = often(draw, m.u32(0), m.u32(1), bytes(8), b"")
    if draw(st.booleans()):
        values[m.TYPE] = kind
    if not draw(st.integers(0, 4)):
        for extra in draw(st.lists(st.sampled_from(TAGS[5:]), min_size=1, max_size=2)):
            values[extra] = bytes(4 * draw(st.integers(0, 3)))
    size = often(draw, 1024, 1036, 1028, 1100, 1020, 1500)
    padding = often(draw, m.ZZZZ, m.PAD_GOOGLE, m.tag("ZZZY"))
    bare = m.FRAME_HEADER + len(m.encode({**values, padding: b""}))
    values[padding] = bytes(max(0, size - bare) & ~3)
    return m.frame(m.encode(values))


def mutated(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Words and bytes overwritten (mostly in the framing and header), cut or extended,
    the framing's length then often made to match again."""

    def mutate(
        data: bytes,
        words: list[tuple[int, int]],
        edits: list[tuple[int, int]],
        cut: int,
        fix: bool,
    ) -> bytes:
        out = bytearray(data)
        for index, value in words:
            struct.pack_into("<I", out, (4 * index) % (len(out) - 3), value)
        for position, value in edits:
            out[position % len(out)] = value
        if cut < 0:
            out += bytes(-cut)
        out = out[: len(out) - max(cut, 0)]
        if fix and len(out) >= m.FRAME_HEADER:
            struct.pack_into("<I", out, 8, len(out) - m.FRAME_HEADER)
        return bytes(out)

    word_values = st.one_of(
        st.sampled_from([0, 1, 3, 4, 5, 6, 8, 32, 36, 40, 64, 68, 100, 1 << 31, 0xFFFFFFFF]),
        st.sampled_from(TAGS),
        st.integers(0, 0xFFFFFFFF),
    )
    return st.builds(
        mutate,
        base,
        st.lists(st.tuples(st.integers(0, 30), word_values), max_size=3),
        st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=3),
        st.sampled_from([0, 0, 0, 1, 2, 3, 4, 8, -1, -4, -8, 100]),
        st.booleans(),
    )


def general(data: bytes) -> Request | DropReason:
    return SERVER._parse_general(data)


@PROPERTY
@given(st.one_of(requests(), mutated(requests()), st.binary(min_size=1000, max_size=1100)))
def test_fast_path_decides_as_the_general_decoder(data: bytes) -> None:
    expected = general(data)
    assert SERVER.parse_request(data) == expected
    assert SERVER.parse_request(memoryview(bytearray(data))) == expected
    if isinstance(expected, Request):
        assert expected.leaf == leaf_hash(data) and expected.size == len(data)


@pytest.mark.parametrize("srv", [True, False])
@pytest.mark.parametrize("kind", [True, False])
@pytest.mark.parametrize("entries", [1, 2, 4, 32])
def test_common_shapes_take_the_fast_path(
    srv: bool, kind: bool, entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {m.VER: b"".join(m.u32(v) for v in [1, *range(2, entries + 1)]), m.NONC: bytes(32)}
    if srv:
        values[m.SRV] = SERVER.srv
    if kind:
        values[m.TYPE] = m.u32(0)
    values[m.ZZZZ] = bytes(1024 - m.FRAME_HEADER - len(m.encode({**values, m.ZZZZ: b""})))
    packet = m.frame(m.encode(values))
    expected = general(packet)
    assert isinstance(expected, Request) and expected.version == 1

    def refuse(data: bytes) -> None:
        raise AssertionError("the common shape took the general path")

    monkeypatch.setattr(SERVER, "_parse_general", refuse)
    assert SERVER.parse_request(packet) == expected


def naive_paths(leaves: list[bytes]) -> list[bytes]:
    """Each leaf's path the plain way: per level, the sibling of the leaf's ancestor."""
    levels, level = [], list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[0])
        levels.append(level)
        level = [
            hashlib.sha512(b"\x01" + level[i] + level[i + 1]).digest()[:32]
            for i in range(0, len(level), 2)
        ]
    return [
        b"".join(levels[depth][(index >> depth) ^ 1] for depth in range(len(levels)))
        for index in range(len(leaves))
    ]


@pytest.mark.parametrize("count", [*range(1, 18), 31, 32, 33, 63, 64, 65, 100])
def test_tree_paths_are_each_leafs_siblings_and_lead_to_the_root(count: int) -> None:
    leaves = [hashlib.sha512(bytes([i % 256, i // 256])).digest()[:32] for i in range(count)]
    root, paths = build_tree(leaves)
    assert paths == naive_paths(leaves)
    for index, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        assert root_from_path(leaf, index, path) == root
