"""gnomon.Clock and ``gnomon sync --dry-run`` over real peers on loopback: chrony's NTS
server, gnomon's NTS servers, gnomon's Roughtime server and roughly's Roughtime server.

Every server serves this machine's clock, except one gnomon NTS server told that its
clock is an hour ahead: it must be named as the falseticker and leave the result alone.
The clock guard (conftest) checks the kernel clock state is unchanged afterwards.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gnomon.certs import DemoPki
from gnomon.client.clock import Clock
from tests.client.servers import NtsServers
from tests.peers import ChronyServer, chrony_nts_server
from tests.peers.roughly import RoughlyServer, roughly_server

pytestmark = pytest.mark.interop

SEED = "BuXi3Chpe7Nj3gCXavLUIoGbxngyrWVa3pYIHswbzbU="  # the IETF interop key pair (public)
SLACK_NS = 2_000_000


def roughly_url(server: RoughlyServer) -> str:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(SEED))
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    return f"roughtime://{server.host}:{server.port}?key={public}"


@pytest.fixture
def chrony(tmp_path: Path, demo_pki: DemoPki) -> Iterator[ChronyServer]:
    with chrony_nts_server(tmp_path / "chrony", demo_pki) as server:
        yield server


@pytest.fixture
def gnomon(demo_pki: DemoPki) -> Iterator[NtsServers]:
    """gnomon servers with NTS and Roughtime (gnomon serve's services, in process)."""
    with NtsServers(demo_pki, lies=[0, 3600], roughtime=True) as servers:
        yield servers


@pytest.fixture
def roughly(tmp_path: Path) -> Iterator[RoughlyServer]:
    with roughly_server(tmp_path / "roughly", SEED, radius=3) as server:
        yield server


@pytest.fixture
def sources(
    demo_pki: DemoPki,
    chrony: ChronyServer,
    gnomon: NtsServers,
    roughly: RoughlyServer,
) -> list[str]:
    return [
        f"nts://127.0.0.1:{chrony.ke_port}?ca={demo_pki.ca_cert}",
        gnomon.urls[0],
        gnomon.roughtime_urls[0],
        roughly_url(roughly),
        gnomon.urls[1],  # the liar, an hour ahead
    ]


def name(url: str) -> str:
    return url.split("?")[0]


def test_clock_over_chrony_gnomon_and_roughly_agrees_and_names_the_liar(
    sources: list[str],
) -> None:
    clock = Clock(sources)
    now = clock.now()
    real = time.time_ns()
    assert abs(now.unix_ns - real) <= now.error_ns + SLACK_NS
    assert now.error < 0.05  # two NTS sources are needed for a quorum of 3 of 5
    status = clock.status()
    assert status.falsetickers == [name(sources[4])]
    assert status.agreed == [name(url) for url in sources[:4]]
    kinds = {row.name: row.kind for row in status.sources}
    assert [kinds[name(url)] for url in sources[:4]] == ["nts", "nts", "roughtime", "roughtime"]
    chrony_row = next(row for row in status.sources if row.name == name(sources[0]))
    assert chrony_row.detail["stratum"] == 10
    liar_row = next(row for row in status.sources if row.name == name(sources[4]))
    assert liar_row.offset == pytest.approx(3600, abs=0.1)


async def test_asyncio_clock_over_the_peers(sources: list[str]) -> None:
    clock = Clock(sources)
    now = await clock.anow()
    assert abs(now.unix_ns - time.time_ns()) <= now.error_ns + SLACK_NS
    assert clock.status().falsetickers == [name(sources[4])]


def test_sync_dry_run_reports_the_same(sources: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gnomon", "sync", "--dry-run", "--json", *sources],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    states = {row["name"]: row["state"] for row in document["status"]["sources"]}
    assert states == {
        **{name(url): "agreed" for url in sources[:4]},
        name(sources[4]): "falseticker",
    }
    assert document["action"]["action"] == "none"
    assert abs(document["action"]["offset"]) <= document["action"]["error"]
    assert document["applied"] is False
