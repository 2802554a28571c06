"""Per-client response rate limiting for NTP and NTS-KE, without I/O.

The model is chrony's ``ratelimit interval I burst B leak L``: every client
address *prefix* has a token bucket that holds ``burst`` tokens and gains one
every ``interval`` seconds; a request that finds a token is answered
(:data:`Verdict.ALLOW`). A request that finds the bucket empty is *over the
limit*: it is dropped, except that one in ``2**leak`` of them, chosen at
random, is answered anyway (:data:`Verdict.KISS`: send a RATE kiss-o'-death,
see :func:`build_rate_kiss`; or, with ``kod=False``, :data:`Verdict.ALLOW`,
chrony's behaviour of leaking a real answer). The leak exists so that an
attacker spoofing a victim's address cannot silence the server towards that
victim completely; a global cap (``max_leak_rate``) bounds how many leaked
answers leave the server per second in total, however many addresses a flood
uses.

Time is monotonic seconds supplied by the caller; randomness comes from the
:class:`random.Random` the caller passes (needed only when the limiter leaks).

Implementation
--------------
A bucket is one float, its *theoretical arrival time* (GCRA): ``tat`` is when
the bucket will be full again. A request at ``now`` is allowed when
``max(tat, now) + interval <= now + burst * interval``, and then ``tat``
advances by ``interval``. A bucket with ``tat <= now`` is full and so carries
no information: forgetting it changes no decision. That is what makes the
bounded table below safe under normal load.

Memory bound and eviction
-------------------------
Buckets live in two generations of plain dicts, ``current`` and
``previous``, keyed by an int derived from the address prefix (see
:meth:`RateLimiter.key`). A lookup that misses ``current`` moves the bucket up
from ``previous``; when ``current`` holds ``max_entries // 2`` prefixes and a
new one arrives, ``previous`` is discarded whole and ``current`` becomes
``previous``. So at most ``max_entries`` prefixes are tracked, each request
costs O(1) dict operations (the discarded generation is freed in one go:
amortised O(1) per insertion), and the buckets that survive are those of the
prefixes seen in the last one to two generations: approximately LRU, without
reordering anything on the common path.

Under normal load this eviction is invisible. A bucket is dropped only when
``max_entries // 2`` *other* prefixes arrived since it was last used. A
bucket that still matters was used within the last ``burst * interval``
seconds (32 s with the defaults), so as long as fewer than
``max_entries / (2 * burst * interval)`` new prefixes per second arrive
(about 1000/s with the defaults) no live bucket is ever evicted and a
limited client cannot reset its bucket, whatever it does from its own address.

What an attacker spoofing many source addresses can and cannot do:

* It cannot grow memory beyond ``max_entries`` buckets, nor make a request
  cost more than O(1) amortised.
* It cannot get more than ``burst`` answers plus one per ``interval`` (plus
  leaked kisses) sent to any one prefix, so the server stays useless as a
  reflector; no reply is ever larger than its request, so there is no
  amplification in bytes either.
* By flooding faster than the threshold above (with distinct prefixes: one
  IPv6 /48 holds 65536 /64s) it *can* churn the table so that buckets are
  forgotten. A client that sends ``max_entries // 2`` to ``max_entries``
  packets from other prefixes between two bursts from its own finds its
  bucket gone and gets a fresh burst: tens of thousands of packets per extra
  ``burst`` answers with the defaults. A client that stays busy on its own
  address is never evicted: only prefixes left alone for a whole generation
  are. The limiter fails open here rather than shutting out new clients,
  which is what a cheap flood would otherwise achieve.
* By spoofing one victim's address it can empty that victim's bucket; the
  victim then gets only the leaked fraction of answers (kisses by default)
  until the flood stops. Clients sharing a prefix (an IPv6 /64, a NAT) share
  one bucket, as in chrony.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass
from enum import IntEnum

from .nts.fields import EF_NTS_AUTHENTICATOR, EF_UNIQUE_IDENTIFIER
from .nts.ntp import (
    HEADER,
    HEADER_LEN,
    LEAP_UNSYNCHRONIZED,
    MODE_CLIENT,
    MODE_SERVER,
    unix_ns_to_ntp,
)

__all__ = [
    "KeRateLimiter",
    "RateLimitCounters",
    "RateLimiter",
    "Verdict",
    "build_rate_kiss",
]


class Verdict(IntEnum):
    """What to do with one request."""

    ALLOW = 0  # answer normally
    KISS = 1  # answer with a RATE kiss-o'-death (build_rate_kiss)
    DROP = 2  # send nothing


ALLOW = Verdict.ALLOW
KISS = Verdict.KISS
DROP = Verdict.DROP

_V6_TAG = 1 << 128  # IPv6 keys are >= 2**128, IPv4 keys < 2**32: the spaces never meet
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96, IPv4-mapped IPv6 addresses, >> 32
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes


@dataclass
class RateLimitCounters:
    limited: int = 0  # requests over the limit (leaked or dropped)
    leaked: int = 0  # ... of which answered anyway (kiss, or allow with kod=False)
    rotations: int = 0  # generation switches of the bucket table

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _never_leak() -> float:
    """The random draw of a limiter that never leaks (``leak=0``): never called."""
    return 1.0


class RateLimiter:
    """Token buckets per address prefix; see the module documentation.

    ``interval`` is seconds per token (chrony's ``interval 1`` is 2.0),
    ``burst`` the bucket size, ``leak`` the log2 of how many over-limit
    requests share one answer (0: never answer over the limit),
    ``max_leak_rate`` a global cap on leaked answers per second (None: no
    cap), ``max_entries`` the number of prefixes tracked at most.
    """

    __slots__ = (
        "_current",
        "_generation",
        "_interval",
        "_keys",
        "_keys_size",
        "_leak_burst",
        "_leak_p",
        "_leak_spacing",
        "_leak_tat",
        "_leak_verdict",
        "_previous",
        "_random",
        "_shift4",
        "_shift6",
        "_window",
        "burst",
        "counters",
        "interval",
        "ipv4_prefix",
        "ipv6_prefix",
        "leak",
        "max_entries",
        "max_leak_rate",
    )

    def __init__(
        self,
        interval: float = 2.0,
        burst: int = 16,
        leak: int = 2,
        *,
        kod: bool = True,
        max_leak_rate: float | None = 1000.0,
        ipv4_prefix: int = 32,
        ipv6_prefix: int = 64,
        max_entries: int = 1 << 16,
        rng: random.Random | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"rate limit interval must be positive, not {interval!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"rate limit burst must be a positive integer, not {burst!r}")
        if isinstance(leak, bool) or not isinstance(leak, int) or not 0 <= leak <= 16:
            raise ValueError(f"rate limit leak must be an integer from 0 to 16, not {leak!r}")
        if max_leak_rate is not None and not max_leak_rate > 0:
            raise ValueError(f"max_leak_rate must be positive or None, not {max_leak_rate!r}")
        if not 0 <= ipv4_prefix <= 32:
            raise ValueError(f"IPv4 prefix length must be 0 to 32, not {ipv4_prefix!r}")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError(f"IPv6 prefix length must be 0 to 128, not {ipv6_prefix!r}")
        if max_entries < 2:
            raise ValueError(f"max_entries must be at least 2, not {max_entries!r}")
        self.interval = float(interval)
        self.burst = burst
        self.leak = leak
        self.max_leak_rate = max_leak_rate
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.max_entries = max_entries
        self.counters = RateLimitCounters()
        self._interval = self.interval
        # The last of `burst` tokens must fit despite float rounding of tat.
        self._window = burst * self.interval + self.interval * 1e-6
        self._shift4 = 32 - ipv4_prefix
        self._shift6 = 128 - ipv6_prefix
        self._generation = max_entries // 2
        self._current: dict[int, float] = {}
        self._previous: dict[int, float] = {}
        # Address string -> key, so a known client costs a lookup, not a parse.
        self._keys: dict[str, int] = {}
        self._keys_size = min(max_entries, 4096)
        self._leak_p = 0.5**leak if leak else 0.0
        self._leak_verdict = KISS if kod else ALLOW
        if leak and rng is None:
            raise ValueError("a rate limit that leaks needs a random source (rng)")
        self._random = rng.random if rng is not None else _never_leak
        # The global leak cap is one more GCRA bucket: one second's worth of burst.
        if max_leak_rate is None:
            self._leak_spacing = 0.0
            self._leak_burst = 0.0
        else:
            self._leak_spacing = 1.0 / max_leak_rate
            self._leak_burst = max(1.0, max_leak_rate) * self._leak_spacing + 1e-9
        self._leak_tat = float("-inf")

    # -- keys ---------------------------------------------------------------

    def key(self, host: str) -> int:
        """The bucket key of an address as ``recvfrom`` gives it (``address[0]``).

        IPv4 addresses are cut to ``ipv4_prefix`` bits, IPv6 to
        ``ipv6_prefix``; an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``)
        counts as the IPv4 address it carries; a zone (``fe80::1%eth0``) is
        ignored. Raises ValueError for anything that is not an IP address.
        """
        try:
            if ":" not in host:
                return _from_bytes(_inet_pton(_AF_INET, host)) >> self._shift4
            if "%" in host:
                host = host[: host.index("%")]
            value = _from_bytes(_inet_pton(_AF_INET6, host))
        except (OSError, TypeError) as exc:
            raise ValueError(f"not an IP address: {host!r}") from exc
        if value >> 32 == _MAPPED_PREFIX:
            return (value & 0xFFFFFFFF) >> self._shift4
        return (value >> self._shift6) | _V6_TAG

    # -- decisions ----------------------------------------------------------

    def check(self, key: int, now: float) -> Verdict:
        """Decide one request from the prefix ``key`` at monotonic time ``now``."""
        current = self._current
        tat = current.get(key)
        if tat is None:
            tat = self._previous.pop(key, None)
            if len(current) >= self._generation:
                self._rotate()
                current = self._current
            if tat is None:
                current[key] = now + self._interval
                return ALLOW
        if tat < now:
            current[key] = now + self._interval
            return ALLOW
        new = tat + self._interval
        if new - now <= self._window:
            current[key] = new
            return ALLOW
        current[key] = tat  # it may have come up from the previous generation
        return self._over_limit(now)

    def check_host(self, host: str, now: float) -> Verdict:
        """:meth:`check` for ``key(host)``, with the key cached per address string.

        Raises ValueError if ``host`` is not an IP address.
        """
        key = self._keys.get(host)
        if key is None:
            key = self.key(host)
            keys = self._keys
            if len(keys) >= self._keys_size:
                keys.clear()
            keys[host] = key
        return self.check(key, now)

    def _over_limit(self, now: float) -> Verdict:
        counters = self.counters
        counters.limited += 1
        if not self._leak_p or self._random() >= self._leak_p:
            return DROP
        if self._leak_spacing:
            tat = max(self._leak_tat, now) + self._leak_spacing
            if tat - now > self._leak_burst:
                return DROP
            self._leak_tat = tat
        counters.leaked += 1
        return self._leak_verdict

    def _rotate(self) -> None:
        self._previous = self._current
        self._current = {}
        self.counters.rotations += 1

    # -- housekeeping -------------------------------------------------------

    def __len__(self) -> int:
        """How many prefixes are tracked (never more than ``max_entries``)."""
        return len(self._current) + len(self._previous)

    def expire(self, now: float) -> int:
        """Forget every full bucket and return how many were dropped.

        Decisions do not change (a full bucket is as good as none); this only
        gives memory back after a burst of clients. O(tracked prefixes):
        call it from a timer, not per packet.
        """
        removed = 0
        for table in (self._current, self._previous):
            stale = [key for key, tat in table.items() if tat <= now]
            for key in stale:
                del table[key]
            removed += len(stale)
        return removed

    def clear(self) -> None:
        self._current = {}
        self._previous = {}


class KeRateLimiter(RateLimiter):
    """NTS-KE connections per address prefix: allow or deny, no leak.

    The defaults allow 10 connections a minute after a burst of 20. A client
    needs one NTS-KE session per cookie supply (hours apart, normally), so
    this only bites on clients that reconnect in a loop.
    """

    __slots__ = ()

    def __init__(
        self,
        interval: float = 6.0,
        burst: int = 20,
        *,
        ipv4_prefix: int = 32,
        ipv6_prefix: int = 64,
        max_entries: int = 1 << 14,
    ) -> None:
        super().__init__(
            interval,
            burst,
            0,
            max_leak_rate=None,
            ipv4_prefix=ipv4_prefix,
            ipv6_prefix=ipv6_prefix,
            max_entries=max_entries,
        )

    def allow(self, key: int, now: float) -> bool:
        return self.check(key, now) is ALLOW

    def allow_host(self, host: str, now: float) -> bool:
        """Whether a connection from ``host`` (``peername[0]``) may proceed.

        An unparseable host is denied.
        """
        try:
            key = self.key(host)
        except ValueError:
            return False
        return self.check(key, now) is ALLOW


# -- RATE kiss-o'-death -----------------------------------------------------

RATE = b"RATE"
_EF_HEAD = struct.Struct("!HH")


def build_rate_kiss(
    request: bytes, receive_ns: int, transmit_ns: int, *, precision: int = 0
) -> bytes | None:
    """A RATE kiss-o'-death answering ``request``, or None to send nothing.

    The kiss is a mode-4 header with leap 3 (unsynchronised), stratum 0,
    reference id ``RATE``, the request's version and poll, origin = the
    request's transmit timestamp, and the receive and transmit times given
    (Unix ns). Only an NTP client request (mode 3, version 1 to 4, at least
    48 bytes) gets one: answering anything else could start a loop between
    two servers.

    If the request carries an NTS Unique Identifier field it is echoed, as in
    an NTS NAK (RFC 8915 section 5.7), and no authenticator is added: an NTS
    client must discard the kiss as unauthenticated (only NTSN may be acted
    on unauthenticated), but the echo lets it match the kiss to its request
    and report it instead of timing out in silence. The field is copied from
    the request, so the kiss is never longer than the request.
    """
    length = len(request)
    if length < HEADER_LEN:
        return None
    first = request[0]
    if first & 7 != MODE_CLIENT or not 0x08 <= first & 0x38 <= 0x20:
        return None
    poll = request[2]
    header = HEADER.pack(
        LEAP_UNSYNCHRONIZED << 6 | (first & 0x38) | MODE_SERVER,
        0,
        poll - 256 if poll >= 128 else poll,
        precision,
        0,
        0,
        RATE,
        0,
        _from_bytes(request[40:48]),
        unix_ns_to_ntp(receive_ns),
        unix_ns_to_ntp(transmit_ns),
    )
    position = HEADER_LEN
    unpack = _EF_HEAD.unpack_from
    while position + 4 <= length:
        ef_type, ef_length = unpack(request, position)
        if ef_length < 16 or ef_length & 3 or position + ef_length > length:
            break
        if ef_type == EF_UNIQUE_IDENTIFIER:
            return header + request[position : position + ef_length]
        if ef_type == EF_NTS_AUTHENTICATOR:
            break
        position += ef_length
    return header
