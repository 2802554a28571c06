"""NTS-protected NTP over UDP, blocking and asyncio.

The receive timestamp comes from the kernel (``SO_TIMESTAMPNS``) when the
platform gives one, so queueing in Python does not count as network delay.
:class:`UdpExchange` keeps the retransmission and NAK rules in one place;
:func:`ntp_exchange` and :func:`antp_exchange` only wait on a socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from .._frozen import Frozen
from .._os import SO_TIMESTAMPNS, TIMESTAMP_ANCILLARY_SPACE, timestamp_from_ancillary
from ..errors import (
    AuthenticationError,
    GnomonError,
    NoCookiesError,
    NtpFormatError,
    NtsNakError,
    QueryTimeoutError,
    ResponseMismatchError,
)
from ..hostport import lookup_name
from ..proto.nts.aead import algorithm
from ..proto.nts.client import Association, PendingRequest, Sample
from ..proto.nts.fields import UNIQUE_ID_LEN

MAX_DATAGRAM = 4096


class Timing(Frozen):
    __slots__ = __match_args__ = ("timeout", "retransmit", "nak_grace")
    timeout: float  # the whole exchange
    retransmit: float  # a new request (new cookie) after this long without an answer
    nak_grace: float  # after an NTS NAK, wait this long for a genuine answer (RFC 8915 5.7)

    def __init__(self, timeout: float = 5.0, retransmit: float = 1.0, nak_grace: float = 0.5):
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "retransmit", retransmit)
        object.__setattr__(self, "nak_grace", nak_grace)


def fresh_request(association: Association) -> tuple[bytes, PendingRequest]:
    """The association's next request, with random unique identifier, nonce and
    transmit timestamp (RFC 9109: the real send time stays with the client)."""
    return association.build_request(
        unique_id=os.urandom(UNIQUE_ID_LEN),
        nonce=os.urandom(algorithm(association.aead_id).nonce_length),
        transmit_ts=int.from_bytes(os.urandom(8)),
    )


DEFAULT_TIMING = Timing()


class UdpExchange:
    """Requests outstanding to one server and what to do next, without I/O."""

    def __init__(self, association: Association, timing: Timing, now: float) -> None:
        self.association = association
        self.timing = timing
        self.deadline = now + timing.timeout
        self._next_send = now
        self._outstanding: list[tuple[PendingRequest, int]] = []
        self._nak_deadline: float | None = None
        self._last_error: GnomonError | None = None

    def wake_at(self) -> float:
        """The monotonic time by which :meth:`on_timer` must be called."""
        candidates = [self.deadline, self._next_send]
        if self._nak_deadline is not None:
            candidates.append(self._nak_deadline)
        return min(candidates)

    def on_timer(self, now: float) -> bytes | None:
        """A request to send now, or None. Raises once the exchange has failed."""
        if self._nak_deadline is not None and now >= self._nak_deadline:
            raise NtsNakError("server sent an NTS NAK: it could not use the cookie")
        if now >= self.deadline:
            detail = f" (last problem: {self._last_error})" if self._last_error else ""
            raise QueryTimeoutError(
                f"no valid NTP response within {self.timing.timeout:g} s{detail}"
            )
        if now < self._next_send or self._nak_deadline is not None:
            return None
        try:
            packet, pending = fresh_request(self.association)
        except NoCookiesError:
            if not self._outstanding:
                raise
            self._next_send = self.deadline  # wait for the answers already asked for
            return None
        self._next_send = now + self.timing.retransmit
        self._outstanding.append((pending, 0))
        return packet

    def sent(self, sent_ns: int) -> None:
        """Record the wall-clock send time of the request just returned."""
        pending, _ = self._outstanding[-1]
        self._outstanding[-1] = (pending, sent_ns)

    def on_datagram(self, data: bytes, received_ns: int, now: float) -> Sample | None:
        """A sample if ``data`` is the authentic answer to an outstanding request."""
        for pending, sent_ns in self._outstanding:
            try:
                return self.association.process_response(
                    data, pending, sent_ns=sent_ns, received_ns=received_ns
                )
            except ResponseMismatchError:
                continue
            except NtsNakError:
                # Unauthenticated: keep listening briefly for a genuine answer.
                if self._nak_deadline is None:
                    self._nak_deadline = min(self.deadline, now + self.timing.nak_grace)
                return None
            except (AuthenticationError, NtpFormatError) as exc:
                self._last_error = exc
                return None
        return None


def resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    infos = socket.getaddrinfo(lookup_name(host), port, type=socket.SOCK_DGRAM)
    if not infos:
        raise GnomonError(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


def open_udp_socket(family: int, address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):  # no kernel timestamps: the clock is read instead
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.connect(address)
    return sock


def receive_with_timestamp(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and its kernel receive time (Unix ns)."""
    data, ancillary, _, _ = sock.recvmsg(MAX_DATAGRAM, TIMESTAMP_ANCILLARY_SPACE)
    return data, timestamp_from_ancillary(ancillary, time.time_ns())


def ntp_exchange(
    association: Association, host: str, port: int, timing: Timing = DEFAULT_TIMING
) -> tuple[Sample, tuple[str, int]]:
    """One authenticated sample from ``host``, retransmitting as needed."""
    try:
        family, address = resolve(host, port)
    except OSError as exc:
        raise GnomonError(f"cannot resolve {host}: {exc}") from None
    with open_udp_socket(family, address) as sock:
        exchange = UdpExchange(association, timing, time.monotonic())
        while True:
            now = time.monotonic()
            packet = exchange.on_timer(now)
            if packet is not None:
                sent_ns = time.time_ns()
                sock.send(packet)
                exchange.sent(sent_ns)
            sock.settimeout(max(0.0, exchange.wake_at() - time.monotonic()))
            try:
                data, received_ns = receive_with_timestamp(sock)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                # ICMP port unreachable; keep trying until the deadline.
                continue
            sample = exchange.on_datagram(data, received_ns, time.monotonic())
            if sample is not None:
                return sample, address


async def antp_exchange(
    association: Association, host: str, port: int, timing: Timing = DEFAULT_TIMING
) -> tuple[Sample, tuple[str, int]]:
    """The asyncio twin of :func:`ntp_exchange`."""
    import asyncio  # here: the blocking client need not pay for importing asyncio

    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise GnomonError(f"cannot resolve {host}: {exc}") from None
    family, _, _, _, raw_address = infos[0]
    address = (str(raw_address[0]), int(raw_address[1]))
    with open_udp_socket(family, address) as sock:
        sock.setblocking(False)
        arrived = asyncio.Event()
        loop.add_reader(sock.fileno(), arrived.set)
        try:
            exchange = UdpExchange(association, timing, loop.time())
            while True:
                packet = exchange.on_timer(loop.time())
                if packet is not None:
                    sent_ns = time.time_ns()
                    sock.send(packet)
                    exchange.sent(sent_ns)
                try:
                    async with asyncio.timeout_at(exchange.wake_at()):
                        await arrived.wait()
                except TimeoutError:
                    continue
                arrived.clear()
                while True:
                    try:
                        data, received_ns = receive_with_timestamp(sock)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    sample = exchange.on_datagram(data, received_ns, loop.time())
                    if sample is not None:
                        return sample, address
        finally:
            loop.remove_reader(sock.fileno())
