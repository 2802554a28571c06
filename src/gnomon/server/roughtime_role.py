"""What one server process runs for Roughtime: keys, clock, admission, sockets.

The sans-I/O core (``proto/roughtime/server.py``) answers for one online key;
this keeps it current (a new core when the online key changes, checked every
:data:`KEY_CHECK` seconds), feeds the clock the ``[time]`` source, and opens
one :class:`RoughtimeService` per listen address.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time

from ..proto.acl import Acl
from ..proto.nts.ntp_server import TimeSource
from ..proto.ratelimit import RateLimiter
from ..proto.roughtime.server import RoughtimeServer
from .config import ServerConfig
from .roughtime import RadiusPolicy, RoughtimeClock, RoughtimeService
from .roughtime_keys import Delegated, OnlineKey, SelfDelegating, read_long_term_key
from .udp import Admission, open_udp_socket, steer_by_source

log = logging.getLogger("gnomon.roughtime")

KEY_CHECK = 30.0  # seconds between checks of the online key (and of the delegations file)
RATE_LIMIT_EXPIRY = 60.0


def online_keys_for(config: ServerConfig, now: int) -> SelfDelegating | Delegated:
    """Where online keys come from; ConfigError (one line) for a bad or unsafe key file,
    or a delegations file none of whose delegations covers ``now``."""
    if config.roughtime_delegations is not None:
        return Delegated(config.roughtime_delegations, now)
    assert config.roughtime_long_term_key is not None
    return SelfDelegating(
        read_long_term_key(config.roughtime_long_term_key), config.roughtime_delegation_period
    )


def check_roughtime_keys(config: ServerConfig) -> bytes:
    """Fail now, in one line, if workers could not get an online key; the long-term
    public key."""
    return online_keys_for(config, int(time.time())).long_term_public


class RoughtimeRole:
    """Roughtime for one server process, built from the configuration (keys read now:
    a bad key file, or delegations none of which covers now, fail the start)."""

    def __init__(self, config: ServerConfig, acl: Acl, source: TimeSource) -> None:
        self.config = config
        policy = RadiusPolicy(
            min_radius=config.roughtime_min_radius,
            leap_information=config.upstream is not None,
            local_clock_radius=config.roughtime_local_clock_radius,
        )
        self.clock = RoughtimeClock(policy, source)
        self.limiter: RateLimiter | None = None
        if config.roughtime_rate_limit:
            # No kiss-o'-death in Roughtime: a leaked answer is a real one (never larger
            # than its request, so no amplification).
            self.limiter = RateLimiter(
                config.roughtime_rate_interval,
                config.roughtime_rate_burst,
                kod=False,
                max_entries=config.ntp_rate_max_clients,
                rng=random.Random(),  # seeded from the OS: leaked answers unpredictable
            )
        self.admission = Admission(acl, self.limiter)
        now = int(time.time())
        self.keys = online_keys_for(config, now)
        self.public_key = self.keys.long_term_public
        self.services: list[RoughtimeService] = []
        self.online_key: OnlineKey | None = None
        self.core: RoughtimeServer | None = None
        self.bound_port = 0
        self.refresh(now)

    def refresh(self, now: int) -> None:
        """Serve with the online key for ``now`` (none: the services stop answering)."""
        key = self.keys.current(now)
        if key is self.online_key:
            return
        self.online_key = key
        self.core = None if key is None else RoughtimeServer(
            self.public_key, key.private, key.delegation
        )  # fmt: skip
        if key is None:
            log.error("no Roughtime delegation covers now: not answering")
        for service in self.services:
            service.core = self.core

    def open(self, loop: asyncio.AbstractEventLoop, reuse_port: bool) -> list[socket.socket]:
        config = self.config
        port = config.roughtime_port
        sockets = []
        for host in config.roughtime_addresses:
            # No receive timestamps: MIDP is read when the batch is signed, to the second.
            sock = open_udp_socket(host, port, reuse_port=reuse_port, timestamps=False)
            sockets.append(sock)
            port = sock.getsockname()[1]  # port 0: the others share the first's
            if reuse_port and self.limiter is not None:
                limiter = self.limiter
                prefix = (
                    limiter.ipv4_prefix if sock.family == socket.AF_INET else limiter.ipv6_prefix
                )
                steer_by_source(sock, config.roughtime_workers, prefix)
            service = RoughtimeService(
                self.core,
                sock,
                self.clock,
                max_batch=config.roughtime_max_batch,
                max_wait=config.roughtime_max_wait,
                admission=self.admission,
            )
            service.attach(loop)
            self.services.append(service)
        self.bound_port = port
        return sockets

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for service in self.services:
            service.detach(loop)
        self.services.clear()

    async def maintain(self) -> None:
        """Rotate online keys, re-read the delegations file, forget full rate buckets."""
        expired = time.monotonic()
        while True:
            await asyncio.sleep(KEY_CHECK)
            if isinstance(self.keys, Delegated):
                self.keys.reload_if_changed()
            self.refresh(int(time.time()))
            if self.limiter is not None and time.monotonic() - expired > RATE_LIMIT_EXPIRY:
                expired = time.monotonic()
                self.limiter.expire(expired)

    def counts(self) -> dict[str, int]:
        """Requests by outcome over every socket, admission's refusals included."""
        values: dict[str, int] = {}
        for service in self.services:
            for outcome, count in service.counters.as_dict().items():
                values[outcome] = values.get(outcome, 0) + count
        refused = self.admission.counters()
        values["denied"] = refused["denied"]
        values["rate_limited"] = refused["rate_limited"]
        values["io_error"] = sum(service.errors for service in self.services)
        return values

    @property
    def batches(self) -> int:
        return sum(service.counters.batches for service in self.services)

    @property
    def delegation_end(self) -> int | None:
        return None if self.online_key is None else self.online_key.delegation.maxt
