"""The Roughtime service (RFC 10049): batched UDP receive, one signature per batch.

The loop is the NTP service's (``udp.py``): ``recvmmsg`` batches, the same
admission (allow/deny lists, per-address rate limit) decided from the source
address before a datagram is parsed, ``sendmmsg`` for the replies. What
differs is that answers are not made one by one: the requests a receive
brings, and those arriving within ``max_wait`` after the first of them, up to
``max_batch``, are answered together by the sans-I/O core with one Merkle tree
and one Ed25519 signature per version group. A signature costs more than
everything else a response needs, so the CPU per response falls with the
batch size. The wait is bounded (and short: it adds to the client's round
trip, which bounds its uncertainty).

Dropped requests never reach the signer: under 1024 bytes, malformed, for
another server's key (SRV), without a version the server speaks, refused by
admission, or arriving while the server's time source is unsynchronised (a
wrong signed time is worse than none: it is a proof against the server).
Each is counted by reason. A response larger than its request is never sent.

Midpoint and radius come from :class:`RoughtimeClock`: the system clock (which
the local NTP daemon disciplines) and what the ``[time]`` upstream says about
it (:class:`TimeSource`), as for NTP.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..proto.nts.ntp import LEAP_UNSYNCHRONIZED, short_to_seconds
from ..proto.nts.ntp_server import TimeSource
from ..proto.roughtime.server import DropReason, Request, RoughtimeServer
from .udp import (
    AUX,
    HDR,
    IOV_LEN,
    IOVEC,
    MAX_REQUEST,
    MSG_DONTWAIT,
    NAME_LEN,
    Admission,
    Batch,
    UdpService,
)

log = logging.getLogger("gnomon.roughtime")

MIN_RADIUS = 1  # RFC 10049: RADI is never 0
MIN_RADIUS_WITHOUT_LEAP_INFORMATION = 3  # ... and at least 3 s without leap-second information


# --- time: midpoint and radius ---------------------------------------------------------------


@dataclass(frozen=True)
class RadiusPolicy:
    """How the radius is chosen.

    ``leap_information``: the server learns of leap seconds (its ``[time]``
    upstream announces them); without, RADI is at least 3 s. ``min_radius``:
    the operator's floor. ``local_clock_radius``: for demos and tests only,
    answer from the local clock with this radius even when no upstream vouches
    for it.
    """

    min_radius: int = MIN_RADIUS
    leap_information: bool = True
    local_clock_radius: int | None = None

    @property
    def floor(self) -> int:
        rfc = MIN_RADIUS if self.leap_information else MIN_RADIUS_WITHOUT_LEAP_INFORMATION
        return max(rfc, self.min_radius)


def synchronized(source: TimeSource) -> bool:
    return source.leap != LEAP_UNSYNCHRONIZED and 1 <= source.stratum < 16


def midpoint_and_radius(
    source: TimeSource, now_ns: int, policy: RadiusPolicy
) -> tuple[int, int] | None:
    """MIDP and RADI (Unix seconds) for a response signed at ``now_ns``, or None
    when the server must not answer (its time source is unsynchronised).

    MIDP is ``now`` rounded to the second, so the radius covers that rounding
    (0.5 s) plus the root distance of the source (root delay / 2 + root
    dispersion + the clock's precision), rounded up, and never less than the
    policy's floor (RFC 10049: 1 s, 3 s without leap-second information).
    """
    midpoint = (now_ns + 500_000_000) // 1_000_000_000
    if not synchronized(source):
        if policy.local_clock_radius is None:
            return None
        return midpoint, max(policy.floor, policy.local_clock_radius)
    distance = (
        short_to_seconds(source.root_delay) / 2
        + short_to_seconds(source.root_dispersion)
        + 2.0**source.precision
    )
    return midpoint, max(policy.floor, math.ceil(distance + 0.5))


@dataclass
class RoughtimeClock:
    """The time a Roughtime service signs: the system clock, vouched for by ``source``."""

    policy: RadiusPolicy = field(default_factory=RadiusPolicy)
    source: TimeSource = field(default_factory=TimeSource)

    def now(self) -> tuple[int, int] | None:
        return midpoint_and_radius(self.source, time.time_ns(), self.policy)


# --- the service -----------------------------------------------------------------------------

ANSWERED = "answered"
UNSYNCHRONIZED = "unsynchronized"
NO_KEY = "no_key"  # no online key covers now (offline delegations ran out)
OVERSIZED = "oversized"  # a response would be larger than its request: not sent
ERROR = "error"


@dataclass
class RoughtimeCounters:
    """Requests by outcome (drop reasons by their name) and signed batches."""

    outcomes: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def add(self, outcome: str, count: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def as_dict(self) -> dict[str, int]:
        return dict(self.outcomes)


class RoughtimeService(UdpService):
    """Answers Roughtime requests on ``sock`` with ``core`` (None: no key yet).

    ``max_batch`` requests at most share a signature; a request waits at most
    ``max_wait`` seconds for others to join it (0: each receive is a batch).
    """

    def __init__(
        self,
        core: RoughtimeServer | None,
        sock: socket.socket,
        clock: RoughtimeClock,
        *,
        max_batch: int = 64,
        max_wait: float = 0.0,
        admission: Admission | None = None,
    ) -> None:
        super().__init__(sock, max_batch, admission)
        self.core = core
        self.clock = clock
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.counters = RoughtimeCounters()
        self.received = 0  # datagrams read, whatever became of them
        self._pending: list[Request] = []  # parsed requests waiting for their batch
        self._destinations: list[Any] = []  # raw sockaddr (batched) or address (fallback)
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """Requests waiting for their batch to be signed."""
        return len(self._pending)

    @property
    def timer_armed(self) -> bool:
        return self._timer is not None

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().detach(loop)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- receiving

    def _drain_mmsg(self, batch: Batch) -> None:
        """One ``recvmmsg`` (at most the room left in the batch); each datagram admitted,
        then parsed; what is left waits for :meth:`flush`."""
        assert self._recvmmsg is not None
        room = batch.size - len(self._pending)
        fd = self.sock.fileno()
        count = self._recvmmsg(fd, batch.address, room, MSG_DONTWAIT, None) if room > 0 else 0
        if count <= 0:
            if count < 0:
                self._receive_failed()
            self._schedule()
            return
        self.received += count
        headers, aux, data = batch.headers, batch.aux, batch.data
        sizes_of, names_of = batch.readers(count, stamps=False)  # no receive time needed
        try:
            sizes = sizes_of(headers)
            names = names_of(aux)
        finally:
            headers[: count * HDR] = batch.headers_template[: count * HDR]
            aux[: count * AUX] = batch.aux_template[: count * AUX]
        admission = self.admission
        core = self.core
        if core is None:
            kept = count
            if admission is not None:
                now = time.monotonic()
                kept = sum(admission.decide(self._address(name)[0], now) is None for name in names)
            self.counters.add(NO_KEY, kept)
            return
        parse = core.parse_request
        pending, destinations = self._pending, self._destinations
        counters = self.counters
        now = time.monotonic() if admission is not None else 0.0
        at = 0
        for name, size in zip(names, sizes, strict=True):
            datagram = data[at : at + size]
            at += MAX_REQUEST
            if admission is not None and admission.decide(self._address(name)[0], now):
                continue  # counted by the admission
            parsed = parse(datagram)
            if parsed.__class__ is DropReason:
                counters.add(parsed.name)
                continue
            pending.append(parsed)  # type: ignore[arg-type]
            destinations.append(name)
        self._schedule()

    def _address(self, name: bytes) -> Any:
        address = self._addresses.get(name)
        return address if address is not None else self._remember(name)

    def _receive_failed(self) -> None:
        if ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
            self.errors += 1

    def _drain_recvmsg(self) -> None:
        recvmsg = self.sock.recvmsg
        admission = self.admission
        now = time.monotonic() if admission is not None else 0.0
        core = self.core
        for _ in range(self.max_batch - len(self._pending)):
            try:
                data, _, _, address = recvmsg(MAX_REQUEST)  # no timestamps asked
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors += 1
                break
            self.received += 1
            if admission is not None and admission.decide(address[0], now) is not None:
                continue
            if core is None:
                self.counters.add(NO_KEY)
                continue
            parsed = core.parse_request(data)
            if isinstance(parsed, DropReason):
                self.counters.add(parsed.name)
                continue
            self._pending.append(parsed)
            self._destinations.append(address)
        self._schedule()

    def _schedule(self) -> None:
        """Answer now when the batch is full or nobody waits; else within ``max_wait``."""
        if not self._pending:
            return
        if len(self._pending) >= self.max_batch or self.max_wait <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait, self.flush)

    # -- answering

    def flush(self) -> None:
        """Sign and send the pending batch (or drop it, counted, when the time is unknown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        requests, destinations = self._pending, self._destinations
        if not requests:
            return
        self._pending, self._destinations = [], []
        core = self.core
        stamp = self.clock.now()
        if stamp is None:
            self.counters.add(UNSYNCHRONIZED, len(requests))
            return
        if core is None or not core.covers(stamp[0]):
            self.counters.add(NO_KEY, len(requests))
            return
        try:
            replies = core.respond(requests, *stamp)
        except Exception:  # a bug must cost one batch, never the worker
            self.counters.add(ERROR, len(requests))
            log.exception("Roughtime batch of %d failed", len(requests))
            return
        self.counters.batches += 1
        if self._batch is not None:
            self._send_batch(self._batch, replies, destinations, requests)
        else:
            for reply, address, request in zip(replies, destinations, requests, strict=True):
                if not reply or len(reply) > request.size:
                    self.counters.add(OVERSIZED)
                    continue
                self.counters.add(ANSWERED)
                self._send(reply, address)

    def _send_batch(
        self,
        batch: Batch,
        replies: Sequence[bytes],
        names: Sequence[bytes],
        requests: Sequence[Request],
    ) -> None:
        send_data, send_names, send_iovecs = batch.send_data, batch.send_names, batch.send_iovecs
        name_len = batch.name_len
        pack_length = IOV_LEN.pack_into
        queued = 0
        for reply, name, request in zip(replies, names, requests, strict=True):
            length = len(reply)
            if not length or length > request.size:
                self.counters.add(OVERSIZED)
                continue
            at = queued * MAX_REQUEST
            send_data[at : at + length] = reply
            at = queued * NAME_LEN
            send_names[at : at + name_len] = name
            pack_length(send_iovecs, queued * IOVEC.size + 8, length)
            queued += 1
        if queued:
            self.counters.add(ANSWERED, queued)
            self._send_replies(batch, queued)
