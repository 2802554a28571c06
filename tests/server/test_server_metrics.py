"""The Prometheus endpoint, scraped while a supervised server (several processes) works."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gnomon
from gnomon.certs import DemoPki
from gnomon.proto.nts.ntp import NtpHeader
from gnomon.server.status import fetch_metrics, summarize
from tests.peers.proc import START_TIMEOUT, free_port

from .helpers import ServerProcess


def _wait_for(predicate, timeout: float = START_TIMEOUT) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_metrics_count_what_the_workers_did(tmp_path: Path, pki: DemoPki) -> None:
    metrics_port = free_port("127.0.0.1", udp=False)
    config = tmp_path / "gnomon.toml"
    config.write_text(
        f"""
[server]
listen = ["127.0.0.1"]
ntp_port = 0
ke_port = 0
workers = 2
[tls]
certificate = "{pki.cert_chain}"
key = "{pki.key}"
[keys]
path = "{tmp_path / "keys.json"}"
[time]
local_stratum = 10
[metrics]
listen = "127.0.0.1:{metrics_port}"
[limits]
ntp_rate_limit = true
ntp_rate_burst = 16
ntp_rate_interval = 3600.0
"""
    )
    server = ServerProcess(config, tmp_path / "ready.json")
    try:
        info = server.info
        session = gnomon.Session(ca_file=pki.ca_cert)
        for _ in range(3):
            assert session.query("127.0.0.1", info["ke_port"]).authenticated
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(NtpHeader(transmit_ts=1).encode(), ("127.0.0.1", info["ntp_port"]))
            assert sock.recv(100)
            sock.sendto(b"\x23" + bytes(60), ("127.0.0.1", info["ntp_port"]))  # bad framing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.5", 0))  # a client over its limit: 16 answered, 14 refused
            for _ in range(30):
                sock.sendto(NtpHeader(transmit_ts=2).encode(), ("127.0.0.1", info["ntp_port"]))
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def counted() -> bool:
            values = fetch_metrics(url)
            ntp = values.get("gnomon_ntp_requests_total", {})
            ke = values.get("gnomon_ke_connections_total", {})
            return (
                ntp.get("nts") == 3
                and ntp.get("plain") == 17
                and ntp.get("rate_limited", 0) + ntp.get("rate_kiss", 0) == 14
                and ntp.get("malformed") == 1
                and (ke.get("ok") == 1)
            )

        assert _wait_for(counted), fetch_metrics(url)
        values = fetch_metrics(url)
        assert values["gnomon_synchronized"][""] == 1 and values["gnomon_stratum"][""] == 10
        assert values["gnomon_ntp_rate_limit_clients"][""] == 2  # 127.0.0.1 and 127.0.0.5
        expiry = values["gnomon_certificate_expiry_timestamp_seconds"][""]
        assert 20 * 86400 < expiry - time.time() < 31 * 86400  # demo certificates last 30 days
        text = summarize(values)
        assert "synchronised, stratum 10" in text and "nts 3" in text
        assert "2 client prefixes tracked" in text
        status = subprocess.run(
            [sys.executable, "-m", "gnomon", "status", "--url", url],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert status.returncode == 0 and "certificate: expires in" in status.stdout
    finally:
        assert server.stop() == 0


def test_exporter_reads_the_sources_it_is_given() -> None:
    """Each service hands the exporter its readings; the exporter knows no server."""
    from prometheus_client import REGISTRY

    from gnomon.server.keys import KeyRing, KeyStoreError, MemoryKeyStore, RotationPolicy
    from gnomon.server.metrics import MetricsExporter, Readings

    class FailingStore(MemoryKeyStore):
        failing = False

        def fetch(self, current: int, ids: Sequence[int]) -> dict[int, bytes]:
            if self.failing:
                raise KeyStoreError("disk on fire")
            return super().fetch(current, ids)

    store = FailingStore()
    ring = KeyRing(store, RotationPolicy(period=60, keep_old=1))
    t0 = 1_800_000_000.0
    ring.start(t0)
    ntp = {"nts": 0, "plain": 0}

    def ntp_source(now: float) -> Readings:
        return Readings({"ntp": dict(ntp)}, {"gnomon_stratum": 3})

    def other_worker_part(now: float) -> Readings:
        return Readings({"ntp": {"nts": 5}})  # totals of two sources add up

    clock = [t0 + 30]
    exporter = MetricsExporter([ring.readings, ntp_source, other_worker_part], lambda: clock[0])

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    try:
        exporter.update()
        assert sample("gnomon_ntp_requests_total", outcome="nts") == 5
        assert sample("gnomon_key_store_failures_total") == 0
        assert sample("gnomon_key_store_reachable") == 1
        assert sample("gnomon_cookie_key_id") == ring.current_id
        assert sample("gnomon_cookie_key_age_seconds") == 30
        ntp.update(nts=2, plain=7)
        store.failing = True
        assert not ring.refresh(t0 + 31) and not ring.refresh(t0 + 32)
        exporter.update()
        assert sample("gnomon_ntp_requests_total", outcome="nts") == 7
        assert sample("gnomon_ntp_requests_total", outcome="plain") == 7
        assert sample("gnomon_stratum") == 3
        assert sample("gnomon_key_store_failures_total") == 2
        assert sample("gnomon_key_store_reachable") == 0
    finally:
        exporter.close()
