"""A hung Redis (SIGSTOP: connections accepted by the kernel, never answered) must not
slow the serving path (issue 11, item 2): the store is read from a thread of its own,
packets and handshakes are served from the keys in memory, across a key rotation.

The bound on each reply (0.3 s) is generous on purpose, well above a loaded machine's
round trip and below the store's 0.5 s time-out that used to block the event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from gnomon.certs import DemoPki, make_demo_pki
from gnomon.client.ke import KeResult, ke_exchange
from gnomon.client.ntp import Timing, ntp_exchange
from gnomon.proto.nts.client import Association
from gnomon.proto.nts.ntp import NtpHeader
from gnomon.server.keys import KeyRing, RotationPolicy
from gnomon.server.redisstore import RedisKeyStore
from gnomon.server.status import fetch_metrics
from gnomon.tls import TrustStore
from tests.peers.proc import free_port, wait_until

from .conftest import RedisServer
from .hosts import FleetHost

PERIOD = 10  # the shortest rotation period: the freeze crosses a period boundary
REFRESH = RotationPolicy(period=PERIOD).refresh_interval  # seconds between store reads
BOUND = 0.3  # seconds: the longest any one reply may take (generous, not a benchmark)
SINGLE_SHOT = Timing(timeout=2.0, retransmit=5.0, nak_grace=0.0)  # one request, no resend


def _config(tmp_path: Path, redis_url: str, metrics_port: int) -> tuple[Path, DemoPki]:
    pki = make_demo_pki(tmp_path / "pki", names=("localhost", "127.0.0.1"))
    secret = tmp_path / "fleet.key"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
workers = 1
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[keys]
store = "redis"
redis_url = "{redis_url}"
fleet = "hang"
fleet_secret_file = "{secret}"
rotation_period = {PERIOD}
keep_old = 2
[time]
local_stratum = 10
[limits]
ke_rate_burst = 1000
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    return config, pki


class Probe:
    """Times one NTS-KE exchange, one NTS-protected and one plain NTP exchange."""

    def __init__(self, ca: Path, ke_port: int, ntp_port: int) -> None:
        self.trust = TrustStore.from_file(ca)
        self.ke_port, self.ntp_port = ke_port, ntp_port
        self.slowest = {"ke": 0.0, "nts": 0.0, "ntp": 0.0}
        self.rounds = 0
        self.key_ids: set[bytes] = set()

    def _timed(self, kind: str, started: float) -> None:
        elapsed = time.monotonic() - started
        self.slowest[kind] = max(self.slowest[kind], elapsed)
        assert elapsed < BOUND, f"{kind} reply took {elapsed:.3f} s (round {self.rounds})"

    def once(self) -> KeResult:
        self.rounds += 1
        started = time.monotonic()
        ke = ke_exchange("127.0.0.1", self.ke_port, trust=self.trust, timeout=3.0)
        self._timed("ke", started)
        self.key_ids.add(ke.response.cookies[0][:4])
        association = Association(ke.response.aead, ke.c2s, ke.s2c, ke.response.cookies[:1])
        started = time.monotonic()
        sample, _ = ntp_exchange(association, "127.0.0.1", self.ntp_port, SINGLE_SHOT)
        self._timed("nts", started)
        assert sample.stratum == 10
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            started = time.monotonic()
            sock.sendto(NtpHeader(transmit_ts=self.rounds).encode(), ("127.0.0.1", self.ntp_port))
            assert len(sock.recv(1024)) >= 48
            self._timed("ntp", started)
        return ke


def _reachable(url: str) -> float | None:
    return fetch_metrics(url).get("gnomon_key_store_reachable", {}).get("")


def test_frozen_redis_does_not_slow_replies(tmp_path: Path, redis_server: RedisServer) -> None:
    metrics_port = free_port("127.0.0.1", udp=False)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    config, pki = _config(tmp_path, redis_server.url, metrics_port)
    host = FleetHost("hang", config, tmp_path)
    try:
        probe = Probe(pki.ca_cert, host.info["ke_port"], host.info["ntp_port"])
        before = probe.once()
        assert wait_until(lambda: _reachable(url) == 1, 10, interval=0.2)

        redis_server.freeze()
        try:
            # Until a period boundary has passed (the rotation comes from the keys held)
            # and the outage has shown in the metrics for two refresh intervals (so both
            # workers' refreshes met the frozen Redis): at most 400 rounds and 4 periods.
            boundary = (time.time() // PERIOD + 1) * PERIOD + 1.0
            deadline = time.monotonic() + 4 * PERIOD
            outage_seen: float | None = None
            while time.monotonic() < deadline and probe.rounds < 400:
                probe.once()
                if outage_seen is None and _reachable(url) == 0:
                    outage_seen = time.time()
                if outage_seen and time.time() > max(boundary, outage_seen + 2 * REFRESH):
                    break
                time.sleep(0.05)  # pacing: about a dozen rounds a second
            assert outage_seen, "no refresh met the frozen Redis"
            assert time.time() > max(boundary, outage_seen + 2 * REFRESH)
            assert len(probe.key_ids) >= 2, "no rotation while Redis was frozen"
            rounds_frozen = probe.rounds
        finally:
            redis_server.thaw()

        # Recovered: the store answers again, and the next rotation brings a key the
        # ring could only get from Redis (it was not fetched before the freeze).
        assert wait_until(lambda: _reachable(url) == 1, 10, interval=0.2)
        seen = set(probe.key_ids)
        assert wait_until(
            lambda: probe.once().response.cookies[0][:4] not in seen, 2 * PERIOD, interval=0.5
        )
        assert host.process.poll() is None
        # cookies from before the freeze still work (their key is kept)
        association = Association(
            before.response.aead, before.c2s, before.s2c, before.response.cookies[1:2]
        )
        assert ntp_exchange(association, "127.0.0.1", probe.ntp_port, SINGLE_SHOT)[0]
        log = (tmp_path / "hang.log").read_text()
        for worker in ("ke[", "ntp["):  # each worker says so once, not once per refresh
            lines = [line for line in log.splitlines() if line.split(" ")[2].startswith(worker)]
            said = "\n".join(line for line in lines if "key store" in line)
            assert sum("key store failing" in line for line in lines) == 1, said
            assert sum("key store answers again" in line for line in lines) == 1, said
        assert rounds_frozen > 10
        logging.getLogger(__name__).info("slowest replies: %s", probe.slowest)
    finally:
        redis_server.thaw()
        host.stop()


def test_ring_refresh_rotates_from_memory_while_redis_is_frozen(
    redis_server: RedisServer,
) -> None:
    """In one process: a refresh hangs for the store's time-out; the codec does not."""
    policy = RotationPolicy(period=PERIOD, keep_old=2)
    store = RedisKeyStore.connect(
        redis_server.url, os.urandom(32), seed_lifetime=policy.lifetime, timeout=0.5
    )
    try:
        ring = KeyRing(store, policy)
        t = policy.period_of(time.time()) * PERIOD
        first = ring.start(t)
        redis_server.freeze()
        try:
            started = time.monotonic()
            assert not ring.refresh(t + 1)
            assert time.monotonic() - started >= 0.4  # it did wait for the frozen Redis
            started = time.monotonic()
            rotated = ring.codec(t + PERIOD)
            assert time.monotonic() - started < BOUND
            assert rotated.current_id == first.current_id + 1
        finally:
            redis_server.thaw()
        assert ring.refresh(t + PERIOD)
        assert ring.store_ok
    finally:
        store.close()
