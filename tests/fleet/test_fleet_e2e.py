"""A fleet on one machine: a KE-only host and two NTP-only hosts sharing keys through Redis.

127.0.0.1 runs NTS-KE only and sends clients to 127.0.0.2 (Server Negotiation);
127.0.0.2 and 127.0.0.3 run NTP only. A cookie from the KE host must work on both
NTP hosts, across a key rotation, through a Redis outage, and after Redis returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import KeResult, ke_exchange
from gnomon.client.ntp import Timing, ntp_exchange
from gnomon.proto.nts.client import Association
from gnomon.server.status import fetch_metrics
from gnomon.tls import TrustStore
from tests.peers.proc import free_port

from .conftest import RedisServer
from .hosts import FleetHost

PERIOD = 10  # seconds per cookie key: short, so the test sees rotations
TIMING = Timing(timeout=3.0, retransmit=0.5, nak_grace=0.3)


def _config(
    path: Path,
    pki: DemoPki,
    redis_url: str,
    secret: Path,
    *,
    role: str,
    address: str,
    ke_port: int,
    ntp_port: int,
    metrics_port: int,
) -> Path:
    path.write_text(
        f"""
[server]
role = "{role}"
listen = ["{address}"]
ntp_port = {ntp_port}
ke_port = {ke_port}
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[nts]
aeads = [30, 15]
ntp_server = "127.0.0.2"
ntp_port = {ntp_port}
[keys]
store = "redis"
redis_url = "{redis_url}"
fleet = "test"
fleet_secret_file = "{secret}"
rotation_period = {PERIOD}
keep_old = 2
[time]
local_stratum = 10
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    return path


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, object]]:
    pki = make_demo_pki(tmp_path / "pki", names=("localhost", "127.0.0.1"))
    secret = tmp_path / "fleet.key"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    ke_port = free_port("127.0.0.1", udp=False)
    ntp_port = free_port("127.0.0.2", tcp=False)
    metrics = {name: free_port("127.0.0.1", udp=False) for name in ("ke", "ntp2", "ntp3")}
    hosts: list[FleetHost] = []
    try:
        for name, role, address in (
            ("ke", "ke", "127.0.0.1"),
            ("ntp2", "ntp", "127.0.0.2"),
            ("ntp3", "ntp", "127.0.0.3"),
        ):
            config = _config(
                tmp_path / f"{name}.toml",
                pki,
                redis_server.url,
                secret,
                role=role,
                address=address,
                ke_port=ke_port,
                ntp_port=ntp_port,
                metrics_port=metrics[name],
            )
            hosts.append(FleetHost(name, config, tmp_path))
        yield {
            "pki": pki,
            "ke_port": ke_port,
            "ntp_port": ntp_port,
            "hosts": hosts,
            "metrics": {n: f"http://127.0.0.1:{p}/metrics" for n, p in metrics.items()},
        }
    finally:
        for host in hosts:
            host.stop()


def _key_exchange(fleet: dict[str, object]) -> KeResult:
    pki: DemoPki = fleet["pki"]  # type: ignore[assignment]
    return ke_exchange(
        "localhost",
        int(fleet["ke_port"]),  # type: ignore[call-overload]
        trust=TrustStore.from_file(pki.ca_cert),
    )


def _works_on(ke: KeResult, host: str, port: int) -> bool:
    association = Association(ke.response.aead, ke.c2s, ke.s2c, ke.response.cookies[:1])
    sample, _ = ntp_exchange(association, host, port, TIMING)  # raises on NAK or timeout
    return sample.stratum == 10 and sample.new_cookies >= 1


def _store_reachable(url: str) -> float | None:
    return fetch_metrics(url).get("gnomon_key_store_reachable", {}).get("")


def _eventually(predicate: Callable[[], bool], timeout: float = 12.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def _wait_for_next_period() -> None:
    now = time.time()
    time.sleep(PERIOD - now % PERIOD + 0.5)


def test_cookie_from_ke_host_works_on_every_ntp_host(
    fleet: dict[str, object], redis_server: RedisServer
) -> None:
    port = int(fleet["ntp_port"])  # type: ignore[call-overload]
    first = _key_exchange(fleet)
    assert (first.ntp_host, first.ntp_port) == ("127.0.0.2", port)  # Server/Port Negotiation
    assert _works_on(first, "127.0.0.2", port) and _works_on(first, "127.0.0.3", port)

    # A rotation: new cookies carry the new key id; old and new work on both hosts.
    _wait_for_next_period()
    second = _key_exchange(fleet)
    assert second.response.cookies[0][:4] != first.response.cookies[0][:4]
    for ke in (first, second):
        assert _works_on(ke, "127.0.0.2", port) and _works_on(ke, "127.0.0.3", port)

    # Redis down: the fleet keeps serving with the keys it holds, KE included,
    # and every host's metrics say the store is unreachable.
    urls: dict[str, str] = fleet["metrics"]  # type: ignore[assignment]
    assert all(_store_reachable(url) == 1 for url in urls.values())
    redis_server.stop()
    during = _key_exchange(fleet)
    for ke in (first, second, during):
        assert _works_on(ke, "127.0.0.2", port) and _works_on(ke, "127.0.0.3", port)
    assert _eventually(lambda: all(_store_reachable(url) == 0 for url in urls.values()))
    served = fetch_metrics(urls["ntp3"])["gnomon_ntp_requests_total"]
    assert served.get("nts", 0) >= 3 and served.get("nak", 0) == 0

    # Redis back (empty): after the next rotation every host agrees on the new key.
    redis_server.start()
    assert _eventually(lambda: all(_store_reachable(url) == 1 for url in urls.values()))
    _wait_for_next_period()
    after = _key_exchange(fleet)
    assert after.response.cookies[0][:4] != second.response.cookies[0][:4]
    assert _works_on(after, "127.0.0.2", port) and _works_on(after, "127.0.0.3", port)
    hosts: list[FleetHost] = fleet["hosts"]  # type: ignore[assignment]
    assert all(host.process.poll() is None for host in hosts)
