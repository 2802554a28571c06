"""Where the server's stratum, leap and root distance come from.

gnomon does not discipline the clock: it serves the system clock, which a
local daemon (chronyd, ntpd) keeps. It polls that daemon, or any NTP server,
with plain NTP and derives what it announces from the answer. With no
upstream it announces itself unsynchronised (leap 3, stratum 16) unless the
operator set a local stratum; when the upstream stops answering for longer
than ``hold`` it turns unsynchronised again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..proto.nts.ntp import (
    LEAP_UNSYNCHRONIZED,
    MODE_CLIENT,
    NtpHeader,
    ntp_to_unix_ns,
    seconds_to_short,
    short_to_seconds,
    unix_ns_to_ntp,
)
from ..proto.nts.ntp_server import TimeSource

log = logging.getLogger("gnomon.upstream")

# The conventional reference id of an undisciplined local clock (127.127.1.1, as chrony).
LOCAL_CLOCK_ID = b"\x7f\x7f\x01\x01"


def reference_id_for(address: str) -> bytes:
    """RFC 5905 7.3: an IPv4 address, or the first 4 bytes of the MD5 of an IPv6 one."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return ip.packed
    import hashlib  # here: loading it costs every NTP worker 3.5 MiB (libcrypto)

    return hashlib.md5(ip.packed, usedforsecurity=False).digest()[:4]


def local_time_source(stratum: int, now_ns: int) -> TimeSource:
    """An operator-declared local clock (like chrony's ``local stratum``)."""
    return TimeSource(
        leap=0, stratum=stratum, reference_id=LOCAL_CLOCK_ID, reference_ts=unix_ns_to_ntp(now_ns)
    )


def time_source_from(
    response: bytes, address: str, sent_ns: int, received_ns: int, origin: int
) -> tuple[TimeSource, float] | None:
    """What to announce after an upstream answer, and the offset to the upstream
    (seconds), or None if the answer is unusable."""
    try:
        header = NtpHeader.decode(response)
    except Exception:
        return None
    if header.origin_ts != origin or header.mode != 4:
        return None
    if header.leap == LEAP_UNSYNCHRONIZED or not 1 <= header.stratum < 15:
        return None
    t2 = ntp_to_unix_ns(header.receive_ts, sent_ns)
    t3 = ntp_to_unix_ns(header.transmit_ts, sent_ns)
    delay = max(0, (received_ns - sent_ns) - (t3 - t2)) / 1e9
    offset = ((t2 - sent_ns) + (t3 - received_ns)) / 2e9
    source = TimeSource(
        leap=header.leap,
        stratum=header.stratum + 1,
        precision=-20,
        root_delay=seconds_to_short(short_to_seconds(header.root_delay) + delay),
        root_dispersion=seconds_to_short(short_to_seconds(header.root_dispersion) + delay / 2),
        reference_id=reference_id_for(address),
        reference_ts=unix_ns_to_ntp(received_ns),
    )
    return source, offset


@dataclass
class UpstreamPoller:
    """Polls ``host:port`` every ``interval`` s and publishes a TimeSource.

    ``clock`` gives the monotonic seconds ``hold`` is measured in (tests pass a fake one).
    """

    host: str
    port: int
    publish: Callable[[TimeSource], None]
    interval: float = 16.0
    hold: float = 300.0
    timeout: float = 1.0
    fallback: TimeSource = field(default_factory=TimeSource)
    last_success: float | None = None
    last_offset: float | None = None  # seconds, upstream minus local, at the last good poll
    synchronized: bool = False
    clock: Callable[[], float] = time.monotonic

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> None:
        answer = await asyncio.to_thread(self._query)
        now = self.clock()
        if answer is not None:
            source, self.last_offset = answer
            self.last_success = now
            if not self.synchronized:
                log.info(
                    "upstream %s:%s synchronised, stratum %d", self.host, self.port, source.stratum
                )
            self.synchronized = True
            self.publish(source)
        elif self.synchronized and (
            self.last_success is None or now - self.last_success > self.hold
        ):
            log.warning(
                "upstream %s:%s lost for %.0f s: unsynchronised", self.host, self.port, self.hold
            )
            self.synchronized = False
            self.publish(self.fallback)

    def _query(self) -> tuple[TimeSource, float] | None:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
            family, _, _, _, address = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(address)
                origin = int.from_bytes(os.urandom(8))
                request = NtpHeader(mode=MODE_CLIENT, transmit_ts=origin).encode()
                sent = time.time_ns()
                sock.send(request)
                data = sock.recv(1024)
                received = time.time_ns()
        except (OSError, ValueError, OverflowError):
            return None
        return time_source_from(data, str(address[0]), sent, received, origin)
