"""Runs a gnomon server: NTS-KE and NTP services, keys, upstream, reloads."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..proto.cookie import CookieCodec
from ..proto.server import KeResponder, NtpResponder, TimeSource
from .certificates import CertificateSource
from .config import ServerConfig
from .ke import KeLimits, KeService
from .keys import FileKeyStore, KeyRing, KeyStore, MemoryKeyStore, RotationPolicy
from .ntp import NtpService, open_ntp_socket
from .upstream import UpstreamPoller, local_time_source

log = logging.getLogger("gnomon.server")


def initial_time_source(config: ServerConfig) -> TimeSource:
    if config.local_stratum is not None:
        return local_time_source(config.local_stratum, time.time_ns())
    return TimeSource()  # unsynchronised until an upstream says otherwise


@dataclass
class Server:
    """Everything one server process runs, built from a configuration."""

    config: ServerConfig
    key_store: KeyStore | None = None
    ready: Callable[[Server], None] | None = None
    ntp_services: list[NtpService] = field(default_factory=list)
    bound_ntp_port: int = 0
    bound_ke_port: int = 0

    def __post_init__(self) -> None:
        config = self.config
        assert config.certificate is not None and config.key is not None
        self.certificates = CertificateSource(config.certificate, config.key)
        store = self.key_store or (
            FileKeyStore(config.key_path) if config.key_path else MemoryKeyStore()
        )
        self.keys = KeyRing(store, RotationPolicy(config.rotation_period, config.keep_old))
        codec = self.keys.codec(time.time())
        self.ntp = NtpResponder(codec, initial_time_source(config), require_nts=config.require_nts)
        self.ke = KeResponder(
            self._codec,
            aeads=config.aeads,
            ntp_server=config.advertised_server,
            ntp_port=config.advertised_port,
        )
        self.ke_service = KeService(
            self.ke, self.certificates, KeLimits(config.ke_timeout, config.ke_max_connections)
        )

    def _codec(self) -> CookieCodec:
        codec = self.keys.codec(time.time())
        self.ntp.codec = codec
        return codec

    def publish_time_source(self, source: TimeSource) -> None:
        self.ntp.time_source = source

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        sockets: list[socket.socket] = []
        ntp_port = config.ntp_port
        for host in config.listen:
            sock = open_ntp_socket(host, ntp_port)
            ntp_port = sock.getsockname()[1]  # port 0: every address shares the first's choice
            sockets.append(sock)
        self.bound_ntp_port = ntp_port
        if self.ke.ntp_port is None and ntp_port != 123:
            self.ke.ntp_port = ntp_port  # tell clients where NTP is (Port Negotiation)
        servers = []
        ke_port = config.ke_port
        for host in config.listen:
            server = await self.ke_service.listen(host, ke_port)
            ke_port = server.sockets[0].getsockname()[1]
            servers.append(server)
        self.bound_ke_port = ke_port
        for sock in sockets:
            service = NtpService(self.ntp, sock)
            service.attach(loop)
            self.ntp_services.append(service)
        tasks = [asyncio.create_task(self._rotate_keys())]
        if config.upstream:
            host, _, port = config.upstream.rpartition(":")
            poller = UpstreamPoller(
                host.strip("[]") or config.upstream,
                int(port) if host else 123,
                self.publish_time_source,
                hold=config.hold,
                fallback=initial_time_source(config),
            )
            tasks.append(asyncio.create_task(poller.run()))
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "NTS-KE on port %d, NTP on port %d, addresses %s",
            ke_port,
            ntp_port,
            ", ".join(config.listen),
        )
        if self.ready is not None:
            self.ready(self)
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for service in self.ntp_services:
                service.detach(loop)
                service.sock.close()
            for server in servers:
                server.close()
            log.info("stopped")

    async def _rotate_keys(self) -> None:
        while True:
            self._codec()
            await asyncio.sleep(min(60.0, self.config.rotation_period / 4))
