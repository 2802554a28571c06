"""Runs a gnomon server process: NTS-KE, NTP and/or Roughtime services, keys, upstream.

One :class:`Server` runs in one process with the roles it is given; the
supervisor (``supervisor.py``) runs several of them on shared ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from ..proto.acl import Acl
from ..proto.nts.cookie import RANDOM_LEN, CookieCodec
from ..proto.nts.ke_server import KeResponder
from ..proto.nts.ntp_server import NtpResponder, TimeSource
from ..proto.ratelimit import KeRateLimiter, RateLimiter
from .config import ServerConfig, split_host_port
from .keys import KeyRing, KeyStore
from .keystores import key_policy, make_key_store
from .metrics import (
    MULTIPROC_ENV,
    MetricsExporter,
    MetricSource,
    Readings,
    serve_metrics,
    synchronisation_gauges,
)
from .ntp import Admission, NtpService, open_ntp_socket, steer_by_source
from .upstream import UpstreamPoller, local_time_source

if TYPE_CHECKING:  # imported where a role needs them: an NTP worker goes without pyOpenSSL,
    from .certificates import CertificateSource  # Roughtime's Ed25519 and Redis
    from .ke import KeService
    from .roughtime_role import RoughtimeRole

log = logging.getLogger("gnomon.server")

ROLES = frozenset({"ke", "ntp"})


def initial_time_source(config: ServerConfig) -> TimeSource:
    if config.local_stratum is not None:
        return local_time_source(config.local_stratum, time.time_ns())
    return TimeSource()  # unsynchronised until an upstream says otherwise


KEY_CHECK_INTERVAL = 1.0  # seconds between looks at the key ring (rotations, new keys)
METRICS_INTERVAL = 1.0  # seconds between metric updates
RATE_LIMIT_EXPIRY = 60.0  # seconds between sweeps of the NTP rate limiter's table


def roles_of(config: ServerConfig) -> frozenset[str]:
    roles = ROLES if config.role == "both" else frozenset({config.role})
    return roles | {"roughtime"} if config.roughtime else roles


def drop_privileges(user: str) -> None:
    """Become ``user`` (and its group) once the ports are bound; no way back."""
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    log.info("running as %s (uid %d)", user, entry.pw_uid)


@dataclass
class Server:
    """Everything one server process runs, built from a configuration."""

    config: ServerConfig
    key_store: KeyStore | None = None
    ready: Callable[[Server], None] | None = None
    roles: frozenset[str] = ROLES
    reuse_port: bool = False
    certificate_feed: Connection | None = None  # renewals from a supervisor that stays root
    ntp_services: list[NtpService] = field(default_factory=list)
    bound_ntp_port: int = 0
    bound_ke_port: int = 0
    clock: Callable[[], float] = time.monotonic  # certificate checks and upstream hold
    roughtime: RoughtimeRole | None = None

    def __post_init__(self) -> None:
        config = self.config
        if self.roles is ROLES:
            self.roles = roles_of(config)
        self.key_store = self.key_store or make_key_store(config)
        self.keys = KeyRing(self.key_store, key_policy(config))
        self._cookie_codec = self.keys.start(time.time())  # a store that cannot: start fails
        self.ntp = NtpResponder(
            self._cookie_codec,
            initial_time_source(config),
            seed=os.urandom(RANDOM_LEN),
            require_nts=config.require_nts,
        )
        advertised_port = config.advertised_port
        if advertised_port is None and config.ntp_port not in (0, 123):
            advertised_port = config.ntp_port  # tell clients where NTP is (Port Negotiation)
        self.ke = KeResponder(
            lambda _unix_ns: self._cookie_codec,
            aeads=config.aeads,
            ntp_server=config.advertised_server,
            ntp_port=advertised_port,
        )
        self.acl = Acl(allow=config.allow, deny=config.deny)
        self.ntp_limiter: RateLimiter | None = None
        if config.ntp_rate_limit:
            self.ntp_limiter = RateLimiter(
                config.ntp_rate_interval,
                config.ntp_rate_burst,
                max_entries=config.ntp_rate_max_clients,
                rng=random.Random(),  # seeded from the OS: leaked kisses unpredictable
            )
        self.ntp_admission = Admission(self.acl, self.ntp_limiter)
        self.certificates: CertificateSource | None = None
        self.ke_service: KeService | None = None
        if "ke" in self.roles:
            assert config.certificate is not None and config.key is not None
            from .certificates import CertificateSource
            from .ke import KeLimits, KeService

            self.certificates = CertificateSource(
                config.certificate,
                config.key,
                clock=self.clock,
                watch=self.certificate_feed is None,  # else the supervisor watches the files
            )
            limits = KeLimits(config.ke_timeout, config.ke_max_connections)
            self.ke_service = KeService(
                self.ke,
                self.certificates,
                limits,
                acl=self.acl,
                rate_limiter=KeRateLimiter(config.ke_rate_interval, config.ke_rate_burst),
            )
        if "roughtime" in self.roles:
            from .roughtime_role import RoughtimeRole

            self.roughtime = RoughtimeRole(config, self.acl, initial_time_source(config))
        self._stop: asyncio.Event | None = None
        self.poller: UpstreamPoller | None = None

    def install(self, codec: CookieCodec) -> None:
        """Put ``codec`` in force for NTP replies and NTS-KE cookies alike."""
        self._cookie_codec = codec
        self.ntp.codec = codec

    def publish_time_source(self, source: TimeSource) -> None:
        self.ntp.time_source = source
        if self.roughtime is not None:
            self.roughtime.clock.source = source

    def stop(self) -> None:
        """Ask :meth:`run` to return (from the event loop's thread)."""
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        config = self.config
        sockets: list[socket.socket] = []
        servers: list[asyncio.Server] = []
        tasks: list[asyncio.Task[None]] = []
        stop_metrics: Callable[[], None] | None = None
        try:
            if "ntp" in self.roles:
                ntp_port = config.ntp_port
                for host in config.listen:
                    sock = open_ntp_socket(host, ntp_port, reuse_port=self.reuse_port)
                    ntp_port = sock.getsockname()[1]  # port 0: the others share the first's
                    sockets.append(sock)
                self.bound_ntp_port = ntp_port
                if self.ke.ntp_port is None and ntp_port != 123:
                    self.ke.ntp_port = ntp_port
                for sock in sockets:
                    if self.reuse_port and self.ntp_limiter is not None:
                        # One bucket per client needs one worker per client.
                        limiter = self.ntp_limiter
                        prefix = (
                            limiter.ipv4_prefix
                            if sock.family == socket.AF_INET
                            else limiter.ipv6_prefix
                        )
                        steer_by_source(sock, config.workers, prefix)
                    service = NtpService(self.ntp, sock, admission=self.ntp_admission)
                    service.attach(loop)
                    self.ntp_services.append(service)
            if self.ke_service is not None:
                ke_port = config.ke_port
                for host in config.listen:
                    server = await self.ke_service.listen(host, ke_port, reuse_port=self.reuse_port)
                    ke_port = server.sockets[0].getsockname()[1]
                    servers.append(server)
                self.bound_ke_port = ke_port
            if self.roughtime is not None:
                sockets += self.roughtime.open(loop, self.reuse_port)
                tasks.append(asyncio.create_task(self.roughtime.maintain()))
            # Built before the drop: it imports prometheus_client, which an unprivileged
            # user may not be able to read where Python is installed for root only.
            exporter = None
            if config.metrics_listen is not None:
                exporter = MetricsExporter(self.metric_sources())
            if config.metrics_listen is not None and MULTIPROC_ENV not in os.environ:
                # one process: /metrics served here, its port bound before the drop
                stop_metrics = serve_metrics(config.metrics_listen, multiprocess=False)
            if config.user is not None:
                drop_privileges(config.user)
            feed = self.certificate_feed
            if feed is not None and self.certificates is not None:
                loop.add_reader(feed.fileno(), self._take_certificates, loop, feed)
            tasks.append(asyncio.create_task(self._rotate_keys()))
            if self.ntp_limiter is not None and "ntp" in self.roles:
                tasks.append(asyncio.create_task(self._expire_rate_limits(self.ntp_limiter)))
            if config.upstream and ("ntp" in self.roles or "roughtime" in self.roles):
                host, port = split_host_port(config.upstream, 123)
                self.poller = UpstreamPoller(
                    host,
                    port,
                    self.publish_time_source,
                    hold=config.hold,
                    fallback=initial_time_source(config),
                    clock=self.clock,
                )
                tasks.append(asyncio.create_task(self.poller.run()))
            if exporter is not None:
                tasks.append(asyncio.create_task(self._export_metrics(exporter)))
            for signum in (signal.SIGINT, signal.SIGTERM):
                # Outside the main thread the owner stops us with stop().
                with contextlib.suppress(RuntimeError, ValueError):
                    loop.add_signal_handler(signum, self._stop.set)
            log.info(
                "serving %s on %s (NTS-KE port %d, NTP port %d%s)",
                "+".join(sorted(self.roles)),
                ", ".join(config.listen),
                self.bound_ke_port,
                self.bound_ntp_port,
                "" if self.roughtime is None else f", Roughtime port {self.roughtime.bound_port}",
            )
            if self.ready is not None:
                self.ready(self)
            await self._stop.wait()
        finally:
            if self.certificate_feed is not None:
                loop.remove_reader(self.certificate_feed.fileno())
            if stop_metrics is not None:
                stop_metrics()
            for task in tasks:
                task.cancel()
            for service in self.ntp_services:
                service.detach(loop)
            if self.roughtime is not None:
                self.roughtime.close(loop)
            for sock in sockets:
                sock.close()
            for server in servers:
                server.close()
            if self.ke_service is not None:
                self.ke_service.close()
            self.ntp_services.clear()
            log.info("stopped")

    def _take_certificates(self, loop: asyncio.AbstractEventLoop, feed: Connection) -> None:
        """A renewed certificate and key from the supervisor (which could read them)."""
        assert self.certificates is not None
        try:
            while feed.poll():
                cert_pem, key_pem = feed.recv()
                self.certificates.install(cert_pem, key_pem)
        except (EOFError, OSError):
            loop.remove_reader(feed.fileno())  # the supervisor is gone; so will this worker be

    def metric_sources(self) -> list[MetricSource]:
        """What each service of this process counts, for the metrics exporter."""
        sources: list[MetricSource] = [self.keys.readings]
        if "ntp" in self.roles:
            sources.append(self._ntp_readings)
        if self.ke_service is not None:
            sources.append(self._ke_readings)
        if self.roughtime is not None:
            sources.append(self._roughtime_readings)
        return sources

    def _ntp_readings(self, now: float) -> Readings:
        values = self.ntp.counters.as_dict()
        values["io_error"] = sum(service.errors for service in self.ntp_services)
        values.update(self.ntp_admission.counters())
        source = self.ntp.time_source
        readings = Readings({"ntp": values}, synchronisation_gauges(source.leap, source.stratum))
        if self.ntp_limiter is not None:
            readings.gauges["gnomon_ntp_rate_limit_clients"] = len(self.ntp_limiter)
        if self.poller is not None and self.poller.last_offset is not None:
            readings.gauges["gnomon_upstream_offset_seconds"] = self.poller.last_offset
        return readings

    def _ke_readings(self, now: float) -> Readings:
        assert self.ke_service is not None
        readings = Readings(
            {"ke": {**self.ke.counters.as_dict(), **self.ke_service.stats()}},
            {"gnomon_ke_in_flight": self.ke_service.active},
        )
        if self.certificates is not None:
            expiry = self.certificates.expiry.timestamp()
            readings.gauges["gnomon_certificate_expiry_timestamp_seconds"] = expiry
        return readings

    def _roughtime_readings(self, now: float) -> Readings:
        roughtime = self.roughtime
        assert roughtime is not None
        readings = Readings(
            {"roughtime": roughtime.counts(), "roughtime_batches": {"": roughtime.batches}}
        )
        if "ntp" not in self.roles:
            source = roughtime.clock.source
            readings.gauges.update(synchronisation_gauges(source.leap, source.stratum))
        end = roughtime.delegation_end
        if end is not None:
            readings.gauges["gnomon_roughtime_delegation_expiry_timestamp_seconds"] = end
        return readings

    async def _export_metrics(self, exporter: MetricsExporter) -> None:
        while True:
            exporter.update()
            await asyncio.sleep(METRICS_INTERVAL)

    async def _expire_rate_limits(self, limiter: RateLimiter) -> None:
        """Give back the memory of clients whose buckets are full again."""
        while True:
            await asyncio.sleep(RATE_LIMIT_EXPIRY)
            limiter.expire(time.monotonic())

    async def _rotate_keys(self) -> None:
        """Keys change on time from what the ring holds; the store is read in a thread of
        its own, so a hung store (file lock, Redis) never delays a packet or handshake."""
        stop = threading.Event()
        refresher = threading.Thread(
            target=self.keys.run, args=(stop,), name="gnomon-keys", daemon=True
        )
        refresher.start()
        try:
            while True:
                now = time.time()
                codec = self.keys.codec(now)
                if codec is not self._cookie_codec:
                    self.install(codec)
                # look again in a second, or just after the next rotation if that is sooner
                period = self.keys.policy.period
                await asyncio.sleep(min(KEY_CHECK_INTERVAL, period - now % period + 0.001))
        finally:
            stop.set()  # the thread ends after its store call (bounded by the store's time-outs)
