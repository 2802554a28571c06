"""gnomon's Roughtime client against roughly 0.3.0's server on loopback (versions 1 and
0x8000000c), blocking and asyncio, one server and a chain of three."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.client.roughtime import RoughtimeClient
from gnomon.proto.roughtime.serverlist import ServerAddress, ServerEntry
from gnomon.proto.roughtime.versions import CLIENT_VERSIONS, DRAFT_12, VERSION_1
from tests.peers.roughly import roughly_server

pytestmark = pytest.mark.interop

# The IETF interop harness's key pair, public (tests only).
SEED = "BuXi3Chpe7Nj3gCXavLUIoGbxngyrWVa3pYIHswbzbU="
PUBLIC = "Ixu7gqjJ9TU6IxsO8wxZxAFT5te6FcZZQq5vXFl35JE="


def public_of(seed_b64: str) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))
    return key.public_key().public_bytes_raw()


def test_interop_key_pair() -> None:
    assert base64.b64encode(public_of(SEED)).decode() == PUBLIC


@pytest.mark.parametrize("offer", [(VERSION_1,), (DRAFT_12,)], ids=["v1", "0x8000000c"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
async def test_gnomon_client_verifies_roughly_server(
    offer: tuple[int, ...], use_async: bool, tmp_path: Path
) -> None:
    client = RoughtimeClient(timeout=3, attempts=3)
    with roughly_server(tmp_path, SEED, radius=5) as server:
        if use_async:
            result = await client.aquery(
                server.host, server.port, public_key=PUBLIC, versions=offer
            )
        else:
            result = client.query(server.host, server.port, public_key=PUBLIC, versions=offer)
    assert result.version == offer[0]
    assert result.radius == 5
    assert result.attempts == 1  # no grease: the first answer verifies
    assert abs(result.midpoint - time.time()) < 60  # roughly reads this host's clock
    assert len(result.request) >= 1024 and len(result.response) <= len(result.request)


def test_roughly_picks_from_gnomons_full_offer(tmp_path: Path) -> None:
    with roughly_server(tmp_path, SEED) as server:
        result = RoughtimeClient(timeout=3).query(server.host, server.port, public_key=PUBLIC)
    assert result.version in CLIENT_VERSIONS


def test_greasing_roughly_server_is_retried(tmp_path: Path) -> None:
    # roughly greases with a probability; gnomon retries invalid answers, so 5 queries
    # all end verified however many greased answers came first.
    client = RoughtimeClient(timeout=3, attempts=6)
    with roughly_server(tmp_path, SEED, grease=True) as server:
        for _ in range(5):
            result = client.query(server.host, server.port, public_key=PUBLIC)
            assert result.version in CLIENT_VERSIONS


def test_chain_over_three_roughly_servers_agrees(tmp_path: Path) -> None:
    seeds = [base64.b64encode(bytes([i]) * 32).decode() for i in (1, 2, 3)]
    with (
        roughly_server(tmp_path / "a", seeds[0]) as a,
        roughly_server(tmp_path / "b", seeds[1]) as b,
        roughly_server(tmp_path / "c", seeds[2]) as c,
    ):
        entries = [
            ServerEntry(name, public_of(seed), (ServerAddress("udp", s.host, s.port),))
            for name, seed, s in zip(("a", "b", "c"), seeds, (a, b, c), strict=True)
        ]
        chain = RoughtimeClient(timeout=3).query_chain(entries)
    assert chain.consistent and chain.report is None and not chain.failures
    assert [r.server for r in chain.results] == ["a", "b", "c"] * 2
    assert chain.interval is not None
