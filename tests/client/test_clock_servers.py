"""gnomon.Clock against gnomon NTS servers on loopback: agreement, a liar, bootstrap.

The servers serve this machine's clock, so the truth here is ``time.time_ns()``;
the client's own idea of "now" (for certificate checks) is injected, never set.
Certificates are valid from 5 minutes ago until tomorrow only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.clock import Clock
from gnomon.client.session import Session
from gnomon.client.sources import RoughtimeAnswer, RoughtimeSource
from gnomon.errors import CertificateError, NoMajorityError
from tests.client.servers import NtsServers

NS = 1_000_000_000
YEAR = 365 * 24 * 3600 * NS
SLACK_NS = 2_000_000  # reading time.time_ns() after now() and scheduling, generous


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DemoPki:
    return make_demo_pki(tmp_path_factory.mktemp("pki"), days=1)


@pytest.fixture(scope="module")
def servers(pki: DemoPki) -> Iterator[NtsServers]:
    with NtsServers(pki, lies=[0, 0, 0, 3600]) as running:
        yield running


def assert_true_time(clock: Clock) -> None:
    now = clock.now()
    assert abs(now.unix_ns - time.time_ns()) <= now.error_ns + SLACK_NS
    assert now.error < 0.05


def test_clock_over_gnomon_servers_names_the_liar(servers: NtsServers) -> None:
    clock = Clock(servers.urls)
    assert_true_time(clock)
    status = clock.status()
    liar = servers.urls[3].split("?")[0]
    assert status.falsetickers == [liar]
    assert status.agreed == [url.split("?")[0] for url in servers.urls[:3]]
    row = next(s for s in status.sources if s.name == liar)
    assert row.offset == pytest.approx(3600, abs=0.1)
    assert status.verify_time == "system clock"


async def test_asyncio_clock_over_gnomon_servers(servers: NtsServers) -> None:
    clock = Clock(servers.urls[:3])
    now = await clock.anow()
    assert abs(now.unix_ns - time.time_ns()) <= now.error_ns + SLACK_NS
    assert clock.status().falsetickers == []


def test_half_liars_give_no_time(pki: DemoPki) -> None:
    with NtsServers(pki, lies=[0, 3600]) as two:
        clock = Clock(two.urls)
        with pytest.raises(NoMajorityError):
            clock.now()


def test_nts_cookies_persist_in_the_state_dir(servers: NtsServers, tmp_path: Path) -> None:
    clock = Clock(servers.urls[:3], state_dir=tmp_path)
    clock.refresh()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clock.json",
        *sorted(f"nts-127.0.0.1-{port}.json" for port in servers.ke_ports[:3]),
    ]
    again = Clock(servers.urls[:3], state_dir=tmp_path)
    again.refresh()
    assert all(row.detail["key_exchange"] is False for row in again.status().sources)


# --- bootstrap: the client's clock is years off ----------------------------------


def roughtime_sources(lies_s: list[float]) -> list[RoughtimeSource]:
    """Roughtime servers answering this machine's time (shifted by a lie), radius 1 s."""

    def answer(lie: float):  # type: ignore[no-untyped-def]
        async def query(host: str, port: int, key: bytes, timeout: float) -> RoughtimeAnswer:
            return RoughtimeAnswer(time.time_ns() + int(lie * NS), NS, 1_000_000)

        return query

    return [
        RoughtimeSource(f"rt{i}.test", 2002, bytes(32), query=answer(lie))
        for i, lie in enumerate(lies_s)
    ]


@pytest.mark.parametrize("years", [-5, 5, 30])
def test_bootstrap_from_a_wrong_clock_via_a_roughtime_quorum(
    servers: NtsServers, years: int
) -> None:
    rough = roughtime_sources([0, 0, -4 * YEAR / NS])  # one lies by four years
    clock = Clock(
        [*rough, *servers.urls[:3]],
        system_clock=lambda: time.time_ns() + years * YEAR,
    )
    assert_true_time(clock)
    status = clock.status()
    assert status.verify_time == "roughtime"
    assert status.falsetickers == [rough[2].name]
    assert len(status.agreed) == 5
    assert status.offset == pytest.approx(-years * YEAR / NS, abs=1)


@pytest.mark.parametrize("years", [-5, 5])
def test_certificates_are_checked_at_the_wrong_time_when_told_to_trust_it(
    servers: NtsServers, years: int
) -> None:
    clock = Clock(
        servers.urls[:3],
        system_clock=lambda: time.time_ns() + years * YEAR,
        trust_system_clock=True,
    )
    with pytest.raises(NoMajorityError, match="not trusted") as info:
        clock.refresh()
    assert set(clock.status().failed) == {url.split("?")[0] for url in servers.urls[:3]}
    assert "which may be wrong: add Roughtime sources" in str(info.value)


def test_without_roughtime_quorum_a_wrong_clock_gets_no_nts(servers: NtsServers) -> None:
    rough = roughtime_sources([0, 2 * YEAR / NS, -4 * YEAR / NS])
    clock = Clock(
        [*rough, *servers.urls[:3]],
        system_clock=lambda: time.time_ns() - 30 * YEAR,  # 1996: before the sane minimum
    )
    with pytest.raises(NoMajorityError, match="NTS certificates unchecked"):
        clock.refresh()
    assert {s.state for s in clock.status().sources if s.kind == "nts"} == {"not used"}


@pytest.mark.parametrize(
    ("shift", "words"),
    [(timedelta(days=-400), "not valid before"), (timedelta(days=400), "expired on")],
)
async def test_session_checks_certificates_at_the_time_it_is_given(
    servers: NtsServers, shift: timedelta, words: str
) -> None:
    session = Session(ca_file=servers.pki.ca_cert)
    port = servers.ke_ports[0]
    with pytest.raises(CertificateError, match=words):
        session.query("127.0.0.1", port, verify_time=datetime.now(UTC) + shift)
    with pytest.raises(CertificateError, match=words):
        await session.aquery("127.0.0.1", port, verify_time=datetime.now(UTC) + shift)
    assert session.key_exchanges == 0
    assert (await session.aquery("127.0.0.1", port, verify_time=datetime.now(UTC))).authenticated
