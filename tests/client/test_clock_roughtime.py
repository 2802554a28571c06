"""gnomon.Clock with gnomon Roughtime servers on loopback (signed time, real client).

gnomon servers serve NTS and Roughtime together (``gnomon serve``'s services, in
process), with certificates valid only today; for lies of years, whose delegations
the real service would not sign, gnomon's sans-I/O Roughtime server answers on
loopback sockets instead (LiveRoughtime). The client's idea of "now" is injected,
never set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.clock import Clock
from gnomon.errors import NoMajorityError
from tests.client.servers import LiveRoughtime, NtsServers

NS = 1_000_000_000
YEAR = 365 * 24 * 3600 * NS
SLACK_NS = 2_000_000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), days=1)


@pytest.fixture(scope="module")
def nts(pki: DemoPki) -> Iterator[NtsServers]:
    with NtsServers(pki, lies=[0, 0]) as running:
        yield running


@pytest.fixture
def roughtime() -> Iterator[list[LiveRoughtime]]:
    servers = [LiveRoughtime(1), LiveRoughtime(2), LiveRoughtime(3, lie=3600)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def test_gnomon_servers_serving_both_protocols_agree_and_the_liar_is_named_twice(
    pki: DemoPki,
) -> None:
    with NtsServers(pki, lies=[0, 0, 0, 3600], roughtime=True) as both:
        clock = Clock([*both.urls, *both.roughtime_urls])
        now = clock.now()
        real = time.time_ns()
        status = clock.status()
    assert abs(now.unix_ns - real) <= now.error_ns + SLACK_NS
    assert now.error < 0.05
    liars = [both.urls[3].split("?")[0], both.roughtime_urls[3].split("?")[0]]
    assert status.falsetickers == liars
    assert len(status.agreed) == 6
    rows = {row.name: row for row in status.sources}
    assert rows[liars[1]].kind == "roughtime"
    assert rows[liars[1]].offset == pytest.approx(3600, abs=5)
    honest_rough = rows[both.roughtime_urls[0].split("?")[0]]
    assert honest_rough.state == "agreed" and abs(honest_rough.offset or 0) < 5


def test_roughtime_and_nts_agree_and_the_lying_roughtime_server_is_named(
    nts: NtsServers, roughtime: list[LiveRoughtime]
) -> None:
    clock = Clock([*nts.urls, *(server.url for server in roughtime)])
    now = clock.now()
    assert abs(now.unix_ns - time.time_ns()) <= now.error_ns + SLACK_NS
    assert now.error < 0.05  # the NTS intervals decide the width
    status = clock.status()
    liar = roughtime[2].url.split("?")[0]
    assert status.falsetickers == [liar]
    assert len(status.agreed) == 4
    row = next(s for s in status.sources if s.name == liar)
    assert row.offset == pytest.approx(3600, abs=5)


def test_roughtime_alone_gives_rough_time(roughtime: list[LiveRoughtime]) -> None:
    clock = Clock([server.url for server in roughtime])
    now = clock.now()
    assert abs(now.unix_ns - time.time_ns()) <= now.error_ns
    assert 3 <= now.error < 6  # radius 3 s, one second of MIDP truncation, the trip


@pytest.mark.parametrize("years", [-5, 5])
def test_bootstrap_from_a_wrong_clock_through_real_roughtime(nts: NtsServers, years: int) -> None:
    servers = [LiveRoughtime(4), LiveRoughtime(5), LiveRoughtime(6, lie=-4 * YEAR / NS)]
    try:
        clock = Clock(
            [*(server.url for server in servers), *nts.urls],
            system_clock=lambda: time.time_ns() + years * YEAR,
        )
        now = clock.now()
        real = time.time_ns()
        status = clock.status()
    finally:
        for server in servers:
            server.close()
    assert abs(now.unix_ns - real) <= now.error_ns + SLACK_NS
    assert status.verify_time == "roughtime"
    assert status.falsetickers == [servers[2].url.split("?")[0]]
    assert status.offset == pytest.approx(-years * YEAR / NS, abs=1)


def test_a_silent_roughtime_server_of_two_leaves_no_quorum_for_a_wrong_clock(
    nts: NtsServers,
) -> None:
    """The silent server is given the timeout for the whole query, retries included."""
    servers = [LiveRoughtime(7), LiveRoughtime(8)]
    servers[1].silent = True
    try:
        clock = Clock(
            [*(server.url for server in servers), *nts.urls],
            system_clock=lambda: time.time_ns() - 30 * YEAR,
            timeout=0.5,
        )
        with pytest.raises(NoMajorityError, match="NTS certificates unchecked"):
            clock.refresh()
        silent = clock.status().failed[servers[1].url.split("?")[0]]
    finally:
        for server in servers:
            server.close()
    assert silent == f"no verified Roughtime answer from 127.0.0.1:{servers[1].port} within 0.5 s"
