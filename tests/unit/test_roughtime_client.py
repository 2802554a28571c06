"""gnomon's Roughtime client (gnomon.client.roughtime) against gnomon's server on loopback."""

from __future__ import annotations

import json

import pytest
from roughtime_helpers import MIDPOINT, make_server
from roughtime_loopback import LoopbackServer

from gnomon.client.roughtime import RoughtimeClient, Target, aquery_roughtime, query_roughtime
from gnomon.errors import QueryTimeoutError, RoughtimeVerificationError
from gnomon.proto.roughtime.chain import verify_report
from gnomon.proto.roughtime.serverlist import ServerAddress, ServerEntry
from gnomon.proto.roughtime.versions import DRAFT_12, VERSION_1


def test_sync_query_verifies_and_keeps_the_packets() -> None:
    server, public = make_server()
    with LoopbackServer(server, MIDPOINT, 7) as loop:
        result = query_roughtime("127.0.0.1", loop.port, public_key=public, timeout=2)
    assert (result.midpoint, result.radius, result.version) == (MIDPOINT, 7, VERSION_1)
    assert result.protocol == "udp" and result.attempts == 1
    assert len(result.request) >= 1024 and 0 < len(result.response) <= len(result.request)
    assert result.delay >= 0
    assert result.as_dict()["version"] == "0x00000001"


async def test_async_query_with_a_base64_key() -> None:
    import base64

    server, public = make_server(versions=(DRAFT_12,))
    with LoopbackServer(server, MIDPOINT) as loop:
        result = await aquery_roughtime(
            "127.0.0.1", loop.port, public_key=base64.b64encode(public).decode()
        )
    assert result.version == DRAFT_12 and result.midpoint == MIDPOINT


@pytest.mark.parametrize("use_async", [False, True])
async def test_greased_answers_are_retried_a_bounded_number_of_times(use_async: bool) -> None:
    server, public = make_server()
    client = RoughtimeClient(timeout=1, attempts=3)
    target = Target.from_host("127.0.0.1", 0, public)
    with LoopbackServer(server, MIDPOINT, grease=2) as loop:
        target = Target.from_host("127.0.0.1", loop.port, public)
        if use_async:
            result = await client.aquery_target(target)
        else:
            result = client.query_target(target)
        assert result.attempts == 3
    with LoopbackServer(server, MIDPOINT, grease=5) as loop:
        target = Target.from_host("127.0.0.1", loop.port, public)
        with pytest.raises(RoughtimeVerificationError):
            if use_async:
                await client.aquery_target(target)
            else:
                client.query_target(target)
        assert loop.received == 3  # bounded, and no TCP attempt once UDP answered


@pytest.mark.parametrize("use_async", [False, True])
async def test_tcp_when_udp_gets_no_answer(use_async: bool) -> None:
    server, public = make_server()
    client = RoughtimeClient(timeout=0.5, attempts=2)
    with LoopbackServer(server, MIDPOINT, udp=False, tcp=True) as loop:
        target = Target.from_host("127.0.0.1", loop.port, public)
        result = await client.aquery_target(target) if use_async else client.query_target(target)
    assert result.protocol == "tcp" and result.midpoint == MIDPOINT
    assert result.attempts == 3


def test_tcp_when_the_list_says_so() -> None:
    server, public = make_server()
    with LoopbackServer(server, MIDPOINT, udp=False, tcp=True) as loop:
        entry = ServerEntry("tcp-only", public, (ServerAddress("tcp", "127.0.0.1", loop.port),))
        result = RoughtimeClient(timeout=1).query_target(Target.from_entry(entry))
    assert result.protocol == "tcp" and result.attempts == 1


def test_silence_is_a_timeout() -> None:
    server, public = make_server()
    client = RoughtimeClient(timeout=0.2, attempts=2)
    with LoopbackServer(server, MIDPOINT, silent=True) as loop, pytest.raises(QueryTimeoutError):
        client.query("127.0.0.1", loop.port, public_key=public)


def entries(loops: list[LoopbackServer], keys: list[bytes]) -> list[ServerEntry]:
    return [
        ServerEntry(f"s{i}", key, (ServerAddress("udp", "127.0.0.1", loop.port),))
        for i, (loop, key) in enumerate(zip(loops, keys, strict=True))
    ]


@pytest.mark.parametrize("use_async", [False, True])
async def test_chain_of_honest_servers_agrees(use_async: bool) -> None:
    made = [make_server(seed=10 + i) for i in range(3)]
    loops = [LoopbackServer(s, MIDPOINT + i, 5) for i, (s, _) in enumerate(made)]
    try:
        servers = entries(loops, [k for _, k in made])
        client = RoughtimeClient(timeout=1)
        chain = await client.aquery_chain(servers) if use_async else client.query_chain(servers)
    finally:
        for loop in loops:
            loop.close()
    assert chain.consistent and chain.report is None
    assert [r.server for r in chain.results] == ["s0", "s1", "s2"] * 2
    assert chain.interval == (MIDPOINT + 2 - 5, MIDPOINT + 5)
    assert chain.results[0].rand is None and all(r.rand for r in chain.results[1:])


def test_chain_with_a_liar_names_it_and_gives_a_report_that_verifies() -> None:
    made = [make_server(seed=20 + i) for i in range(3)]
    lies = [0, 0, 3600]
    loops = [LoopbackServer(s, MIDPOINT + lie, 3) for (s, _), lie in zip(made, lies, strict=True)]
    try:
        chain = RoughtimeClient(timeout=1).query_chain(entries(loops, [k for _, k in made]))
    finally:
        for loop in loops:
            loop.close()
    assert not chain.consistent and chain.interval is None
    assert chain.suspects == ("s2",)
    assert set(chain.disagreeing) == {"s0", "s1", "s2"}
    assert chain.report is not None
    verdict = verify_report(chain.report)
    assert not verdict.consistent
    assert len(json.loads(chain.report)["responses"]) == 6


async def test_async_closed_ports_end_in_a_timeout_error() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    _, public = make_server()
    client = RoughtimeClient(timeout=0.3, attempts=2)
    with pytest.raises(QueryTimeoutError):
        await client.aquery("127.0.0.1", port, public_key=public)
