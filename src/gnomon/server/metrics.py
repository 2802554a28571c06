"""Prometheus metrics, gathered off the per-packet path.

Workers keep plain integer counters where the work happens; each service
hands the exporter a :data:`MetricSource` that reads them (:class:`Readings`),
and once a second :class:`MetricsExporter` turns their growth into Prometheus
counters and sets the gauges. With several processes, prometheus-client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before any worker
starts) merges them, and the supervisor serves ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
    "gnomon_key_store_reachable": ("1 if the key store answered last time", "livemin"),
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


_COUNTERS: dict[str, tuple[str, str, bool]] = {
    # family: (name, help, labelled by outcome)
    "ntp": ("gnomon_ntp_requests", "NTP requests by outcome", True),
    "ke": ("gnomon_ke_connections", "NTS-KE connections by outcome", True),
    "roughtime": ("gnomon_roughtime_requests", "Roughtime requests by outcome", True),
    "roughtime_batches": (
        "gnomon_roughtime_batches",
        "Roughtime batches signed (one signature per version)",
        False,
    ),
    "key_store": (
        "gnomon_key_store_failures",
        "Refreshes of the cookie keys that the key store failed (the keys held kept serving)",
        False,
    ),
}


@dataclass
class Readings:
    """What one service says about itself: totals since it started, by counter family
    (a key of ``_COUNTERS``) and outcome ("" for a counter without outcomes), and gauges
    by name (a key of ``_GAUGES``)."""

    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)


MetricSource = Callable[[float], Readings]
"""A service's readings at Unix time ``now``; each service of a process provides one."""


class _Instruments:
    """Counters up front; each gauge created by the first process that sets it, so a
    process with nothing to say (an NTP worker has no certificate) adds no zero."""

    def __init__(self) -> None:
        from prometheus_client import Counter

        self.counters: dict[str, Any] = {
            family: Counter(name, text, ["outcome"] if labelled else [])
            for family, (name, text, labelled) in _COUNTERS.items()
        }
        self._gauges: dict[str, Any] = {}

    def set(self, name: str, value: float) -> None:
        gauge = self._gauges.get(name)
        if gauge is None:
            from prometheus_client import Gauge

            text, mode = _GAUGES[name]
            gauge = self._gauges[name] = Gauge(name, text, multiprocess_mode=mode)
        gauge.set(value)

    def close(self) -> None:
        """Take the instruments out of the default registry (tests build several)."""
        from prometheus_client import REGISTRY

        for instrument in [*self.counters.values(), *self._gauges.values()]:
            REGISTRY.unregister(instrument)


class MetricsExporter:
    """Publishes one server process's state; call :meth:`update` periodically.

    It knows nothing of the server: each service hands in a :data:`MetricSource`.
    """

    def __init__(
        self, sources: Sequence[MetricSource], clock: Callable[[], float] = time.time
    ) -> None:
        self.sources = list(sources)
        self.clock = clock
        self.instruments = _Instruments()
        self._seen: dict[tuple[str, str], int] = {}

    def update(self) -> None:
        now = self.clock()
        totals: dict[tuple[str, str], int] = {}
        for source in self.sources:
            readings = source(now)
            for family, values in readings.counters.items():
                for outcome, total in values.items():
                    totals[(family, outcome)] = totals.get((family, outcome), 0) + total
            for name, value in readings.gauges.items():
                self.instruments.set(name, value)
        for (family, outcome), total in totals.items():
            grown = total - self._seen.get((family, outcome), 0)
            if grown > 0:
                counter = self.instruments.counters[family]
                (counter.labels(outcome) if outcome else counter).inc(grown)
            self._seen[(family, outcome)] = total

    def close(self) -> None:
        self.instruments.close()


def synchronisation_gauges(leap: int, stratum: int) -> dict[str, float]:
    """What a time service announces, as gauges (one rule for NTP and Roughtime)."""
    synchronized = leap != 3 and 1 <= stratum < 16
    return {"gnomon_synchronized": 1 if synchronized else 0, "gnomon_stratum": stratum}


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
