"""Properties of the Roughtime codec and Merkle trees, and server lists."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gnomon.errors import RoughtimeServerListError
from gnomon.proto.roughtime import message as m
from gnomon.proto.roughtime.merkle import build_tree, leaf_hash, root_from_path
from gnomon.proto.roughtime.serverlist import parse_server_list, split_address

values = st.dictionaries(
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
    max_size=m.MAX_TAGS,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_encode_decode_round_trip(message: dict[int, bytes]) -> None:
    encoded = m.encode(message)
    decoded = m.decode(encoded)
    assert dict(decoded) == message
    assert list(decoded) == sorted(message)
    assert m.unframe(m.frame(encoded)) == encoded


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.sampled_from([32, 64]))
def test_every_leaf_path_leads_to_the_root(count: int, size: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "little"), size) for i in range(count)]
    root, paths = build_tree(leaves, size)
    assert len({len(p) for p in paths}) == 1  # one depth: one response shape per batch
    for index, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        assert root_from_path(leaf, index, path, size) == root
        if count > 1:
            other = (index + 1) % count
            assert root_from_path(leaf, other, path, size) != root


def test_tag_names() -> None:
    assert m.tag("SIG") == 0x00474953 and m.tag("NONC") == 0x434E4F4E
    assert m.tag_name(m.ZZZZ) == "ZZZZ" and m.tag_name(m.PAD_GOOGLE) == "0xff444150"


def test_server_list_is_lenient_where_published_lists_differ() -> None:
    key = "AW5uAoTSTDfG5NfY1bTh08GUnOqlRb+HVhbJ3ODJvsE="
    document = {
        "servers": [
            {
                "name": "a",
                "version": "0x8000000c",
                "publicKeyType": "ed25519",
                "publicKey": key,
                "addresses": [{"protocol": "udp", "address": "a.example:2002"}],
            },
            {
                "name": "b",
                "version": "1",
                "publicKey": key,
                "addresses": [
                    {"protocol": "tcp", "address": "[2001:db8::1]:2002"},
                    {"protocol": "quic", "address": "b.example:1"},
                ],
            },
            {"name": "c", "publicKeyType": "rsa", "publicKey": "x", "addresses": []},
            {
                "name": "d",
                "version": 1,
                "publicKey": "01" * 32,
                "addresses": [{"protocol": "udp", "address": "d.example:2003"}],
            },
        ],
        "reports": "https://reports.example/",
    }
    listing = parse_server_list(json.dumps(document))
    assert [s.name for s in listing.servers] == ["a", "b", "d"]
    assert [s.version for s in listing.servers] == [0x8000000C, 1, 1]
    assert listing.servers[1].tcp()[0].host == "2001:db8::1"
    assert listing.servers[2].public_key == bytes([1]) * 32
    assert listing.reports == "https://reports.example/"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"servers": []}',
        '{"servers": [{"name": "x", "publicKey": "AAAA", "addresses": []}]}',
        '{"servers": [{"name": "x", "version": "one", "publicKey": "%s", '
        '"addresses": [{"address": "h:1"}]}]}' % ("A" * 43 + "="),
    ],
)
def test_bad_server_lists(text: str) -> None:
    with pytest.raises(RoughtimeServerListError):
        parse_server_list(text)


def test_split_address() -> None:
    assert split_address("h:2002") == ("h", 2002)
    assert split_address("[::1]:5") == ("::1", 5)
    assert split_address("::1", 2002) == ("::1", 2002)
    assert split_address("h", 2002) == ("h", 2002)
    for bad in ("h:0", "h:x", "[::1", ":5"):
        with pytest.raises(RoughtimeServerListError):
            split_address(bad, 2002)
