"""Prometheus metrics, gathered off the per-packet path.

Workers keep plain integer counters where the work happens; once a second
:class:`MetricsExporter` turns their growth into Prometheus counters and
sets the gauges. With several processes, prometheus-client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before any worker
starts) merges them, and the supervisor serves ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("gnomon.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: str, owner: tuple[int, int] | None = None) -> None:
    """Set (and empty) the shared folder; must run before prometheus_client is imported
    in any process that will write to it. ``owner`` (uid, gid) gets the folder: the
    workers write it after dropping root (the supervisor, root, still reads it)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    if owner is not None:
        os.chown(path, *owner)
    os.environ[MULTIPROC_ENV] = path


_Mode = Literal["livesum", "livemax", "livemin"]
_GAUGES: dict[str, tuple[str, _Mode]] = {
    # name: (help, how values of several processes combine)
    "gnomon_ke_in_flight": ("NTS-KE connections open", "livesum"),
    "gnomon_ntp_rate_limit_clients": ("Client prefixes the NTP rate limiter tracks", "livesum"),
    "gnomon_cookie_key_id": ("Cookie key in force", "livemax"),
    "gnomon_cookie_key_age_seconds": ("Age of the cookie key in force", "livemax"),
    "gnomon_key_store_reachable": ("1 if the shared key store answered last time", "livemin"),
    "gnomon_synchronized": ("1 if the server announces a synchronised clock", "livemin"),
    "gnomon_stratum": ("Stratum announced", "livemax"),
    "gnomon_upstream_offset_seconds": ("Offset to the upstream at the last poll", "livemax"),
    "gnomon_roughtime_delegation_expiry_timestamp_seconds": (
        "When the Roughtime online key in force stops being delegated (Unix time)",
        "livemin",
    ),
    "gnomon_certificate_expiry_timestamp_seconds": (
        "When the NTS-KE certificate expires (Unix time)",
        "livemin",
    ),
}


class _Instruments:
    """Counters up front; each gauge created by the first process that sets it, so a
    process with nothing to say (an NTP worker has no certificate) adds no zero."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        self.ntp = Counter("gnomon_ntp_requests", "NTP requests by outcome", ["outcome"])
        self.ke = Counter("gnomon_ke_connections", "NTS-KE connections by outcome", ["outcome"])
        self.roughtime = Counter(
            "gnomon_roughtime_requests", "Roughtime requests by outcome", ["outcome"]
        )
        self.roughtime_batches = Counter(
            "gnomon_roughtime_batches", "Roughtime batches signed (one signature per version)"
        )
        self._gauges: dict[str, Any] = {}

    def set(self, name: str, value: float) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            from prometheus_client import Gauge

            text, mode = _GAUGES[name]
            gauge = self._gauges[name] = Gauge(name, text, multiprocess_mode=mode)
        gauge.set(value)


class MetricsExporter:
    """Publishes one server process's state; call :meth:`update` periodically."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.instruments = _Instruments()
        self._seen: dict[tuple[str, str], int] = {}

    def _count(self, counter: Any, family: str, values: dict[str, int]) -> None:
        for outcome, total in values.items():
            before = self._seen.get((family, outcome), 0)
            if total > before:
                counter.labels(outcome).inc(total - before)
            self._seen[(family, outcome)] = total

    def update(self) -> None:
        server, metrics = self.server, self.instruments
        if "ntp" in server.roles:
            values = server.ntp.counters.as_dict()
            values["io_error"] = sum(service.errors for service in server.ntp_services)
            values.update(server.ntp_admission.counters())
            self._count(metrics.ntp, "ntp", values)
            source = server.ntp.time_source
            synchronized = source.leap != 3 and 1 <= source.stratum < 16
            metrics.set("gnomon_synchronized", 1 if synchronized else 0)
            metrics.set("gnomon_stratum", source.stratum)
            if server.ntp_limiter is not None:
                metrics.set("gnomon_ntp_rate_limit_clients", len(server.ntp_limiter))
            if server.poller is not None and server.poller.last_offset is not None:
                metrics.set("gnomon_upstream_offset_seconds", server.poller.last_offset)
        roughtime = server.roughtime
        if roughtime is not None:
            self._count(metrics.roughtime, "roughtime", roughtime.counts())
            batches = roughtime.batches
            before = self._seen.get(("roughtime", "batches"), 0)
            if batches > before:
                metrics.roughtime_batches.inc(batches - before)
            self._seen[("roughtime", "batches")] = batches
            if "ntp" not in server.roles:
                source = roughtime.clock.source
                synchronized = source.leap != 3 and 1 <= source.stratum < 16
                metrics.set("gnomon_synchronized", 1 if synchronized else 0)
                metrics.set("gnomon_stratum", source.stratum)
            end = roughtime.delegation_end
            if end is not None:
                metrics.set("gnomon_roughtime_delegation_expiry_timestamp_seconds", end)
        ke = server.ke_service
        if ke is not None:
            self._count(metrics.ke, "ke", {**server.ke.counters.as_dict(), **ke.stats()})
            metrics.set("gnomon_ke_in_flight", ke.active)
            if server.certificates is not None:
                expiry = server.certificates.expiry.timestamp()
                metrics.set("gnomon_certificate_expiry_timestamp_seconds", expiry)
        key_id = server.keys.current_id
        if key_id is not None:
            metrics.set("gnomon_cookie_key_id", key_id)
            age = time.time() - server.keys.policy.start_of(key_id)
            metrics.set("gnomon_cookie_key_age_seconds", age)
        if server.keys.store_ok is not None:
            metrics.set("gnomon_key_store_reachable", 1 if server.keys.store_ok else 0)


def serve_metrics(listen: str, multiprocess: bool) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port``; returns a function that stops it."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    from .config import split_host_port

    host, port = split_host_port(listen, 9123)
    registry: Any = REGISTRY
    if multiprocess:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, thread = start_http_server(port, host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        thread.join(5)

    return stop


def mark_worker_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
