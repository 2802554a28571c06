"""Client access control by address: allow and deny lists of networks, without I/O.

``Acl(allow=["192.0.2.0/24", "2001:db8::/32"], deny=["192.0.2.128/25"])``
permits a client when it is in no deny network and, if the allow list is not
empty, in some allow network: deny wins over allow, and an empty allow list
allows everything not denied.

Both lists are folded at construction into one sorted list of disjoint
permitted ranges over a single integer space (IPv4 addresses as themselves,
IPv6 addresses offset by 2**128), so a decision is a binary search; results
are also cached per address string in a bounded dict, which makes the common
case (a client seen before) one dict lookup.

IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are treated as the IPv4
address they carry, both as clients and as entries: ``::ffff:10.0.0.0/104``
means ``10.0.0.0/8``. IPv6 entries that merely contain the mapped block
(``::/0``, say) apply to native IPv6 clients only, so "deny all IPv6" does
not silently deny IPv4 clients too.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable

__all__ = ["Acl", "AclEntry", "address_value"]

AclEntry = str | ipaddress.IPv4Network | ipaddress.IPv6Network
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Range = tuple[int, int]  # inclusive

_V6 = 1 << 128
_ALL_V4: _Range = (0, (1 << 32) - 1)
_ALL_V6: _Range = (_V6, _V6 + (1 << 128) - 1)
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes


def address_value(host: str) -> int:
    """An address string (as from ``recvfrom``) in the ACL's integer space.

    IPv4 ``a.b.c.d`` is its 32-bit value, IPv4-mapped IPv6 likewise, other
    IPv6 is ``2**128 + value``; a zone (``%eth0``) is ignored. Raises
    ValueError for anything else.
    """
    try:
        if ":" not in host:
            return _from_bytes(_inet_pton(_AF_INET, host))
        if "%" in host:
            host = host[: host.index("%")]
        value = _from_bytes(_inet_pton(_AF_INET6, host))
    except (OSError, TypeError) as exc:
        raise ValueError(f"not an IP address: {host!r}") from exc
    if value >> 32 == 0xFFFF:
        return value & 0xFFFFFFFF
    return value | _V6


def _network(entry: object, which: str) -> _Network:
    if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return entry
    if isinstance(entry, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ipaddress.ip_network(entry)
    if not isinstance(entry, str):
        raise ValueError(f"{which} entry {entry!r} is not a network")
    try:
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{which} entry {entry!r} is not a valid network: {exc}") from exc


def _range(network: _Network) -> _Range:
    low = int(network.network_address)
    high = int(network.broadcast_address)
    if network.version == 4:
        return low, high
    if network.prefixlen >= 96 and low >> 32 == 0xFFFF:  # inside ::ffff:0:0/96
        return low & 0xFFFFFFFF, high & 0xFFFFFFFF
    return low | _V6, high | _V6


def _merge(ranges: Iterable[_Range]) -> list[_Range]:
    """Sorted, disjoint, non-adjacent ranges covering the same addresses."""
    merged: list[_Range] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def _subtract(base: list[_Range], holes: list[_Range]) -> list[_Range]:
    """``base`` minus ``holes``; both merged, and so is the result."""
    result: list[_Range] = []
    index = 0
    for low, high in base:
        while index < len(holes) and holes[index][1] < low:
            index += 1
        cursor = low
        scan = index
        while scan < len(holes) and holes[scan][0] <= high:
            hole_low, hole_high = holes[scan]
            if hole_low > cursor:
                result.append((cursor, hole_low - 1))
            cursor = max(cursor, hole_high + 1)
            scan += 1
        if cursor <= high:
            result.append((cursor, high))
    return result


class Acl:
    """Allow and deny lists of networks; see the module documentation.

    Entries are strings (``"10.0.0.0/8"``, ``"2001:db8::1"``) or
    :mod:`ipaddress` networks. A string with host bits set
    (``"10.0.0.1/8"``) is refused as a likely mistake. Any bad entry raises
    ValueError naming it.
    """

    __slots__ = ("_cache", "_cache_size", "_ends", "_starts", "allow", "deny", "unrestricted")

    def __init__(
        self,
        allow: Iterable[AclEntry] = (),
        deny: Iterable[AclEntry] = (),
        *,
        cache_size: int = 4096,
    ) -> None:
        if isinstance(allow, str) or isinstance(deny, str):
            raise ValueError("allow and deny take lists of networks, not one string")
        if cache_size < 1:
            raise ValueError(f"cache_size must be positive, not {cache_size!r}")
        self.allow = tuple(_network(entry, "allow") for entry in allow)
        self.deny = tuple(_network(entry, "deny") for entry in deny)
        base = _merge(map(_range, self.allow)) if self.allow else [_ALL_V4, _ALL_V6]
        permitted = _subtract(base, _merge(map(_range, self.deny)))
        self._starts = [low for low, _ in permitted]
        self._ends = [high for _, high in permitted]
        #: True when every address is permitted: the caller may skip the check.
        self.unrestricted = permitted == [_ALL_V4, _ALL_V6]
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    def permits(self, host: str) -> bool:
        """Whether the client at ``host`` (``address[0]`` of ``recvfrom``) may be served.

        A host that is not an IP address is refused.
        """
        result = self._cache.get(host)
        if result is None:
            result = self._decide(host)
            cache = self._cache
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[host] = result
        return result

    def _decide(self, host: str) -> bool:
        try:
            value = address_value(host)
        except ValueError:
            return False
        index = bisect_right(self._starts, value) - 1
        return index >= 0 and value <= self._ends[index]

    def __repr__(self) -> str:
        allow = [str(n) for n in self.allow]
        deny = [str(n) for n in self.deny]
        return f"Acl(allow={allow!r}, deny={deny!r})"
